"""The log of the long-running commands (`medtwin listen`, `medtwin serve`): records to stderr, each line with its
time (ISO 8601, UTC) and logger, so that an outage told by warnings can be placed in time.

    2026-12-08T00:41:07.512Z WARNING medtwin.interop.mqtt: MQTT connection to broker:8883 lost (...)
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

__all__ = ["LOG_LEVELS", "UtcFormatter", "check_log_level", "log_to_stderr"]

LOG_LEVELS = ("debug", "info", "warning", "error")


class UtcFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``, TIME in ISO 8601 UTC with milliseconds (``2026-12-08T00:41:07.512Z``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_log_level(level: str) -> str:
    """*level* in lower case if it is one of :data:`LOG_LEVELS` (any case), else ValueError saying which are."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"--log-level {level!r}: one of {', '.join(LOG_LEVELS)}")
    return level.lower()


@contextlib.contextmanager
def log_to_stderr(level: str = "info") -> Iterator[None]:
    """While in the block, the records of every logger at *level* (:data:`LOG_LEVELS`) and above go to stderr (the
    ``sys.stderr`` of the moment it starts), formatted by :class:`UtcFormatter`; the root logger is restored after."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter())
    root = logging.getLogger()
    before = root.level
    root.addHandler(handler)
    root.setLevel(check_log_level(level).upper())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(before)
        handler.flush()
