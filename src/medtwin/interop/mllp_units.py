"""What one MLLP frame holds, ready for the store: each of its messages decoded, parsed and mapped (a unit), and
the outcome of each for the frame's ACK. Used by :mod:`medtwin.interop.mllp`.

A frame usually holds one message; an FHS/BHS batch frame holds several, and each is a unit of its own: its own
raw-log entry (its own bytes, in its own character set), its own idempotency key, its own outcome. Until issue 13
the whole batch was one raw entry keyed by the first message's control id, so a batch whose first message was
already stored was answered "duplicate" and its new messages were never stored. One message that cannot be read
no longer refuses the others either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo

from medtwin.interop.hl7v2 import (
    Hl7Error,
    Hl7Message,
    MappedMessage,
    decode_payload,
    encode_message,
    map_message,
    parse_message,
    parse_payload,
    split_batch,
)

__all__ = ["ACCEPTED", "ERROR", "REJECTED", "Outcome", "Unit", "combine", "map_again", "prepare_frame"]

log = logging.getLogger("medtwin.interop.mllp")

ACCEPTED, ERROR, REJECTED = 0, 1, 2  # severities: AA/CA, AE/CE, AR/CR


@dataclass(slots=True)
class Unit:
    """One message of a frame: the bytes kept for it, and what reading it gave (mapped, or the error refusing it)."""

    payload: bytes
    message: Hl7Message | None = None
    mapped: MappedMessage | None = None
    error: Hl7Error | None = None


@dataclass(slots=True)
class Outcome:
    """What the ACK says of one unit: severity (:data:`ACCEPTED`, :data:`ERROR`, :data:`REJECTED`), MSA-3 text,
    the ERR segments as (HL7 table 0357 code, location, reason), and whether it was *stored* (an error then means
    some of its results were refused: a commit ACK says CA, with the ERRs as warnings)."""

    severity: int
    text: str = ""
    errors: tuple[tuple[str, str, str], ...] = field(default_factory=tuple)
    stored: bool = False


PatientIdFor = Callable[[str | None, str], str] | None
"""The keyed patient-id function of the store written to (``store.keyring.pseudonym``); None: the process key."""


def _read(unit: Unit, assume_tz: tzinfo, patient_id_for: PatientIdFor = None) -> Unit:
    """Map *unit* 's parsed message; any error, expected or not, refuses the unit instead of escaping."""
    if unit.message is None:
        return unit
    try:
        unit.mapped = (
            map_message(unit.message, assume_tz=assume_tz)
            if patient_id_for is None
            else map_message(unit.message, assume_tz=assume_tz, patient_id_for=patient_id_for)
        )
    except Hl7Error as exc:
        unit.error = exc
    except Exception as exc:  # a bug must not cost the frame: the unit is refused and kept as a dead letter
        log.exception("unexpected error while mapping a message")
        unit.error = Hl7Error(f"cannot process the message: {type(exc).__name__}: {exc}", error_code="207")
    return unit


def prepare_frame(payload: bytes, assume_tz: tzinfo, patient_id_for: PatientIdFor = None) -> list[Unit]:
    """The units of one frame: decoded, split, parsed and mapped (linear in the frame's size; may run in a worker
    thread for a large frame). A frame that cannot be decoded or split is one unit with its error."""
    try:
        messages = parse_payload(payload)
    except Hl7Error as exc:
        try:
            texts = split_batch(decode_payload(payload))
        except Hl7Error:
            return [Unit(payload, error=exc)]
        if len(texts) == 1:
            return [Unit(payload, error=exc)]
        units = []
        for text in texts:  # a batch with a bad member: each message on its own
            unit = Unit(encode_message(text))
            try:
                unit.message = parse_message(text)
            except Hl7Error as member_error:
                unit.error = member_error
            units.append(_read(unit, assume_tz, patient_id_for))
        return units
    except Exception as exc:
        log.exception("unexpected error while reading a frame")
        return [Unit(payload, error=Hl7Error(f"cannot process the message: {type(exc).__name__}: {exc}"))]
    if len(messages) == 1:
        return [_read(Unit(payload, messages[0]), assume_tz, patient_id_for)]
    return [_read(Unit(encode_message(m.text), m), assume_tz, patient_id_for) for m in messages]


def map_again(unit: Unit, key: str, assume_tz: tzinfo, patient_id_for: PatientIdFor = None) -> MappedMessage:
    """*unit* 's message mapped with the provenance key *key* (a conflicting resend kept beside the first)."""
    assert unit.message is not None
    if patient_id_for is None:
        return map_message(unit.message, assume_tz=assume_tz, key=key)
    return map_message(unit.message, assume_tz=assume_tz, key=key, patient_id_for=patient_id_for)


def combine(outcomes: Sequence[Outcome]) -> Outcome:
    """One outcome for a frame: the unit's own for one message; for a batch the worst severity, a summary text, and
    every unit's ERR segments (their reasons name the message)."""
    if len(outcomes) == 1:
        return outcomes[0]
    counts = [sum(1 for o in outcomes if o.severity == s) for s in (ACCEPTED, ERROR, REJECTED)]
    text = f"batch of {len(outcomes)} messages: {counts[0]} stored, {counts[1]} with errors, {counts[2]} rejected"
    errors = tuple(
        (code, location, f"message {i}: {reason}")
        for i, o in enumerate(outcomes, start=1)
        for code, location, reason in (o.errors or ((("207", "", o.text),) if o.severity else ()))
    )
    return Outcome(max(o.severity for o in outcomes), text, errors, all(o.stored for o in outcomes))
