"""MLLP framing (HL7 v2.5.1 appendix C, MLLP release 2): ``0x0B <message> 0x1C 0x0D``, and an incremental deframer
that stays linear in its input and merges garbage into one error (used by :mod:`medtwin.interop.mllp`, which
re-exports these names)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["END_BLOCK", "START_BLOCK", "FrameError", "MllpFramer", "frame"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


def frame(message: bytes | str) -> bytes:
    """Wrap one message in MLLP start/end blocks (text is encoded UTF-8)."""
    body = message.encode() if isinstance(message, str) else message
    return START_BLOCK + body + END_BLOCK


@dataclass(frozen=True, slots=True)
class FrameError:
    """A malformed or oversize frame, or a run of them: why, the first bytes of what was received, how many errors
    (*count*) over how many bytes (*size*)."""

    reason: str
    payload: bytes
    oversize: bool = False
    count: int = 1
    size: int = 0


_SAMPLE = 4096  # bytes of a refused frame (or garbage) kept in the dead letter


class MllpFramer:
    """Incremental MLLP deframer: :meth:`push` bytes, take complete frames (bytes) and :class:`FrameError` s one at
    a time with :meth:`next_item` (so a caller can stop at its in-flight limit and leave the rest buffered).

    Framing errors that follow each other without a good frame between them (garbage: bytes outside frames, start
    blocks without an end, end blocks without a start) are merged into ONE error with their count, byte count and
    the first 4 KiB, reported before the next good frame or by :meth:`flush_junk`: 100 KB of 0x0B bytes had given
    100,000 dead letters and held the listener for minutes. Every byte is looked at a bounded number of times
    (an offset into the buffer, not a delete from its front per frame; the search for the end of a partial frame
    resumes where it stopped), so deframing is linear in the input however it is chunked.
    """

    __slots__ = (
        "_buf",
        "_junk_count",
        "_junk_reason",
        "_junk_sample",
        "_junk_size",
        "_pending",
        "_pos",
        "_scanned",
        "_skipping",
        "max_bytes",
    )

    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._pos = 0  # first byte not yet consumed
        self._scanned = 0  # the partial frame at _pos was searched for start/end blocks up to here
        self._skipping = False
        self._junk_count = 0
        self._junk_size = 0
        self._junk_reason = ""
        self._junk_sample = bytearray()
        self._pending: bytes | FrameError | None = None

    def push(self, data: bytes) -> None:
        """Append received bytes."""
        if self._pos and (self._pos >= len(self._buf) or self._pos > 1 << 16):
            del self._buf[: self._pos]  # one move per push at most, not one per frame
            self._scanned = max(0, self._scanned - self._pos)
            self._pos = 0
        self._buf += data

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Consume *data*; return every frame completed by it (and the garbage before them, merged)."""
        self.push(data)
        out: list[bytes | FrameError] = []
        while (item := self.next_item()) is not None:
            out.append(item)
        junk = self.flush_junk()
        return [*out, junk] if junk is not None else out

    def _junk(self, reason: str, chunk: bytes | bytearray, size: int | None = None) -> None:
        if self._junk_count == 0:
            self._junk_reason = reason
        self._junk_count += 1
        self._junk_size += len(chunk) if size is None else size
        room = _SAMPLE - len(self._junk_sample)
        if room > 0:
            self._junk_sample += chunk[:room]

    def flush_junk(self) -> FrameError | None:
        """The garbage merged since the last good frame as one :class:`FrameError` (None when there is none)."""
        if self._junk_count == 0:
            return None
        count, size, sample, reason = self._junk_count, self._junk_size, bytes(self._junk_sample), self._junk_reason
        self._junk_count = self._junk_size = 0
        self._junk_sample = bytearray()
        if count > 1:
            reason = f"garbage: {count} framing errors in {size} bytes (the first: {reason})"
        return FrameError(reason, sample.strip() or sample, count=count, size=size)

    @property
    def has_junk(self) -> bool:
        """Whether garbage is waiting to be reported (:meth:`flush_junk`)."""
        return self._junk_count > 0

    def partial(self) -> tuple[int, bytes] | None:
        """(bytes received, the first 4 KiB) of a frame started but not finished, or None."""
        buf, pos = self._buf, self._pos
        if self._skipping or pos >= len(buf) or buf[pos] != 0x0B:
            return None
        return len(buf) - pos - 1, bytes(buf[pos + 1 : pos + 1 + _SAMPLE])

    def discard(self) -> None:
        """Drop everything buffered (a frame given up on)."""
        self._pending = None
        self._buf.clear()
        self._pos = self._scanned = 0
        self._skipping = False

    def next_item(self) -> bytes | FrameError | None:
        """The next complete frame or error, or None when the buffer holds no more (a partial frame stays)."""
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        buf = self._buf
        n = len(buf)
        while self._pos < n:
            pos = self._pos
            if self._skipping:
                end = buf.find(END_BLOCK, pos)
                if end < 0:
                    self._pos = self._scanned = max(pos, n - 1)  # keep a trailing 0x1C: its 0x0D may follow
                    return None
                self._pos = self._scanned = end + 2
                self._skipping = False
                continue
            if buf[pos] != 0x0B:  # bytes outside a frame: up to the next start block (or the end of what we have)
                start = buf.find(START_BLOCK, pos)
                stop = n if start < 0 else start
                end = buf.find(END_BLOCK, pos, stop)
                if end >= 0:
                    stop = end + 2
                chunk = buf[pos:stop]
                if chunk.strip():  # a CR or LF between frames is tolerated
                    reason = (
                        "frame has an end block but no start block (0x0B)"
                        if end >= 0
                        else "bytes outside any MLLP frame"
                    )
                    self._junk(reason, chunk)
                self._pos = self._scanned = stop
                continue
            scan = max(pos + 1, self._scanned)
            nxt = buf.find(START_BLOCK, scan)
            end = buf.find(END_BLOCK, max(pos + 1, scan - 1), nxt if nxt >= 0 else n)
            if end < 0 and nxt >= 0:  # a new start block before any end: this one was never finished
                self._junk("frame not terminated (a new start block came first)", buf[pos:nxt])
                self._pos = self._scanned = nxt
                continue
            if end < 0:
                self._scanned = n
                if n - pos - 1 > self.max_bytes:
                    error = FrameError(
                        f"message exceeds {self.max_bytes} bytes", bytes(buf[pos + 1 : pos + 1 + _SAMPLE]), True,
                        size=n - pos - 1,
                    )  # fmt: skip
                    self._pos = self._scanned = max(pos, n - 1)
                    self._skipping = True
                    return self._before(error)
                return None
            payload = bytes(buf[pos + 1 : end])
            self._pos = self._scanned = end + 2
            if len(payload) > self.max_bytes:
                return self._before(
                    FrameError(f"message exceeds {self.max_bytes} bytes", payload[:_SAMPLE], True, size=len(payload))
                )
            return self._before(payload)
        return None

    def _before(self, item: bytes | FrameError) -> bytes | FrameError:
        """*item*, unless garbage came before it: then the garbage first (*item* is handed out on the next call)."""
        junk = self.flush_junk()
        if junk is None:
            return item
        self._pending = item
        return junk
