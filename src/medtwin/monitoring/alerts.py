"""Deterioration rules over a patient's scores and vitals, and an alert tracker that de-duplicates and escalates.

Rules (each configurable in :class:`AlertRules`):

* ``news2-response``: the NEWS2 clinical response level is at least ``min_level`` (default low-medium);
  severity is the level.
* ``news2-red-parameter``: a single parameter scores 3 (RCP 2017: urgent ward-based response).
* ``news2-rising``: NEWS2 total rose by >= ``rise_points`` (2) above its minimum within ``rise_window`` (6 h).
* ``spo2-falling``: SpO2 fell by >= ``spo2_drop_percent`` (3 percentage points) below its maximum within
  ``spo2_window`` (1 h).
* ``qsofa-positive``: qSOFA >= 2.

An alert of a given code fires once while its condition holds; it fires again (an escalation, linked to the previous
alert) only when its severity rises; when the condition has been absent for a few evaluations the alert is reported
as resolved, so a later recurrence fires anew. Acknowledging an alert does not silence an escalation.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from medtwin.monitoring.news2 import News2Result
from medtwin.monitoring.qsofa import QsofaResult
from medtwin.records import Event

__all__ = ["SEVERITY_RANK", "AlertRules", "AlertSignal", "AlertTracker", "TrendHistory", "evaluate_rules"]

SEVERITY_RANK: dict[str, int] = {"low": 0, "low-medium": 1, "medium": 2, "high": 3}


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
            if fires is None or fires("news2-red-parameter", "low-medium"):
                signals.append(
                    AlertSignal(
                        "news2-red-parameter",
                        "low-medium",
                        f"red score (3) in {', '.join(red)}",
                        {"parameters": list(red)},
                    )
                )
            else:
                signals.append(_unread("news2-red-parameter", "low-medium"))
        lowest = news2_history.lowest(at, rules.rise_window)
        if lowest is not None:
            low_t, low = lowest
            if news2.total - low >= rules.rise_points and low_t < at:
                if fires is None or fires("news2-rising", "medium"):
                    signals.append(
                        AlertSignal(
                            "news2-rising",
                            "medium",
                            f"NEWS2 rose from {low:g} to {news2.total} since {low_t:%H:%M} UTC",
                            {"from": low, "to": news2.total, "since": low_t.isoformat()},
                        )
                    )
                else:
                    signals.append(_unread("news2-rising", "medium"))
    last_two = spo2_history.newest(at, rules.spo2_window, 2)
    highest = spo2_history.highest(at, rules.spo2_window) if len(last_two) == 2 else None
    if highest is not None:
        high_t, high = highest
        now_t, now = last_two[-1]
        if high - now >= rules.spo2_drop_percent and high_t < now_t:
            if fires is None or fires("spo2-falling", "medium"):
                signals.append(
                    AlertSignal(
                        "spo2-falling",
                        "medium",
                        f"SpO2 fell from {high:g} % to {now:g} % since {high_t:%H:%M} UTC",
                        {"from": high, "to": now, "since": high_t.isoformat()},
                    )
                )
            else:
                signals.append(_unread("spo2-falling", "medium"))
    if rules.qsofa and qsofa is not None and qsofa.positive:
        if fires is None or fires("qsofa-positive", "medium"):
            signals.append(
                AlertSignal(
                    "qsofa-positive",
                    "medium",
                    f"qSOFA {qsofa.total}/3 (sepsis screen positive)",
                    {"qsofa": qsofa.total},
                )
            )
        else:
            signals.append(_unread("qsofa-positive", "medium"))
    return signals


class AlertTracker:
    """Turns the signals of successive evaluations into alert Events: new, escalated, and resolved (by code).

    An active alert is resolved only after its condition has been absent in *clear_after* consecutive evaluations
    (hysteresis, so a noisy value near a threshold does not make the alert flap).
    """

    __slots__ = ("_active", "_misses", "clear_after", "source")

    def __init__(self, source: str = "medtwin.monitoring", *, clear_after: int = 3) -> None:
        self.source = source
        self.clear_after = max(1, clear_after)
        self._active: dict[str, tuple[str, int]] = {}  # code -> (event_id, severity rank)
        self._misses: dict[str, int] = {}

    @property
    def active(self) -> dict[str, str]:
        """code -> event id of the alerts currently active."""
        return {code: eid for code, (eid, _) in self._active.items()}

    def update(self, signals: Sequence[AlertSignal], *, patient_id: str, at: datetime) -> tuple[list[Event], list[str]]:
        """(new or escalated alert events, ids of alerts whose condition cleared)."""
        if not signals and not self._active:
            return [], []  # the common case on a stable ward: nothing fires, nothing to clear
        fired: list[Event] = []
        now_codes = set()
        for signal in signals:
            now_codes.add(signal.code)
            self._misses.pop(signal.code, None)
            rank = SEVERITY_RANK.get(signal.severity, 0)
            previous = self._active.get(signal.code)
            if previous is not None and rank <= previous[1]:
                continue
            data = dict(signal.data)
            if previous is not None:
                data["escalated_from"] = previous[0]
            event = Event(
                kind="alert",
                code=signal.code,
                time=at,
                message=signal.message,
                patient_id=patient_id,
                severity=signal.severity,
                data=data,
                source=self.source,
            )
            self._active[signal.code] = (event.event_id, rank)
            fired.append(event)
        cleared: list[str] = []
        for code in [c for c in self._active if c not in now_codes]:
            self._misses[code] = self._misses.get(code, 0) + 1
            if self._misses[code] >= self.clear_after:
                cleared.append(self._active.pop(code)[0])
                del self._misses[code]
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
        only formatted when it fires (an alert already active at that severity, the usual case, needs neither)."""
        signals = _evaluate(at, news2, news2_history, spo2_history, qsofa, rules, self._fires)
        return self.update(signals, patient_id=patient_id, at=at)

    def _fires(self, code: str, severity: str) -> bool:
        """Whether :meth:`update` would turn a signal *code* of *severity* into an event (new or escalated)."""
        previous = self._active.get(code)
        return previous is None or SEVERITY_RANK.get(severity, 0) > previous[1]

    def state(self) -> dict[str, tuple[str, int]]:
        """A copy of the active alerts (for snapshots)."""
        return dict(self._active)

    def restore(self, state: dict[str, tuple[str, int]]) -> None:
        """Restore the active alerts from :meth:`state`."""
        self._active = {k: (str(v[0]), int(v[1])) for k, v in state.items()}
        self._misses = {}
