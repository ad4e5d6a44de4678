"""A small, fast HL7 v2 parser: decoding, segment splitting, batches, escapes and MSH header access.

HL7 v2 (HL7 Version 2.x Messaging Standard, chapter 2 "Control"): a message is a sequence of segments separated by
carriage returns; MSH-1 is the field separator and MSH-2 the encoding characters (component, repetition, escape,
subcomponent, and from v2.7 truncation). Real feeds send LF or CRLF instead of CR, a UTF-8 byte-order mark, and
FHS/BHS batch envelopes; all are accepted here. Fields are split eagerly (one ``str.split`` per segment) and
components lazily, so parsing costs little more than reading the message once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any

from medtwin.errors import ValidationError

__all__ = [
    "Delimiters",
    "Hl7EncodingError",
    "Hl7Error",
    "Hl7MappingError",
    "Hl7Message",
    "Hl7ParseError",
    "Segment",
    "decode_payload",
    "encode_message",
    "message_digest",
    "parse_hl7_datetime",
    "parse_message",
    "parse_payload",
    "split_batch",
    "unescape",
]


class Hl7Error(ValidationError):
    """An HL7 v2 message medtwin refuses; ``error_code`` is the HL7 table 0357 code for the ERR segment."""

    def __init__(self, message: str, *, error_code: str = "207", location: str = "") -> None:
        super().__init__(message)
        self.error_code = error_code
        self.location = location


class Hl7EncodingError(Hl7Error):
    """Bytes that are not valid text in the message's declared (or the default UTF-8) character set."""


class Hl7ParseError(Hl7Error):
    """Text that is not an HL7 v2 message, or a message missing a required header field."""


class Hl7MappingError(Hl7ParseError):
    """A well-formed message whose content cannot become records (unknown patient, bad value, bad unit)."""


_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
# names that passed _SEGMENT_NAME: a set lookup per segment instead of a regex match (at most 26 * 36 * 36 names)
_SEEN_SEGMENT_NAMES: set[str] = set()
# the same, less MSH and the batch segments: the names the single-message fast path takes without a second look
_BODY_SEGMENT_NAMES: set[str] = set()


def _valid_segment_name(name: str) -> bool:
    if _SEGMENT_NAME.match(name) is None:
        return False
    _SEEN_SEGMENT_NAMES.add(name)
    if name != "MSH" and name not in _BATCH_SEGMENTS:
        _BODY_SEGMENT_NAMES.add(name)
    return True


# MSH-18 character-set names (HL7 table 0211) that we decode; anything else is refused with a reason.
_CHARSETS: dict[str, str] = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
}


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The five HL7 delimiters of one message."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it appears in the message."""
        return self.component + self.repetition + self.escape + self.subcomponent


DEFAULT_DELIMITERS = Delimiters()


def unescape(value: str, delimiters: Delimiters = DEFAULT_DELIMITERS) -> str:
    r"""Replace HL7 escape sequences (``\F\ \S\ \T\ \R\ \E\ \Xhh..\ \.br\``) by the characters they stand for.

    Formatting escapes (``\H\``, ``\N\``, ``\.sp\``...) are dropped; an unterminated escape is kept literally.
    """
    esc = delimiters.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(delimiters.field)
        elif seq == "S":
            out.append(delimiters.component)
        elif seq == "T":
            out.append(delimiters.subcomponent)
        elif seq == "R":
            out.append(delimiters.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq == ".br":
            out.append("\n")
        elif seq.startswith("X") and len(seq) > 1 and len(seq) % 2 == 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("utf-8", errors="replace"))
            except ValueError:
                out.append(esc + seq + esc)
        elif seq in ("H", "N") or seq.startswith((".sp", ".in", ".ti", ".sk", ".fi", ".nf", ".ce", "Z")):
            continue
        else:
            out.append(esc + seq + esc)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: its name and raw (still escaped) fields; ``fields[0]`` is the segment name.

    Field numbers follow the standard: ``segment.field(3)`` is PID-3. For MSH, ``field(1)`` is the field separator
    and ``field(2)`` the encoding characters, as in the standard.
    """

    name: str
    fields: tuple[str, ...]
    delimiters: Delimiters

    def raw_field(self, number: int) -> str:
        """The raw text of field *number* (all repetitions), or "" when absent."""
        if self.name == "MSH":
            if number == 1:
                return self.delimiters.field
            number -= 1
        return self.fields[number] if 0 < number < len(self.fields) else ""

    def repetitions(self, number: int) -> list[str]:
        """The raw repetitions of field *number* (an empty list when the field is empty)."""
        raw = self.raw_field(number)
        if not raw:
            return []
        if self.name == "MSH" and number == 2:
            return [raw]
        return raw.split(self.delimiters.repetition)

    def field(self, number: int, component: int = 1, subcomponent: int = 1, *, repetition: int = 0) -> str:
        """The unescaped value at field.component.subcomponent (1-based), repetition *repetition* (0-based).

        The HL7 explicit null ``""`` reads as an empty string.
        """
        if self.name == "MSH":
            raw = self.raw_field(number)
        else:  # inlined raw_field: this is the mapper's hottest call
            fields = self.fields
            raw = fields[number] if 0 < number < len(fields) else ""
        if not raw:
            return ""
        d = self.delimiters
        if (
            component == 1
            and subcomponent == 1
            and repetition == 0
            and d.component not in raw
            and d.repetition not in raw
            and d.escape not in raw
            and d.subcomponent not in raw
        ):
            return "" if raw == '""' else raw  # the common case: a plain value, no splitting needed
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return ""
        return _pick(reps[repetition], component, subcomponent, d)

    def components(self, number: int, *, repetition: int = 0) -> list[str]:
        """The unescaped components of one repetition of field *number*."""
        raw = self.raw_field(number)
        if not raw:
            return []
        d = self.delimiters
        if (
            repetition == 0
            and d.escape not in raw
            and d.subcomponent not in raw
            and (d.repetition not in raw or (self.name == "MSH" and number == 2))
        ):
            return ["" if c == '""' else c for c in raw.split(d.component)]  # no escapes: split only
        reps = self.repetitions(number)
        if repetition >= len(reps):
            return []
        return [
            "" if (s := c.split(d.subcomponent)[0]) == '""' else unescape(s, d)
            for c in reps[repetition].split(d.component)
        ]


class _SegmentSlots:
    """Segment's slots, mutable: what the single-message fast path fills before making it a Segment."""

    __slots__ = Segment.__slots__


