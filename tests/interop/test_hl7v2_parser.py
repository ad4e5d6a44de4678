"""HL7 v2 parsing, mapping to records, and ACK building (fixtures: tests/fixtures/hl7v2, see SOURCES.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin import codes
from medtwin.interop import hl7v2
from medtwin.interop.hl7v2 import Hl7EncodingError, Hl7Error, Hl7MappingError, Hl7ParseError
from medtwin.records import Coding, Encounter, Observation, Patient, Quantity

FIXTURES = Path(__file__).parent.parent / "fixtures" / "hl7v2"


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def one(name: str) -> hl7v2.Hl7Message:
    (message,) = hl7v2.parse_payload(load(name))
    return message


def by_code(observations: list[Observation]) -> dict[str, Observation]:
    return {o.code.code: o for o in observations}


def test_oru_loinc_vitals_map_to_observations_in_canonical_units() -> None:
    mapped = hl7v2.map_message(one("authored_ORU_R01_vitals_loinc_v251.hl7"))
    obs = by_code(mapped.observations)
    assert set(obs) == {"8867-4", "9279-1", "59408-5", "8480-6", "8462-4", "8310-5", "80288-4"}
    assert obs["8867-4"].value == Quantity(value=88.0, unit="/min")
    assert obs["8480-6"].value == Quantity(value=132.0, unit="mm[Hg]")
    assert obs["8310-5"].value == Quantity(value=37.9, unit="Cel")
    assert obs["80288-4"].value == codes.ACVPU["A"]
    assert obs["8867-4"].effective == datetime(2025, 3, 1, 10, 29, tzinfo=UTC)
    assert all(o.patient_id == mapped.patient_id for o in obs.values())
    assert obs["8867-4"].provenance is not None
    assert obs["8867-4"].provenance.source_system == "VITALS_MON@WARD7"
    assert obs["8867-4"].provenance.source_id.startswith("VS-000123/")
    assert obs["8867-4"].encounter_id == "VN-0815"
    patient = mapped.records[0]
    assert isinstance(patient, Patient)
    assert patient.gender == "female"
    assert patient.birth_date is not None
    assert patient.birth_date.isoformat() == "1957-04-12"
    assert patient.identity is not None
    assert patient.identity.family == "Testpatient"
    assert "MRN-4711" not in patient.patient_id  # pseudonymous key; the MRN stays in the identity


def test_pcd01_mdc_codes_normalise_to_loinc_and_keep_the_mdc_code() -> None:
    mdc = by_code(hl7v2.map_message(one("authored_ORU_R01_vitals_pcd01_mdc_v26.hl7")).observations)
    loinc = by_code(hl7v2.map_message(one("authored_ORU_R01_vitals_loinc_v251.hl7")).observations)
    for code in ("8867-4", "9279-1", "59408-5", "8480-6", "8462-4", "8310-5"):
        assert mdc[code].value == loinc[code].value, code
        assert mdc[code].alt_codes[0].system == codes.MDC
    assert mdc["8867-4"].alt_codes[0].code == "147842"
    assert mdc["8867-4"].status == "preliminary"  # OBX-11 R: results not verified
    # the same patient (same MRN and authority) from both feeds joins up
    assert mdc["8867-4"].patient_id == loinc["8867-4"].patient_id


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_segment_separators_and_bom_are_tolerated(separator: str) -> None:
    text = load("authored_ORU_R01_vitals_loinc_v251.hl7").decode().replace("\r", separator)
    for payload in (text, "\ufeff" + text, b"\xef\xbb\xbf" + text.encode()):
        (message,) = hl7v2.parse_payload(payload)
        assert len(hl7v2.map_message(message).observations) == 7


def test_lf_and_bom_fixtures_from_microsoft_converter_parse() -> None:
    message = one("msfhirconv_ADT04-251.hl7")  # BOM + LF separators
    assert (message.message_type, message.trigger_event, message.control_id) == ("ADT", "A04", "1270326314")
    mapped = hl7v2.map_message(message)
    encounter = next(r for r in mapped.records if isinstance(r, Encounter))
    assert encounter.class_code == "EMER"
    assert encounter.status == "arrived"
    assert encounter.start == datetime(2019, 5, 4, 11, 12, 5, tzinfo=UTC)  # +0700 converted to UTC


def test_adt_a01_a03_give_admission_and_discharge() -> None:
    admit = next(r for r in hl7v2.map_message(one("msfhirconv_ADT-A01-02.hl7")).records if isinstance(r, Encounter))
    discharge = next(r for r in hl7v2.map_message(one("msfhirconv_ADT-A03-01.hl7")).records if isinstance(r, Encounter))
    assert admit.encounter_id == discharge.encounter_id == "40007716"
    assert admit.status == "in-progress"
    assert admit.end is None
    assert discharge.status == "finished"
    assert discharge.end is not None
    assert discharge.end > discharge.start
    assert admit.locations[0].unit == "HUH AE OMU"


def test_adt_v23_with_explicit_nulls_and_repeated_identifiers() -> None:
    mapped = hl7v2.map_message(one("pythonhl7_sample_msh_ADT_A01_v23.hl7"))
    patient = mapped.records[0]
    assert isinstance(patient, Patient)
    assert patient.identity is not None
    assert [i.value for i in patient.identity.identifiers] == ["2148790", "162840"]  # PID-3 repetitions
    encounter = mapped.records[1]
    assert isinstance(encounter, Encounter)
    assert encounter.end is None


def test_batch_file_is_split_into_messages() -> None:
    (message,) = hl7v2.parse_payload(load("pythonhl7_sample_file.hl7"))
    assert message.control_id == "12334456778890"
    assert message.trigger_event == "A04"


def test_bad_batch_is_refused_with_a_segment_sequence_error() -> None:
    with pytest.raises(Hl7ParseError, match="before any MSH") as info:
        hl7v2.parse_payload(load("pythonhl7_sample_bad_batch.hl7"))
    assert info.value.error_code == "100"


def test_unknown_segments_are_reported() -> None:
    mapped = hl7v2.map_message(one("msfhirconv_ADT-A01-01.hl7"))
    assert "RF1" in mapped.unknown_segments
    text = load("authored_ORU_R01_vitals_loinc_v251.hl7").decode() + "ZXT|1|custom\r"
    assert hl7v2.map_message(hl7v2.parse_message(text)).unknown_segments == ("ZXT",)


def test_stress_oru_with_unitless_heart_rate_refuses_that_result_only() -> None:
    """A published public-health ORU^R01 whose heart-rate OBX has an empty OBX-6: that result is refused with its
    reason and location, every other result is mapped (until issue 13 the whole message was refused)."""
    mapped = hl7v2.map_message(one("msfhirconv_ORU-R01-01.hl7"))
    assert [(str(e), e.error_code, e.location) for e in mapped.refused] == [
        ("OBX[2]: OBX-6 unit is empty but 8867-4 needs one (expected '/min')", "101", "OBX[2]^6")
    ]
    assert len(mapped.observations) == 3


def test_fahrenheit_is_converted_and_bad_units_refused() -> None:
    base = load("authored_ORU_R01_vitals_loinc_v251.hl7").decode()
    f = base.replace("|37.9|Cel^degree Celsius^UCUM|", "|100.4|[degF]^degree Fahrenheit^UCUM|")
    temp = by_code(hl7v2.map_message(hl7v2.parse_message(f)).observations)["8310-5"]
    assert isinstance(temp.value, Quantity)
    assert temp.value.value == pytest.approx(38.0)
    bad = hl7v2.map_message(hl7v2.parse_message(base.replace("|88|/min^per minute^UCUM|", "|88|mm[Hg]^^UCUM|")))
    assert [e.location for e in bad.refused] == ["OBX[1]^6"]
    assert "8867-4" not in by_code(bad.observations)  # the heart rate is refused, the other vitals are kept
    assert len(bad.observations) == len(hl7v2.map_message(hl7v2.parse_message(base)).observations) - 1
    nan = hl7v2.map_message(hl7v2.parse_message(base.replace("|88|/min^", "|abc|/min^")))
    assert "not a number" in str(nan.refused[0])


def test_escape_sequences() -> None:
    d = hl7v2.Delimiters()
    assert hl7v2.unescape(r"a\F\b\S\c\T\d\R\e\E\f", d) == "a|b^c&d~e\\f"
    assert hl7v2.unescape("line\\.br\\two\\X41\\", d) == "line\ntwoA"
    assert hl7v2.unescape("\\H\\bold\\N\\", d) == "bold"
    assert hl7v2.unescape("unterminated \\F", d) == "unterminated \\F"
    text = load("pythonhl7_sample_msh_ADT_A01_v23.hl7").decode().replace("RUFUSS^MELLODIAL", r"O\S\BRIEN^ANN\T\MARY", 1)
    patient = hl7v2.map_message(hl7v2.parse_message(text)).records[0]
    assert isinstance(patient, Patient)
    assert patient.identity is not None
    assert patient.identity.family == "O^BRIEN"
    assert patient.identity.given == ("ANN&MARY",)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_escape_then_unescape_is_identity(value: str) -> None:
    assert hl7v2.unescape(hl7v2.escape(value)) == value.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize(("field", "what"), [(9, "message type"), (10, "message control id"), (12, "version id")])
def test_missing_required_msh_fields(field: int, what: str) -> None:
    parts = load("authored_ORU_R01_vitals_loinc_v251.hl7").decode().split("\r")
    msh = parts[0].split("|")
    msh[field - 1] = ""
    parts[0] = "|".join(msh)
    with pytest.raises(Hl7ParseError, match=what) as info:
        hl7v2.parse_message("\r".join(parts))
    assert info.value.error_code == "101"
    assert info.value.location == f"MSH^1^{field}"


def test_bad_encoding_is_refused_and_latin1_declared_is_decoded() -> None:
    utf8 = load("authored_ORU_R01_vitals_loinc_v251.hl7")
    with pytest.raises(Hl7EncodingError, match="not valid utf-8"):
        hl7v2.decode_payload(utf8.replace(b"Testpatient", b"Testpat\xe9ent"))
    latin = utf8.replace(b"UNICODE UTF-8", b"8859/1").replace(b"Testpatient", b"Testpat\xe9ent")
    assert "Testpatéent" in hl7v2.decode_payload(latin)
    with pytest.raises(Hl7EncodingError, match="not supported"):
        hl7v2.decode_payload(utf8.replace(b"UNICODE UTF-8", b"EBCDIC"))


def test_non_hl7_payload_is_refused() -> None:
    for payload in (b"", b"GET / HTTP/1.1\r\n", b"MSH", b"MSH|^~\\&"):
        with pytest.raises(Hl7Error):
            hl7v2.parse_payload(payload)


def test_datetimes() -> None:
    assert hl7v2.parse_hl7_datetime("20250301103000+0100") == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    assert hl7v2.parse_hl7_datetime("202503") == datetime(2025, 3, 1, tzinfo=UTC)
    assert hl7v2.parse_hl7_datetime("20250301103000.25") == datetime(2025, 3, 1, 10, 30, 0, 250000, tzinfo=UTC)
    cet = timezone(timedelta(hours=1))
    assert hl7v2.parse_hl7_datetime("20250301103000", assume_tz=cet) == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    for bad in ("2025-03-01", "20251301", "20250301103000+2500", "yesterday"):
        with pytest.raises(Hl7ParseError):
            hl7v2.parse_hl7_datetime(bad)


def test_ack_matches_the_authored_reference_acks() -> None:
    message = one("authored_ORU_R01_vitals_loinc_v251.hl7")
    now = datetime(2025, 3, 1, 10, 30, 1, tzinfo=UTC)
    aa = hl7v2.build_ack(message, "AA", control_id="ACK-000123", now=now, sending_application="TWIN_PLATFORM",
                         sending_facility="DT_HOSP")  # fmt: skip
    ref = load("authored_ACK_AA_for_VS-000123.hl7").decode().strip("\r\n").split("\r")
    got = aa.strip("\r").split("\r")
    assert got[1] == ref[1]  # MSA|AA|VS-000123
    assert got[0].split("|")[2:6] == ref[0].split("|")[2:6]  # sender/receiver swapped
    assert got[0].split("|")[8:11] == ref[0].split("|")[8:11]  # ACK^R01^ACK, control id, P
    ae = hl7v2.build_ack(message, "AE", control_id="ACK-000124", text="Patient MRN-4711 not found", error_code="204",
                         error_location="PID^1^3^1")  # fmt: skip
    ref_err = load("authored_ACK_AE_for_VS-000123.hl7").decode().strip("\r\n").split("\r")[2]
    assert ae.strip("\r").split("\r")[2] == ref_err
    # python-hl7 reads our ACK
    parsed = hl7.parse(ae)
    assert str(parsed.segment("MSA")[1]) == "AE"
    assert str(parsed.segment("MSA")[2]) == "VS-000123"


def test_ack_mode_follows_msh15_msh16() -> None:
    enhanced = one("authored_ORU_R01_vitals_loinc_v251.hl7")  # MSH-15 AL, MSH-16 NE
    assert hl7v2.wants_ack(enhanced, True) == (True, True)
    pcd = one("authored_ORU_R01_vitals_pcd01_mdc_v26.hl7")  # MSH-15 NE, MSH-16 AL
    assert hl7v2.wants_ack(pcd, True) == (True, False)
    original = one("pythonhl7_sample_hl7.hl7")
    assert hl7v2.wants_ack(original, False) == (True, False)
    assert hl7v2.wants_ack(None, False) == (True, False)
    assert hl7v2.ack_code_of(True, rejected=False, enhanced=True) == "CA"
    assert hl7v2.ack_code_of(False, rejected=True, enhanced=False) == "AR"


def test_built_oru_round_trips_through_our_parser_and_python_hl7() -> None:
    results = [
        hl7v2.OruResult(codes.HEART_RATE, 101.0, "/min"),
        hl7v2.OruResult(codes.BODY_TEMPERATURE, 38.25, "Cel"),
        hl7v2.OruResult(codes.LEVEL_OF_CONSCIOUSNESS, codes.ACVPU["C"]),
    ]
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    text = hl7v2.build_oru_r01(control_id="C|1", mrn="VM-0001", results=results, observed=when, family="O'Hara^x")
    obs = by_code(hl7v2.map_message(hl7v2.parse_message(text)).observations)
    assert obs["8867-4"].value == Quantity(value=101.0, unit="/min")
    assert obs["8310-5"].value == Quantity(value=38.25, unit="Cel")
    assert isinstance(obs["80288-4"].value, Coding)
    assert obs["80288-4"].value.code == codes.ACVPU["C"].code
    assert obs["8867-4"].effective == when
    assert hl7v2.parse_message(text).control_id == "C|1"
    assert str(hl7.parse(text).segment("MSH")[10]) == "C\\F\\1"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_parser_raises_only_hl7_errors(payload: bytes) -> None:
    try:
        for message in hl7v2.parse_payload(payload):
            hl7v2.map_message(message)
    except Hl7Error:
        pass


_VALID = (FIXTURES / "authored_ORU_R01_vitals_loinc_v251.hl7").read_bytes()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.binary(min_size=1, max_size=8), st.booleans())
def test_fuzz_mutated_messages_raise_only_hl7_errors(pos: int, junk: bytes, replace: bool) -> None:
    payload = _VALID[:pos] + junk + _VALID[pos + (len(junk) if replace else 0) :]
    try:
        for message in hl7v2.parse_payload(payload):
            hl7v2.map_message(message)
    except Hl7Error:
        pass


def test_record_validation_errors_surface_as_mapping_errors() -> None:
    message = one("authored_ORU_R01_vitals_loinc_v251.hl7")
    with pytest.raises(Hl7MappingError, match=r"ORU\^R01: Patient\.patient_id"):
        hl7v2.map_message(message, patient_id_for=lambda system, value: "")


def test_adt_a02_transfer_starts_the_new_location_at_the_event_time() -> None:
    text = load("msfhirconv_ADT-A01-02.hl7").decode().replace("ADT^A01^ADT_A01", "ADT^A02^ADT_A02", 1)
    text = text.replace("EVN|A01|", "EVN|A02|", 1)
    encounter = next(r for r in hl7v2.map_message(hl7v2.parse_message(text)).records if isinstance(r, Encounter))
    assert encounter.status == "in-progress"
    assert encounter.start == datetime(2015, 2, 8, 10, 24, 19, tzinfo=UTC)  # PV1-44 admission
    # EVN-2 20290801070624+0115 is the transfer time: the new location starts then
    assert encounter.locations[0].start == datetime(2029, 8, 1, 5, 51, 24, tzinfo=UTC)


def test_observation_ids_are_stable_and_increase_with_time() -> None:
    first = hl7v2.map_message(one("authored_ORU_R01_vitals_loinc_v251.hl7")).observations
    again = hl7v2.map_message(one("authored_ORU_R01_vitals_loinc_v251.hl7")).observations
    assert [o.observation_id for o in first] == [o.observation_id for o in again]  # a resend maps to the same ids
    assert len({o.observation_id for o in first}) == len(first)
    later = load("authored_ORU_R01_vitals_loinc_v251.hl7").decode().replace("20250301102900", "20250301113000")
    later_ids = [o.observation_id for o in hl7v2.map_message(hl7v2.parse_message(later)).observations]
    assert min(later_ids) > max(o.observation_id for o in first)


def test_header_cut_by_a_segment_break_is_a_parse_error_not_a_crash() -> None:
    # found by the fuzz test: "MSH" followed at once by CR used to raise IndexError while reading MSH-18
    with pytest.raises(Hl7ParseError):
        hl7v2.parse_payload(b"MSH\r|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1")


def _reference_components(raw: str, d: hl7v2.Delimiters) -> list[str]:
    """The general algorithm (first repetition, first subcomponent, unescaped), without any fast path."""
    if not raw:
        return []
    first = raw.split(d.repetition)[0]
    return ["" if (s := c.split(d.subcomponent)[0]) == '""' else hl7v2.unescape(s, d) for c in first.split(d.component)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab1 ^~&\\"FSTE.', max_size=24))
def test_field_and_components_fast_paths_agree_with_the_general_algorithm(raw: str) -> None:
    message = hl7v2.parse_message(f"MSH|^~\\&|A|B|C|D|20260101||ORU^R01|1|P|2.5.1\rOBX|1|ST|{raw}|end")
    obx = message.segments[1]
    d = message.delimiters
    expected = _reference_components(raw, d)
    assert obx.components(3) == expected
    assert obx.field(3) == (expected[0] if expected else "")


def test_obx_identifiers_are_cached_as_shared_immutable_codings() -> None:
    first = hl7v2.map_message(one("authored_ORU_R01_vitals_pcd01_mdc_v26.hl7"))
    again = hl7v2.map_message(one("authored_ORU_R01_vitals_pcd01_mdc_v26.hl7"))
    for a, b in zip(first.observations, again.observations, strict=True):
        assert a == b
        assert a.code is b.code  # one Coding per identifier, shared: records are frozen
        assert a.code.system == codes.LOINC
        assert a.alt_codes
        assert a.alt_codes[0].system == codes.MDC
