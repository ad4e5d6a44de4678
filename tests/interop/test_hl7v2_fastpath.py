"""The HL7 v2 shortcuts (single-frame parse, plain ORU^R01 mapping) give exactly what the general path gives.

Reference: ``[parse_message(t) for t in split_batch(decode_payload(p))]`` for parsing and
``mapping.map_message_general`` for mapping. Results are compared with ``==`` on the frozen dataclasses (ids,
notes, unknown segments and the parsed message included); errors by type, message, HL7 error code and location.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin import codes
from medtwin.interop import hl7v2
from medtwin.interop.hl7v2 import mapping, parser
from medtwin.records import Observation, Patient, PatientIdentity, Provenance, Quantity

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"
ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.hl7"))


def _outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", fn())
    except hl7v2.Hl7Error as exc:
        return ("error", type(exc), str(exc), exc.error_code, exc.location)


def _reference_parse(payload: bytes | str) -> list[hl7v2.Hl7Message]:
    return [hl7v2.parse_message(t) for t in hl7v2.split_batch(hl7v2.decode_payload(payload))]


def assert_same_as_reference(
    payload: bytes | str, *, assume_tz: tzinfo = UTC, patient_id_for: Callable[[str | None, str], str] | None = None
) -> list[hl7v2.MappedMessage]:
    """Parse and map *payload* both ways, assert equal outcomes, and return the mapped messages (if any)."""
    reference = _outcome(lambda: _reference_parse(payload))
    fast = _outcome(lambda: hl7v2.parse_payload(payload))
    assert fast == reference
    # the first frame of a new shape teaches the fast parser its segment names: the second one takes the shortcut
    assert _outcome(lambda: hl7v2.parse_payload(payload)) == reference
    if fast[0] == "error":
        return []
    kwargs: dict[str, Any] = {"assume_tz": assume_tz}
    if patient_id_for is not None:
        kwargs["patient_id_for"] = patient_id_for
    out = []
    for message in fast[1]:
        mapped = _outcome(lambda m=message: hl7v2.map_message(m, **kwargs))
        assert mapped == _outcome(lambda m=message: mapping.map_message_general(m, **kwargs))
        again = _outcome(lambda m=message: hl7v2.map_message(m, **kwargs))  # now from the shortcut's caches
        assert again == mapped
        if mapped[0] == "ok":
            out.append(mapped[1])
    return out


# -- fixtures -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_FIXTURES)
@pytest.mark.parametrize("variant", ["as-is", "CR", "LF", "CRLF", "BOM+LF", "str", "trailing blank lines"])
def test_every_fixture_parses_and_maps_as_the_general_path(name: str, variant: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    body = raw.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    payload: bytes | str = {
        "as-is": raw,
        "CR": body.replace(b"\n", b"\r"),
        "LF": body,
        "CRLF": body.replace(b"\n", b"\r\n"),
        "BOM+LF": b"\xef\xbb\xbf" + body,
        "str": raw.decode("utf-8", errors="replace"),
        "trailing blank lines": body.replace(b"\n", b"\r") + b"\r\r \r\x00",
    }[variant]
    assert_same_as_reference(payload)


def test_the_shortcuts_are_taken_for_the_common_messages() -> None:
    """Not a vacuous comparison: the authored vitals fixtures go through both shortcuts."""
    for name in ("authored_ORU_R01_vitals_loinc_v251.hl7", "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7"):
        payload = (FIXTURES / name).read_bytes()
        hl7v2.parse_payload(payload)  # the first time through the general path teaches the segment names
        message = parser._parse_single(hl7v2.decode_payload(payload))
        assert message is not None
        assert message == _reference_parse(payload)[0]
        assert mapping._map_plain_oru(message, UTC, hl7v2.pseudonymous_patient_id) is not None


def test_the_shortcuts_step_aside_for_batches_escapes_and_other_types() -> None:
    loinc = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes().decode()
    hl7v2.parse_payload(loinc)
    assert parser._parse_single(loinc + loinc) is None  # two messages
    assert parser._parse_single("BHS|^~\\&\r" + loinc) is None
    escaped = loinc.replace("Heart rate", "Heart\\T\\rate", 1)
    (message,) = hl7v2.parse_payload(escaped)
    assert mapping._map_plain_oru(message, UTC, hl7v2.pseudonymous_patient_id) is None
    assert_same_as_reference(escaped)
    (adt,) = hl7v2.parse_payload((FIXTURES / "msfhirconv_ADT-A01-02.hl7").read_bytes())
    assert mapping._map_plain_oru(adt, UTC, hl7v2.pseudonymous_patient_id) is None


def test_virtual_monitor_messages_map_as_the_general_path() -> None:
    results = [
        hl7v2.OruResult(codes.HEART_RATE, 74.0, "/min"),
        hl7v2.OruResult(codes.BODY_TEMPERATURE, 98.6, "[degF]"),
        hl7v2.OruResult(codes.OXYGEN_SATURATION_PULSE_OX, 97.0, "%"),
        hl7v2.OruResult(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU["A"]),
    ]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(30):
        text = hl7v2.build_oru_r01(
            control_id=f"C-{i}",
            mrn=f"VM-{i % 4}",
            results=results,
            observed=start + timedelta(seconds=61 * i),
            family="Virtual",
            given="Stable",
            location="WARD",
            device=f"MON-{i % 4}",
        )
        (mapped,) = assert_same_as_reference(text.encode())
        assert len(mapped.observations) == 4
        temperature = mapped.observations[1].value
        assert isinstance(temperature, Quantity)
        assert temperature.unit == "Cel"
        assert temperature.value == pytest.approx(37.0)


def test_custom_patient_ids_and_local_time_zone() -> None:
    payload = (FIXTURES / "authored_ORU_R01_vitals_pcd01_mdc_v26.hl7").read_bytes()
    local = timezone(timedelta(hours=-5))
    naive = payload.replace(b"+0000", b"")
    (mapped,) = assert_same_as_reference(naive, assume_tz=local, patient_id_for=lambda system, value: f"{value}@x")
    assert mapped.patient_id == "MRN-4711@x"
    assert mapped.observations[0].effective == datetime(2025, 3, 1, 15, 30, tzinfo=UTC)
    assert_same_as_reference(payload, patient_id_for=lambda system, value: "")  # refused by Patient, both ways


def test_caches_emptied_when_full_give_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping, "_PLAIN_CACHE_SIZE", 2)
    base = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes()
    for value in (b"88", b"89", b"90", b"88"):
        assert_same_as_reference(base.replace(b"|88|", b"|" + value + b"|"))
    assert len(mapping._PLAIN_QUANTITIES) <= 2


def test_prevalidated_records_equal_validated_ones() -> None:
    provenance = Provenance(source_system="MON@WARD", source_id="C-1/OBX-1-")
    assert Provenance.prevalidated("MON@WARD", "C-1/OBX-1-") == provenance
    patient: dict[str, Any] = {
        "patient_id": "pt-1",
        "gender": "female",
        "birth_date": date(1957, 4, 12),
        "deceased": datetime(2026, 1, 2, tzinfo=UTC),
        "identity": PatientIdentity(family="Doe", given=("Jane",)),
        "provenance": provenance,
    }
    assert Patient.prevalidated(**patient) == Patient(**patient)
    assert type(Patient.prevalidated(**patient)) is Patient
    fields: dict[str, Any] = {
        "patient_id": "pt-1",
        "code": codes.HEART_RATE,
        "effective": datetime(2026, 1, 1, 8, tzinfo=UTC),
        "value": Quantity(value=72.0, unit="/min"),
        "status": "final",
        "category": "vital-signs",
        "device": "MON-1",
        "encounter_id": None,
        "observation_id": "0123abc",
        "alt_codes": (),
        "provenance": provenance,
    }
    fast = Observation.prevalidated(**fields)
    assert type(fast) is Observation
    assert fast == Observation(**fields)
    assert repr(fast) == repr(Observation(**fields))
    assert hash(fast) == hash(Observation(**fields))
    assert pickle.loads(pickle.dumps(fast)) == fast
    assert dataclasses.replace(fast, status="corrected").status == "corrected"
    with pytest.raises(AttributeError):
        fast.status = "corrected"  # type: ignore[misc]


# -- generated messages ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Delims:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


_DELIMITER_SETS = [_Delims("|", "^", "~", "\\", "&"), _Delims("#", "@", "*", "!", "$")]

# Tokens written with the standard delimiters and translated to the message's own: plain values, HL7 nulls,
# escapes, repetitions, components and subcomponents.
_ODD_TOKENS = ['""', "\\F\\", "\\S\\", "\\E\\", "\\.br\\", "\\X41\\", "\\H\\", "a~b", "a^b", "a&b", "~", "^", "&", " "]


def _translate(text: str, d: _Delims) -> str:
    table = {"|": d.field, "^": d.component, "~": d.repetition, "\\": d.escape, "&": d.subcomponent}
    return "".join(table.get(c, c) for c in text)


_IDENTIFIERS = [
    "8867-4^Heart rate^LN",
    "9279-1^Respiratory rate^LN",
    "59408-5^SpO2^LN",
    "8310-5^Body temperature^LN",
    "80288-4^Level of consciousness^LN",
    "147842^MDC_ECG_HEART_RATE^MDC",
    "150344^MDC_TEMP^MDC",
    "150301^MDC_PRESS_CUFF_SYS^MDC",
    "12345-6^Something else^LN",
    "^no code^LN",
    "",
    "999^local^L",
]
_UNITS = ["/min^^UCUM", "264864^MDC_DIM_BEAT_PER_MIN^MDC", "Cel^^UCUM", "[degF]^^UCUM", "268192^^MDC", "%", "kg", ""]
_VALUES = ["74", "36.8", "98.6", "-1", "abc", "", "NaN", "inf", "=^72", ">^72", "^72", "248234008^Alert^SCT", "text"]
_TIMES = ["20260101083000+0000", "20260101083000.1234+0100", "202601010830", "20260101", "", "2026130101", "x"]


# Valid results (value type, OBX-3, OBX-5, OBX-6), for messages that the mapper accepts.
_VALID_RESULTS = [
    ("NM", "8867-4^Heart rate^LN", "74", "/min^^UCUM"),
    ("NM", "147842^MDC_ECG_HEART_RATE^MDC", "88", "264864^MDC_DIM_BEAT_PER_MIN^MDC"),
    ("NM", "8310-5^Body temperature^LN", "98.6", "[degF]^^UCUM"),
    ("NM", "150344^MDC_TEMP^MDC", "37.9", "268192^^MDC"),
    ("SN", "59408-5^SpO2^LN", "=^97", "%^^UCUM"),
    ("NM", "12345-6^Something else^LN", "3.5", "kg"),
    ("CWE", "80288-4^Level of consciousness^LN", "248234008^Alert^SCT", ""),
    ("ST", "999^local^L", "free text", ""),
]


@st.composite
def _messages(draw: st.DrawFn) -> bytes | str:
    d = draw(st.sampled_from(_DELIMITER_SETS))
    odd = draw(st.booleans())  # half the messages hold only ordinary values and valid results

    def pick(options: list[str]) -> str:
        value = draw(st.sampled_from(options))
        if odd and draw(st.integers(0, 9)) == 0:  # now and then, something unusual in the field
            value += draw(st.sampled_from(_ODD_TOKENS))
        return value

    msh_type = draw(st.sampled_from(["ORU^R01^ORU_R01", "ORU^R01", "ORU", "ORU^R30", "ORU^R99", "ADT^A01", "oru^R01"]))
    msh = [
        "MSH",
        d.msh2,
        pick(["MON", "MON^EUI^x", ""] + (['""'] if odd else [])),
        pick(["WARD", "", "W^1"]),
        "RCV",
        "RF",
        pick(_TIMES[:4]),
        "",
        msh_type,
        pick(["C-1", "C-2^x"]),
        "P",
        "2.5.1",
    ]
    if draw(st.booleans()):
        msh += ["", "", "", "", "", "UNICODE UTF-8"]
    segments = ["|".join(msh)]
    if draw(st.integers(0, 9)) > 0:
        pid3 = draw(st.sampled_from(["MRN1^^^HOSP^MR", "MRN2^^^HOSP^MR~X9^^^OTHER^PI", "MRN3"] + [""] * odd))
        segments.append(
            "|".join(["PID", "1", pick(["", "LEGACY1"]), pid3, "", pick(["DOE^JANE", ""]), "", pick(["19600101", "x"])])
            + "|"
            + pick(["F", "M", ""])
        )
    if draw(st.booleans()):
        pv1 = ["PV1", "1", "I", pick(["ICU^3^1", ""])] + [""] * 15 + [pick(["V100", "", "V^2"])]
        segments.append("|".join(pv1[: draw(st.integers(3, len(pv1)))]))
    if draw(st.booleans()):
        segments.append("|".join(["OBR", "1", "C-1", "", "182777000^monitoring^SCT", "", "", pick(_TIMES[:4])]))
    for i in range(draw(st.integers(0, 5))):
        if odd:
            result = (pick(["NM", "SN", "CWE", "CE", "ST", "TX", "", "nm"]), pick(_IDENTIFIERS), pick(_VALUES))
            result += (pick(_UNITS),)
        else:
            result = draw(st.sampled_from(_VALID_RESULTS))
        obx = [
            "OBX",
            pick([str(i + 1), ""]),
            result[0],
            result[1],
            pick(["", "1.1.1", "2"]),
            result[2],
            result[3],
            "",
            "",
            "",
            "",
            pick(["F", "R", "C", "X", "D", "W", "", "f"]),
            "",
            "",
            pick(_TIMES if odd else _TIMES[:5]),
            "",
            "",
            "",
            pick(["MON-1", "", "MON^EUI"]),
        ]
        segments.append("|".join(obx[: draw(st.integers(5, len(obx)))]))
        if draw(st.integers(0, 4)) == 0:
            segments.append(draw(st.sampled_from(["NTE|1||note \\.br\\ two", "ZXY|1|custom", "XYZ|1", "SPM|1"])))
    text = "\r".join(_translate(s, d) for s in segments)
    separator = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    text = text.replace("\r", separator) + draw(st.sampled_from(["", separator, separator * 2, " ", "\x00"]))
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text if draw(st.booleans()) else text.encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_generated_messages_parse_and_map_as_the_general_path(payload: bytes | str) -> None:
    assert_same_as_reference(payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages(), st.sampled_from([UTC, timezone(timedelta(hours=2))]))
def test_generated_messages_map_alike_with_a_local_zone_and_custom_ids(payload: bytes | str, zone: tzinfo) -> None:
    assert_same_as_reference(payload, assume_tz=zone, patient_id_for=lambda system, value: f"p-{system}-{value}")


def test_generated_messages_do_reach_the_shortcut() -> None:
    """Many generated ORUs are mapped by the shortcut (else the comparisons above would prove little)."""
    taken = 0

    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(_messages())
    def count(payload: bytes | str) -> None:
        nonlocal taken
        try:
            (message,) = hl7v2.parse_payload(payload)
            taken += mapping._map_plain_oru(message, UTC, hl7v2.pseudonymous_patient_id) is not None
        except hl7v2.Hl7Error:
            pass

    count()
    assert taken >= 40


def test_patient_from_the_shortcut_keeps_repeated_identifiers() -> None:
    text = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes().decode()
    pid = next(line for line in text.split("\r") if line.startswith("PID"))
    fields = pid.split("|")
    fields[3] = "MRN-4711^^^WARD7^MR~555^^^NHS^NH"
    text = text.replace(pid, "|".join(fields))
    (message,) = hl7v2.parse_payload(text)
    assert mapping._map_plain_oru(message, UTC, hl7v2.pseudonymous_patient_id) is not None  # PID-3 repeats: fine
    (mapped,) = assert_same_as_reference(text)
    patient = mapped.records[0]
    assert isinstance(patient, Patient)
    assert patient.identity is not None
    assert [i.value for i in patient.identity.identifiers] == ["MRN-4711", "555"]