def _pick(raw: str, component: int, subcomponent: int, d: Delimiters) -> str:
    comps = raw.split(d.component)
    if component > len(comps):
        return ""
    subs = comps[component - 1].split(d.subcomponent)
    if subcomponent > len(subs):
        return ""
    value = subs[subcomponent - 1]
    return "" if value == '""' else unescape(value, d)


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """A parsed HL7 v2 message with typed access to the MSH header."""

    segments: tuple[Segment, ...]
    delimiters: Delimiters
    text: str

    @property
    def msh(self) -> Segment:
        """The message header segment."""
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        """The first segment called *name*, or None."""
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        """Every segment called *name*, in message order."""
        return [s for s in self.segments if s.name == name]

    @property
    def control_id(self) -> str:
        """MSH-10, the message control id (the idempotency key of the sender)."""
        return self.msh.field(10)

    @property
    def message_type(self) -> str:
        """MSH-9.1, e.g. ``ORU``."""
        return self.msh.field(9, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, e.g. ``R01``."""
        return self.msh.field(9, 2)

    @property
    def version(self) -> str:
        """MSH-12.1, e.g. ``2.5.1``."""
        return self.msh.field(12, 1)

    @property
    def sending_application(self) -> str:
        """MSH-3.1."""
        return self.msh.field(3, 1)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1."""
        return self.msh.field(4, 1)

    @property
    def source_system(self) -> str:
        """``application@facility`` of the sender, the namespace of its control ids."""
        app, fac = self.sending_application, self.sending_facility
        return f"{app}@{fac}" if fac else (app or "unknown")

    @property
    def accept_ack_type(self) -> str:
        """MSH-15 (AL, NE, ER, SU, or "" in original acknowledgment mode)."""
        return self.msh.field(15)

    @property
    def application_ack_type(self) -> str:
        """MSH-16 (AL, NE, ER, SU, or "" in original acknowledgment mode)."""
        return self.msh.field(16)

    @property
    def enhanced_mode(self) -> bool:
        """True when the sender asked for enhanced acknowledgment (MSH-15 or MSH-16 valued)."""
        return bool(self.accept_ack_type or self.application_ack_type)


def decode_payload(payload: bytes | str) -> str:
    """Decode one frame into text: strip a UTF-8 BOM, honour MSH-18 (ASCII, UTF-8, 8859/1, 8859/15).

    Raises
    ------
    Hl7EncodingError
        The bytes are not valid in the declared character set (or in UTF-8 when none is declared).
    """
    if isinstance(payload, str):
        return payload.removeprefix("\ufeff")
    data = payload.removeprefix(b"\xef\xbb\xbf")
    charset = _declared_charset(data)
    codec = _CHARSETS.get(charset.upper())
    if codec is None:
        raise Hl7EncodingError(
            f"MSH-18: character set {charset!r} is not supported (supported: {', '.join(sorted(_CHARSETS)[1:])})",
            error_code="203",
            location="MSH^1^18",
        )
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise Hl7EncodingError(
            f"message bytes are not valid {codec} (MSH-18 {charset or 'not valued'}): {exc.reason} at byte {exc.start}",
            error_code="102",
            location="MSH^1^18",
        ) from None


def encode_message(text: str) -> bytes:
    """The bytes of one message *text* in the character set its MSH-18 declares (UTF-8 when none, or when the text
    does not fit it), so that :func:`decode_payload` reads them back as the same text: how a message split out of
    a batch frame is kept in the raw log."""
    codec = _CHARSETS.get(_declared_charset(text.encode("latin-1", errors="replace")).upper(), "utf-8")
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        return text.encode("utf-8")


def message_digest(message: Hl7Message) -> str:
    """SHA-256 (hex) of a message's content as parsed: decoded text, segments joined by CR, no trailing separators.

    Two copies of a message that differ only in transport details (CR, LF or CRLF between segments, a trailing
    separator, a BOM, the character set it came in, sent alone or inside a batch) have the same digest; a different
    value anywhere gives another (how the listener tells a resend from a conflicting one).
    """
    text = message.text
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return hashlib.sha256(text.rstrip("\r\n\x00 ").encode()).hexdigest()


def _declared_charset(data: bytes) -> str:
    if not data.startswith(b"MSH") or len(data) < 8:
        return ""
    end = data.find(b"\r")
    if end < 0:
        end = len(data)
    lf = data.find(b"\n", 0, end)
    if lf >= 0:
        end = lf
    if end < 8:  # "MSH" cut short by a segment break: parse_message reports it
        return ""
    # latin-1 maps bytes to characters one to one, so the header can be split as bytes and decoded piecewise;
    # parts[0] = "MSH", parts[1] = MSH-2, ... parts[17] = MSH-18
    parts = data[:end].split(data[3:4], 18)
    return parts[17].split(data[4:5])[0].decode("latin-1").strip() if len(parts) > 17 else ""


def split_batch(text: str) -> list[str]:
    """Split *text* (one message, or an FHS/BHS batch of messages) into message texts, each starting with MSH.

    Batch header/trailer segments (FHS, BHS, BTS, FTS) are dropped; anything before the first MSH other than those
    is an error.

    Raises
    ------
    Hl7ParseError
        The text holds no MSH segment, or segments that belong to no message.
    """
    lines = [s for s in _SEGMENT_SPLIT.split(text.removeprefix("\ufeff").strip("\x00")) if s.strip()]
    messages: list[list[str]] = []
    for line in lines:
        tag = line[:3]
        if tag in _BATCH_SEGMENTS:
            continue
        if tag == "MSH":
            messages.append([line])
        elif messages:
            messages[-1].append(line)
        else:
            raise Hl7ParseError(f"segment {tag!r} appears before any MSH segment", error_code="100", location=tag)
    if not messages:
        raise Hl7ParseError("no MSH segment: the payload is not an HL7 v2 message", error_code="100", location="MSH")
    return ["\r".join(m) for m in messages]


def parse_message(text: str) -> Hl7Message:
    """Parse one HL7 v2 message (CR, LF or CRLF separated; a leading BOM is ignored).

    The header must hold the delimiters, MSH-9 (message type), MSH-10 (control id) and MSH-12 (version).

    Raises
    ------
    Hl7ParseError
        Not an MSH-first message, bad delimiters, a missing required MSH field or a malformed segment name.
    """
    text = text.removeprefix("\ufeff").strip("\x00\r\n ")
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7ParseError("the payload does not start with an MSH segment", error_code="100", location="MSH")
    sep = text[3]
    delimiters = _delimiters(text[3:8])
    if delimiters is None:
        raise Hl7ParseError(f"MSH-1/MSH-2: invalid delimiters {text[3:8]!r}", error_code="102", location="MSH^1^2")
    segments: list[Segment] = []
    for number, line in enumerate(_SEGMENT_SPLIT.split(text), start=1):
        if not line:
            continue
        fields = tuple(line.split(sep))
        name = fields[0]
        if name not in _SEEN_SEGMENT_NAMES and not _valid_segment_name(name):
            raise Hl7ParseError(
                f"segment {number}: {name[:20]!r} is not a segment name", error_code="100", location=f"{number}"
            )
        segments.append(Segment(name, fields, delimiters))
    message = Hl7Message(tuple(segments), delimiters, text)
    for field, what in ((9, "message type"), (10, "message control id"), (12, "version id")):
        if not message.msh.field(field):
            raise Hl7ParseError(
                f"MSH-{field} ({what}) is required but empty", error_code="101", location=f"MSH^1^{field}"
            )
    return message


@lru_cache(maxsize=64)
def _delimiters(header: str) -> Delimiters | None:
    """The delimiters of MSH-1 and MSH-2 (*header* = ``text[3:8]``), or None when they are not a valid set."""
    sep, enc = header[0], header[1:5]
    if sep.isalnum() or sep in " \r\n" or len(set(enc[:4])) < 4 or sep in enc or any(c.isalnum() for c in enc):
        return None
    return Delimiters(field=sep, component=enc[0], repetition=enc[1], escape=enc[2], subcomponent=enc[3])


def parse_payload(payload: bytes | str) -> list[Hl7Message]:
    """Decode *payload*, split an FHS/BHS batch, and parse every message in it.

    Same result as ``[parse_message(t) for t in split_batch(decode_payload(payload))]``; a frame holding one
    message whose segment names are already known takes a shorter path.

    Raises
    ------
    Hl7Error
        Bad encoding, no MSH segment, or a malformed message (the first one found).
    """
    text = decode_payload(payload)
    message = _parse_single(text)
    if message is not None:
        return [message]
    return [parse_message(part) for part in split_batch(text)]


def _parse_single(text: str) -> Hl7Message | None:
    """``parse_message(split_batch(text)[0])`` for the common frame, or None to take the general path.

    The common frame: it starts with MSH, holds no other MSH, no batch segment, no blank or whitespace-only line
    between segments, and only segment names already validated once. Anything else (including every error) goes
    the general way, which then raises or parses exactly as before.
    """
    if not text.startswith("MSH"):
        return None
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    # split_batch strips NULs, drops trailing blank lines, and parse_message strips "\x00\r\n " at the end
    text = text.rstrip("\x00\r\n ")
    if len(text) < 8 or "\r\r" in text:
        return None
    delimiters = _delimiters(text[3:8])
    if delimiters is None:
        return None
    sep = text[3]
    lines = text.split("\r")
    segments = [Segment("MSH", tuple(lines[0].split(sep)), delimiters)]
    known = _BODY_SEGMENT_NAMES
    for line in lines[1:]:
        fields = tuple(line.split(sep))
        if fields[0] not in known:
            return None
        # Segment(fields[0], fields, delimiters) at a third of the frozen dataclass's __init__: fill an object with
        # Segment's exact slot layout, then give it its class (CPython allows that between identical layouts)
        segment: Any = _SegmentSlots()
        segment.name = fields[0]
        segment.fields = fields
        segment.delimiters = delimiters
        segment.__class__ = Segment
        segments.append(segment)
    # MSH-9, MSH-10 and MSH-12 are required: a value starting with a letter or digit (never a delimiter) has one
    head = segments[0].fields
    if not (len(head) > 11 and head[8][:1].isalnum() and head[9][:1].isalnum() and head[11][:1].isalnum()):
        msh = segments[0]
        if not (msh.field(9) and msh.field(10) and msh.field(12)):
            return None
    return Hl7Message(tuple(segments), delimiters, text)


_DTM = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?(?:\.(?P<f>\d{1,4}))?"
    r"(?P<tz>[+-]\d{4})?$"
)


