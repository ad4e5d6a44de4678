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
from collections.abc import Sequence
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
    """Time-ordered (time, value) pairs kept for a bounded window and at most *max_points* (oldest dropped)."""

    __slots__ = ("_points", "keep", "max_points")

    def __init__(self, keep: timedelta, *, max_points: int = 2048) -> None:
        self.keep = keep
        self.max_points = max_points
        self._points: deque[tuple[datetime, float]] = deque()

    def add(self, when: datetime, value: float) -> None:
        """Append a point (a late point, older than the newest, is inserted in time order)."""
        if self._points and when < self._points[-1][0]:
            if self._points[-1][0] - when > self.keep:
                return  # older than the window: it can no longer matter
            self._points.insert(bisect.bisect_right(self._points, (when, value)), (when, value))
        else:
            self._points.append((when, value))
        newest = self._points[-1][0]
        while self._points and (newest - self._points[0][0] > self.keep or len(self._points) > self.max_points):
            self._points.popleft()

    def within(self, at: datetime, window: timedelta) -> list[tuple[datetime, float]]:
        """Points in ``[at - window, at]``."""
        return [(t, v) for t, v in self._points if at - window <= t <= at]

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
    signals: list[AlertSignal] = []
    if news2 is not None:
        partial = "" if news2.complete else f" (partial: missing {', '.join(news2.missing)})"
        if SEVERITY_RANK[news2.level] >= SEVERITY_RANK[rules.min_level]:
            signals.append(
                AlertSignal(
                    "news2-response",
                    news2.level,
                    f"NEWS2 {news2.total}: {news2.level} clinical response{partial}",
                    {"news2": news2.total, "level": news2.level, "scores": dict(news2.scores)},
                )
            )
        if news2.red_parameters:
            signals.append(
                AlertSignal(
                    "news2-red-parameter",
                    "low-medium",
                    f"red score (3) in {', '.join(news2.red_parameters)}",
                    {"parameters": list(news2.red_parameters)},
                )
            )
        window = news2_history.within(at, rules.rise_window)
        if window:
            low_t, low = min(window, key=lambda p: (p[1], p[0]))
            if news2.total - low >= rules.rise_points and low_t < at:
                signals.append(
                    AlertSignal(
                        "news2-rising",
                        "medium",
                        f"NEWS2 rose from {low:g} to {news2.total} since {low_t:%H:%M} UTC",
                        {"from": low, "to": news2.total, "since": low_t.isoformat()},
                    )
                )
    spo2 = spo2_history.within(at, rules.spo2_window)
    if len(spo2) >= 2:
        high_t, high = max(spo2, key=lambda p: (p[1], p[0]))
        now_t, now = spo2[-1]
        if high - now >= rules.spo2_drop_percent and high_t < now_t:
            signals.append(
                AlertSignal(
                    "spo2-falling",
                    "medium",
                    f"SpO2 fell from {high:g} % to {now:g} % since {high_t:%H:%M} UTC",
                    {"from": high, "to": now, "since": high_t.isoformat()},
                )
            )
    if rules.qsofa and qsofa is not None and qsofa.positive:
        signals.append(
            AlertSignal(
                "qsofa-positive", "medium", f"qSOFA {qsofa.total}/3 (sepsis screen positive)", {"qsofa": qsofa.total}
            )
        )
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

    def state(self) -> dict[str, tuple[str, int]]:
        """A copy of the active alerts (for snapshots)."""
        return dict(self._active)

    def restore(self, state: dict[str, tuple[str, int]]) -> None:
        """Restore the active alerts from :meth:`state`."""
        self._active = {k: (str(v[0]), int(v[1])) for k, v in state.items()}
        self._misses = {}
