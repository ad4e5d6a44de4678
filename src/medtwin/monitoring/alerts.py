"""Deterioration rules over a patient's scores and vitals, and an alert tracker that de-duplicates and escalates.

Rules (each configurable in :class:`AlertRules`). Severity is the RCP 2017 NEWS2 clinical response level (chart 2,
table 2: total 0-4 low; a single parameter scoring 3 low-medium, an urgent ward-based response; total 5-6 medium;
7 or more high), so that an alert asks for the response the score asks for:

* ``news2-response``: the NEWS2 clinical response level is at least ``min_level`` (default low-medium);
  severity is the level.
* ``news2-red-parameter``: a single parameter scores 3; severity low-medium (urgent ward-based response; a higher
  total raises ``news2-response`` to its own level beside it).
* ``news2-rising``: NEWS2 total rose by >= ``rise_points`` (2) above its minimum within ``rise_window`` (6 h);
  severity is the current total's level (a rise from 0 to 2 is still low).
* ``spo2-falling``: SpO2 fell by >= ``spo2_drop_percent`` (3 percentage points) below its maximum within
  ``spo2_window`` (1 h); severity is the current NEWS2 level (low when no NEWS2 could be scored).
* ``qsofa-positive``: qSOFA >= 2 (Sepsis-3 screen, not part of NEWS2); severity medium, or the NEWS2 level when
  higher: RCP 2017 asks to consider sepsis from a total of 5 (medium).

One alert per condition: while a condition holds, its alert stays open and a repetition raises nothing new; when
the severity rises the open alert is *updated* (same id, new severity and message, ``revision`` counted up,
``escalated_from`` the previous severity, status back to active even if acknowledged) instead of a second alert.
The alert resolves only when the condition has been absent in ``clear_after`` consecutive evaluations spanning at
least ``clear_after_time`` (default 3 and 30 minutes); if it comes back within ``reopen_within`` (6 h, the NEWS2
trend window) of resolving, the same alert reopens (``recurred``, status active, the severity it has now) instead
of a new one, so noise
near a threshold does not raise the same alert again and again. A recurrence after that is a new alert.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from medtwin.monitoring.news2 import News2Result
from medtwin.monitoring.qsofa import QsofaResult
from medtwin.records import Event

__all__ = ["SEVERITY_RANK", "AlertRules", "AlertSignal", "AlertTracker", "TrendHistory", "evaluate_rules"]

SEVERITY_RANK: dict[str, int] = {"low": 0, "low-medium": 1, "medium": 2, "high": 3}


def _at_least(level: str, floor: str) -> str:
    return level if SEVERITY_RANK[level] >= SEVERITY_RANK[floor] else floor


@dataclass(frozen=True, slots=True)
class AlertRules:
    """Thresholds of the deterioration rules."""

    min_level: str = "low-medium"
    rise_points: int = 2
    rise_window: timedelta = timedelta(hours=6)
    spo2_drop_percent: float = 3.0
    spo2_window: timedelta = timedelta(hours=1)
    qsofa: bool = True


@dataclass(frozen=True, slots=True)
class AlertSignal:
    """A rule that currently fires: its code, severity, a human message and structured data."""

    code: str
    severity: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class TrendHistory:
    """Time-ordered (time, value) pairs kept for a bounded window and at most *max_points* (oldest dropped).

    Besides the points it keeps two monotonic queues (the candidates for the lowest and for the highest value of any
    window that ends at the newest point), so :meth:`lowest` and :meth:`highest` cost O(1) amortised instead of a
    scan of the whole window on every assessment. A late point (older than the newest) rebuilds them.
    """

    __slots__ = ("_first", "_highs", "_lows", "_next", "_points", "keep", "max_points")

    def __init__(self, keep: timedelta, *, max_points: int = 2048) -> None:
        self.keep = keep
        self.max_points = max_points
        self._points: deque[tuple[datetime, float]] = deque()
        # (time, value, sequence number): values rise from the front of _lows and fall from the front of _highs
        self._lows: deque[tuple[datetime, float, int]] = deque()
        self._highs: deque[tuple[datetime, float, int]] = deque()
        self._first = 0  # sequence number of _points[0]
        self._next = 0  # sequence number of the next point appended

    def add(self, when: datetime, value: float) -> None:
        """Append a point (a late point, older than the newest, is inserted in time order)."""
        points = self._points
        if points and when < points[-1][0]:
            if points[-1][0] - when > self.keep:
                return  # older than the window: it can no longer matter
            points.insert(bisect.bisect_right(points, (when, value)), (when, value))
            self._rebuild()
        else:
            points.append((when, value))
            self._push(when, value, self._next)
            self._next += 1
        newest = points[-1][0]
        dropped = False
        while points and (newest - points[0][0] > self.keep or len(points) > self.max_points):
            points.popleft()
            self._first += 1
            dropped = True
        if dropped:
            first = self._first
            while self._lows and self._lows[0][2] < first:
                self._lows.popleft()
            while self._highs and self._highs[0][2] < first:
                self._highs.popleft()

    def _push(self, when: datetime, value: float, seq: int) -> None:
        lows, highs = self._lows, self._highs
        # an earlier point of equal value stays the lowest (ties go to the earliest), a later one the highest
        while lows and lows[-1][1] > value:
            lows.pop()
        lows.append((when, value, seq))
        while highs and highs[-1][1] <= value:
            highs.pop()
        highs.append((when, value, seq))

    def _rebuild(self) -> None:
        self._lows.clear()
        self._highs.clear()
        self._first = 0
        for seq, (when, value) in enumerate(self._points):
            self._push(when, value, seq)
        self._next = len(self._points)

    def within(self, at: datetime, window: timedelta) -> list[tuple[datetime, float]]:
        """Points in ``[at - window, at]``."""
        return [(t, v) for t, v in self._points if at - window <= t <= at]

    def lowest(self, at: datetime, window: timedelta) -> tuple[datetime, float] | None:
        """The point of lowest value in ``[at - window, at]`` (the earliest of equal ones), or None."""
        if self._points and at >= self._points[-1][0]:
            start = at - window
            for when, value, _ in self._lows:  # times rise along the queue: the first one in the window wins
                if when >= start:
                    return (when, value)
            return None
        return min(self.within(at, window), key=lambda p: (p[1], p[0]), default=None)

    def highest(self, at: datetime, window: timedelta) -> tuple[datetime, float] | None:
        """The point of highest value in ``[at - window, at]`` (the latest of equal ones), or None."""
        if self._points and at >= self._points[-1][0]:
            start = at - window
            for when, value, _ in self._highs:
                if when >= start:
                    return (when, value)
            return None
        return max(self.within(at, window), key=lambda p: (p[1], p[0]), default=None)

    def newest(self, at: datetime, window: timedelta, count: int) -> list[tuple[datetime, float]]:
        """The last *count* (or fewer) points in ``[at - window, at]``, oldest first."""
        start = at - window
        out: list[tuple[datetime, float]] = []
        for point in reversed(self._points):
            if point[0] > at:
                continue
            if point[0] < start or len(out) == count:
                break
            out.append(point)
        out.reverse()
        return out

    def points(self) -> list[tuple[datetime, float]]:
        """All points kept."""
        return list(self._points)


def evaluate_rules(
    *,
    at: datetime,
    news2: News2Result | None,
    news2_history: TrendHistory,
    spo2_history: TrendHistory,
    qsofa: QsofaResult | None = None,
    rules: AlertRules = AlertRules(),
) -> list[AlertSignal]:
    """The signals that fire at *at* given the current scores and the histories (which include the current point)."""
    return _evaluate(at, news2, news2_history, spo2_history, qsofa, rules, None)


# A signal whose message and data nobody will read (its alert is already active at that severity): shared, unformatted.
_UNREAD: dict[tuple[str, str], AlertSignal] = {}


def _unread(code: str, severity: str) -> AlertSignal:
    signal = _UNREAD.get((code, severity))
    if signal is None:
        signal = _UNREAD[(code, severity)] = AlertSignal(code, severity, "")
    return signal


def _evaluate(
    at: datetime,
    news2: News2Result | None,
    news2_history: TrendHistory,
    spo2_history: TrendHistory,
    qsofa: QsofaResult | None,
    rules: AlertRules,
    fires: Callable[[str, str], bool] | None,
) -> list[AlertSignal]:
    """:func:`evaluate_rules`; with *fires*, a signal for which ``fires(code, severity)`` is False is not formatted."""
    signals: list[AlertSignal] = []
    if news2 is not None:
        level = news2.level
        if SEVERITY_RANK[level] >= SEVERITY_RANK[rules.min_level]:
            if fires is None or fires("news2-response", level):
                partial = "" if news2.complete else f" (partial: missing {', '.join(news2.missing)})"
                signals.append(
                    AlertSignal(
                        "news2-response",
                        level,
                        f"NEWS2 {news2.total}: {level} clinical response{partial}",
                        {"news2": news2.total, "level": level, "scores": dict(news2.scores)},
                    )
                )
            else:
                signals.append(_unread("news2-response", level))
        red = news2.red_parameters
        if red:
            red_level = "low-medium"  # RCP 2017: a single red score asks for an urgent ward-based review
            if fires is None or fires("news2-red-parameter", red_level):
                signals.append(
                    AlertSignal(
                        "news2-red-parameter",
                        red_level,
                        f"red score (3) in {', '.join(red)}: urgent ward-based review",
                        {"parameters": list(red), "news2": news2.total},
                    )
                )
            else:
                signals.append(_unread("news2-red-parameter", red_level))
        lowest = news2_history.lowest(at, rules.rise_window)
        if lowest is not None:
            low_t, low = lowest
            if news2.total - low >= rules.rise_points and low_t < at:
                if fires is None or fires("news2-rising", level):
                    signals.append(
                        AlertSignal(
                            "news2-rising",
                            level,
                            f"NEWS2 rose from {low:g} to {news2.total} ({level}) since {low_t:%H:%M} UTC",
                            {"from": low, "to": news2.total, "since": low_t.isoformat(), "level": level},
                        )
                    )
                else:
                    signals.append(_unread("news2-rising", level))
    current_level = "low" if news2 is None else news2.level
    last_two = spo2_history.newest(at, rules.spo2_window, 2)
    highest = spo2_history.highest(at, rules.spo2_window) if len(last_two) == 2 else None
    if highest is not None:
        high_t, high = highest
        now_t, now = last_two[-1]
        if high - now >= rules.spo2_drop_percent and high_t < now_t:
            if fires is None or fires("spo2-falling", current_level):
                signals.append(
                    AlertSignal(
                        "spo2-falling",
                        current_level,
                        f"SpO2 fell from {high:g} % to {now:g} % since {high_t:%H:%M} UTC",
                        {"from": high, "to": now, "since": high_t.isoformat()},
                    )
                )
            else:
                signals.append(_unread("spo2-falling", current_level))
    if rules.qsofa and qsofa is not None and qsofa.positive:
        qsofa_level = _at_least(current_level, "medium")
        if fires is None or fires("qsofa-positive", qsofa_level):
            signals.append(
                AlertSignal(
                    "qsofa-positive",
                    qsofa_level,
                    f"qSOFA {qsofa.total}/3 (sepsis screen positive)",
                    {"qsofa": qsofa.total},
                )
            )
        else:
            signals.append(_unread("qsofa-positive", qsofa_level))
    return signals


@dataclass(slots=True)
class _OpenAlert:
    """What the tracker remembers of an open alert: enough to update it without the stored event."""

    event_id: str
    rank: int
    raised: datetime | None  # None: restored from a snapshot of a release that did not keep it
    revision: int = 1
    first_miss: datetime | None = None
    misses: int = 0


class AlertTracker:
    """Turns the signals of successive evaluations into alert Events: new, updated (escalated), resolved (by code).

    An escalation is the open alert again (same ``event_id``) with the new severity, message and data, plus
    ``revision`` (2, 3, ...), ``escalated_from`` (the previous severity) and ``updated`` (the time); its ``time`` stays
    the time it was first raised. A store keeps the latest version (:meth:`medtwin.store.Store.upsert_events`). An
    open alert is resolved only after its condition has been absent in *clear_after* consecutive evaluations that
    span at least *clear_after_time* (hysteresis, so a noisy value near a threshold does not make the alert flap).
    """

    __slots__ = ("_closed", "_open", "clear_after", "clear_after_time", "reopen_within", "source")

    def __init__(
        self,
        source: str = "medtwin.monitoring",
        *,
        clear_after: int = 3,
        clear_after_time: timedelta = timedelta(minutes=30),
        reopen_within: timedelta = timedelta(hours=6),
    ) -> None:
        self.source = source
        self.clear_after = max(1, clear_after)
        self.clear_after_time = clear_after_time
        self.reopen_within = reopen_within
        self._open: dict[str, _OpenAlert] = {}
        self._closed: dict[str, tuple[_OpenAlert, datetime]] = {}  # code -> (resolved alert, when)

    @property
    def active(self) -> dict[str, str]:
        """code -> event id of the alerts currently open."""
        return {code: alert.event_id for code, alert in self._open.items()}

    def update(self, signals: Sequence[AlertSignal], *, patient_id: str, at: datetime) -> tuple[list[Event], list[str]]:
        """(new alert events and new versions of escalated ones, ids of alerts whose condition cleared)."""
        if not signals and not self._open:
            return [], []  # the common case on a stable ward: nothing fires, nothing to clear
        fired: list[Event] = []
        now_codes = set()
        for signal in signals:
            now_codes.add(signal.code)
            rank = SEVERITY_RANK.get(signal.severity, 0)
            alert = self._open.get(signal.code)
            recurred = False
            if alert is None:
                closed = self._closed.pop(signal.code, None)
                if closed is not None and at - closed[1] <= self.reopen_within:
                    alert, recurred = closed[0], True  # the same problem again: its alert reopens
                    self._open[signal.code] = alert
            if alert is not None:
                alert.misses, alert.first_miss = 0, None
                if rank <= alert.rank and not recurred:
                    continue  # the same condition again: the open alert stands for it
            data = dict(signal.data)
            if alert is None:
                event = Event(
                    kind="alert",
                    code=signal.code,
                    time=at,
                    message=signal.message,
                    patient_id=patient_id,
                    severity=signal.severity,
                    data=data | {"revision": 1},
                    source=self.source,
                    # from the patient, the condition and the time it was raised: the same input raises the same
                    # alert, so a twin that processes messages again after a crash stores it once
                    event_id=f"{patient_id or self.source}-{signal.code}-{at.strftime('%Y%m%dT%H%M%S.%f')}",
                )
                self._open[signal.code] = _OpenAlert(event.event_id, rank, at)
            else:
                previous = next(name for name, r in SEVERITY_RANK.items() if r == alert.rank)
                alert.revision += 1
                change = {"revision": alert.revision, "updated": at.isoformat()}
                if rank > alert.rank:
                    change["escalated_from"] = previous
                if recurred:
                    change["recurred"] = True
                # a recurrence is the condition as it is now; an escalation only ever raises the severity
                alert.rank = rank if recurred else max(rank, alert.rank)
                event = Event(
                    kind="alert",
                    code=signal.code,
                    time=alert.raised or at,
                    message=signal.message,
                    patient_id=patient_id,
                    severity=next(name for name, r in SEVERITY_RANK.items() if r == alert.rank),
                    data=data | change,
                    source=self.source,
                    event_id=alert.event_id,
                )
            fired.append(event)
        cleared: list[str] = []
        for code, alert in list(self._open.items()):
            if code in now_codes:
                continue
            alert.misses += 1
            if alert.first_miss is None:
                alert.first_miss = at
            if alert.misses >= self.clear_after and at - alert.first_miss >= self.clear_after_time:
                cleared.append(alert.event_id)
                del self._open[code]
                self._closed[code] = (alert, at)
        return fired, cleared

    def evaluate(
        self,
        *,
        at: datetime,
        news2: News2Result | None,
        news2_history: TrendHistory,
        spo2_history: TrendHistory,
        qsofa: QsofaResult | None = None,
        rules: AlertRules = AlertRules(),
        patient_id: str,
    ) -> tuple[list[Event], list[str]]:
        """:func:`evaluate_rules` then :meth:`update`, with the same result; the message and data of a signal are
        only formatted when it fires (an alert already open at that severity, the usual case, needs neither)."""
        signals = _evaluate(at, news2, news2_history, spo2_history, qsofa, rules, self._fires)
        return self.update(signals, patient_id=patient_id, at=at)

    def _fires(self, code: str, severity: str) -> bool:
        """Whether :meth:`update` would turn a signal *code* of *severity* into an event (new or escalated)."""
        alert = self._open.get(code)
        return alert is None or SEVERITY_RANK.get(severity, 0) > alert.rank

    def state(self) -> dict[str, Any]:
        """The open and recently resolved alerts, JSON-ready (for snapshots): ``{"open": {code: [event id, severity
        rank, raised, revision]}, "closed": {code: [..., resolved]}}``."""

        def row(a: _OpenAlert) -> list[Any]:
            return [a.event_id, a.rank, a.raised.isoformat() if a.raised else None, a.revision]

        return {
            "open": {code: row(a) for code, a in self._open.items()},
            "closed": {code: [*row(a), when.isoformat()] for code, (a, when) in self._closed.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state` (or from the ``{code: [event id, rank]}`` of earlier snapshots)."""

        def alert(v: Sequence[Any]) -> _OpenAlert:
            raised = datetime.fromisoformat(str(v[2])) if len(v) > 2 and v[2] else None
            return _OpenAlert(str(v[0]), int(v[1]), raised, int(v[3]) if len(v) > 3 else 1)

        opened = state.get("open", {}) if "open" in state else state  # earlier snapshots: the open alerts only
        self._open = {code: alert(v) for code, v in opened.items()}
        closed = state.get("closed", {}) if "open" in state else {}
        self._closed = {code: (alert(v), datetime.fromisoformat(str(v[4]))) for code, v in closed.items()}