def parse_hl7_datetime(value: str, *, assume_tz: tzinfo = UTC, where: str = "DTM") -> datetime:
    """Parse an HL7 DTM/TS value ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`` into an aware UTC datetime.

    A value without an offset is read in *assume_tz* (the feed's configured zone).

    Raises
    ------
    Hl7ParseError
        Not a DTM value, or an impossible date.
    """
    try:
        return _parse_dtm(value, assume_tz)
    except Hl7ParseError as exc:
        raise Hl7ParseError(f"{where}: {exc}", error_code="102", location=where) from None


@lru_cache(maxsize=4096)
def _parse_dtm(value: str, assume_tz: tzinfo) -> datetime:
    m = _DTM.match(value.strip())
    if m is None:
        raise Hl7ParseError(f"{value!r} is not an HL7 date/time")
    tz: tzinfo = assume_tz
    if m["tz"]:
        sign = 1 if m["tz"][0] == "+" else -1
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][3:5])
        if hours > 14 or minutes > 59:
            raise Hl7ParseError(f"offset {m['tz']!r} is not a UTC offset")
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    try:
        result = datetime(
            int(m["y"]),
            int(m["mo"] or 1),
            int(m["d"] or 1),
            int(m["h"] or 0),
            int(m["mi"] or 0),
            int(m["s"] or 0),
            int((m["f"] or "0").ljust(6, "0")[:6]),
            tzinfo=tz,
        )
    except ValueError as exc:
        raise Hl7ParseError(f"{value!r} is not a valid date/time ({exc})") from None
    return result.astimezone(UTC)
