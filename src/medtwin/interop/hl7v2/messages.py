"""Build outgoing HL7 v2 messages: acknowledgments (original and enhanced mode) and ORU^R01 vital-sign results.

Acknowledgment rules (HL7 v2.5.1 chapter 2.9): in original mode (MSH-15 and MSH-16 empty) the receiver answers
with an application ACK, MSA-1 = AA (accepted), AE (error) or AR (rejected). In enhanced mode the accept
acknowledgment (MSA-1 = CA/CE/CR) is sent when MSH-15 asks for it (AL always, ER on error, SU on success);
otherwise the application acknowledgment is sent when MSH-16 asks for it. medtwin accepts a message only after it is
durably stored, so its commit ACK and its application ACK carry the same meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from medtwin.interop.hl7v2.parser import DEFAULT_DELIMITERS, Delimiters, Hl7Message
from medtwin.records import Coding

__all__ = [
    "AckCode",
    "OruResult",
    "ack_code_of",
    "build_ack",
    "build_oru_r01",
    "escape",
    "format_hl7_datetime",
    "wants_ack",
]

AckCode = str  # "AA" | "AE" | "AR" (application) or "CA" | "CE" | "CR" (commit)

_SYSTEM_NAMES = {
    "http://loinc.org": "LN",
    "http://snomed.info/sct": "SCT",
    "urn:iso:std:iso:11073:10101": "MDC",
    "http://unitsofmeasure.org": "UCUM",
}


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    r"""Escape the delimiters in *value* (``|`` -> ``\F\`` ...) and turn newlines into ``\.br\``."""
    if not any(c in value for c in (d.field, d.component, d.repetition, d.escape, d.subcomponent, "\r", "\n")):
        return value
    out = value.replace(d.escape, f"{d.escape}E{d.escape}")
    for ch, tag in ((d.field, "F"), (d.component, "S"), (d.repetition, "R"), (d.subcomponent, "T")):
        out = out.replace(ch, f"{d.escape}{tag}{d.escape}")
    return out.replace("\r\n", "\n").replace("\r", "\n").replace("\n", f"{d.escape}.br{d.escape}")


def format_hl7_datetime(when: datetime) -> str:
    """``YYYYMMDDHHMMSS.ffff+0000`` in UTC (aware datetimes only)."""
    w = when.astimezone(UTC)
    return w.strftime("%Y%m%d%H%M%S") + f".{w.microsecond // 100:04d}+0000"


def ack_code_of(ok: bool, *, rejected: bool, enhanced: bool) -> AckCode:
    """The MSA-1 code: accepted / error / rejected, in commit (CA/CE/CR) or application (AA/AE/AR) form."""
    prefix = "C" if enhanced else "A"
    return prefix + ("A" if ok else "R" if rejected else "E")


def wants_ack(message: Hl7Message | None, ok: bool) -> tuple[bool, bool]:
    """(send an ACK?, in enhanced commit form?) for *message* given the outcome *ok*.

    An unparseable message (``None``) always gets an original-mode negative ACK.
    """
    if message is None or not message.enhanced_mode:
        return True, False
    accept = message.accept_ack_type.upper()
    if accept == "AL" or (accept == "ER" and not ok) or (accept == "SU" and ok):
        return True, True
    app = message.application_ack_type.upper()
    if app in ("", "AL") or (app == "ER" and not ok) or (app == "SU" and ok):
        return True, False
    return False, False


def build_ack(
    message: Hl7Message | None,
    code: AckCode,
    *,
    text: str = "",
    error_code: str = "",
    error_location: str = "",
    control_id: str,
    now: datetime | None = None,
    sending_application: str = "MEDTWIN",
    sending_facility: str = "MEDTWIN",
    errors: Sequence[tuple[str, str, str]] = (),
) -> str:
    """An ACK for *message* (or for an unparseable payload when *message* is None), CR-separated, no MLLP framing.

    A negative code carries an ERR segment with the HL7 table 0357 *error_code*, the *error_location* and the
    reason *text*; an AE/AR/CE/CR with no *error_code* uses 207 (application internal error). *errors* are
    (code, location, reason) of one ERR segment each instead (e.g. one per refused OBX), and then *text* goes to
    MSA-3; on a positive code they are warnings (ERR-4 W: a commit ACK of a message stored without some results).
    """
    d = message.delimiters if message is not None else DEFAULT_DELIMITERS
    f = d.field
    when = format_hl7_datetime(now or datetime.now(UTC))
    if message is not None:
        msh = message.msh
        receiving_app, receiving_fac = msh.raw_field(3), msh.raw_field(4)
        version = msh.raw_field(12) or "2.5.1"
        trigger = message.trigger_event
        acked = msh.raw_field(10)
        processing = msh.raw_field(11) or "P"
    else:
        receiving_app = receiving_fac = trigger = acked = ""
        version, processing = "2.5.1", "P"
    segments = [
        f.join(
            [
                "MSH",
                d.encoding_characters,
                sending_application,
                sending_facility,
                receiving_app,
                receiving_fac,
                when,
                "",
                f"ACK{d.component}{trigger}{d.component}ACK" if trigger else "ACK",
                escape(control_id, d),
                processing,
                version,
            ]
        ),
        f.join(["MSA", code, acked] + ([escape(text[:200], d)] if text and (code[1] == "A" or errors) else [])),
    ]
    if code[1] != "A" or errors:  # on a positive ACK (a commit ACK of a stored message) the ERRs are warnings
        severity = "W" if code[1] == "A" else "E"
        for err_code, location, reason in errors or ((error_code, error_location, text),):
            err_code = err_code or "207"
            err = d.component.join([err_code, _ERROR_TEXT.get(err_code, "Error"), "HL70357"])
            where = location.replace("^", d.component)
            segments.append(f.join(["ERR", "", where, err, severity, "", "", "", escape(reason[:500], d)]))
    return "\r".join(segments) + "\r"


_ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}


@dataclass(frozen=True, slots=True)
class OruResult:
    """One OBX of an outgoing ORU^R01: a coded numeric (with UCUM unit) or coded value."""

    code: Coding
    value: float | Coding
    unit: str = ""


def build_oru_r01(
    *,
    control_id: str,
    mrn: str,
    results: Sequence[OruResult],
    observed: datetime,
    sending_application: str = "VIRTUAL_MON",
    sending_facility: str = "MEDTWIN_SIM",
    assigning_authority: str = "MEDTWIN_SIM",
    family: str = "",
    given: str = "",
    location: str = "",
    device: str = "",
) -> str:
    """An HL7 v2.5.1 ORU^R01 with one OBX per result (CR-separated), as a bedside monitor gateway sends it."""
    when = format_hl7_datetime(observed)
    seg = [
        f"MSH|^~\\&|{escape(sending_application)}|{escape(sending_facility)}|MEDTWIN|MEDTWIN|{when}||"
        f"ORU^R01^ORU_R01|{escape(control_id)}|P|2.5.1|||||||UNICODE UTF-8",
        f"PID|1||{escape(mrn)}^^^{escape(assigning_authority)}^MR||{escape(family)}^{escape(given)}",
        f"PV1|1|I|{escape(location)}",
        f"OBR|1|{escape(control_id)}^{escape(sending_application)}||182777000^monitoring of patient^SCT|||{when}",
    ]
    for i, r in enumerate(results, start=1):
        system = _SYSTEM_NAMES.get(r.code.system, r.code.system)
        ident = f"{escape(r.code.code)}^{escape(r.code.display or '')}^{system}"
        if isinstance(r.value, Coding):
            vsys = _SYSTEM_NAMES.get(r.value.system, r.value.system)
            seg.append(
                f"OBX|{i}|CWE|{ident}||{escape(r.value.code)}^{escape(r.value.display or '')}^{vsys}||||||F|||{when}"
                f"||||{escape(device)}"
            )
        else:
            value = f"{r.value:.2f}".rstrip("0").rstrip(".")
            seg.append(f"OBX|{i}|NM|{ident}||{value}|{escape(r.unit)}^^UCUM||||||F|||{when}||||{escape(device)}")
    return "\r".join(seg) + "\r"
