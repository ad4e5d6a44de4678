"""HL7 v2: parse inbound messages (ORU^R01 vital signs, ADT^A0x) into records, and build ACKs and ORU^R01.

Typical use::

    from medtwin.interop import hl7v2
    for message in hl7v2.parse_payload(frame_bytes):      # one message, or an FHS/BHS batch
        mapped = hl7v2.map_message(message)               # -> Patient, Observations / Encounter
        ack = hl7v2.build_ack(message, "AA", control_id="ACK-1")

See docs/hl7v2.md for the supported profiles, code systems and acknowledgment rules.
"""

from __future__ import annotations

from medtwin.interop.hl7v2.mapping import (
    CODING_SYSTEMS,
    MDC_UNITS,
    Hl7MappingError,
    MappedMessage,
    RefusedResult,
    control_key,
    map_message,
    pseudonymous_patient_id,
    source_key,
)
from medtwin.interop.hl7v2.messages import (
    OruResult,
    ack_code_of,
    build_ack,
    build_oru_r01,
    escape,
    format_hl7_datetime,
    wants_ack,
)
from medtwin.interop.hl7v2.parser import (
    Delimiters,
    Hl7EncodingError,
    Hl7Error,
    Hl7Message,
    Hl7ParseError,
    Segment,
    decode_payload,
    encode_message,
    message_digest,
    parse_hl7_datetime,
    parse_message,
    parse_payload,
    split_batch,
    unescape,
)

__all__ = [
    "CODING_SYSTEMS",
    "MDC_UNITS",
    "Delimiters",
    "Hl7EncodingError",
    "Hl7Error",
    "Hl7MappingError",
    "Hl7Message",
    "Hl7ParseError",
    "MappedMessage",
    "OruResult",
    "RefusedResult",
    "Segment",
    "ack_code_of",
    "build_ack",
    "build_oru_r01",
    "control_key",
    "decode_payload",
    "encode_message",
    "escape",
    "format_hl7_datetime",
    "map_message",
    "message_digest",
    "parse_hl7_datetime",
    "parse_message",
    "parse_payload",
    "pseudonymous_patient_id",
    "source_key",
    "split_batch",
    "unescape",
    "wants_ack",
]
