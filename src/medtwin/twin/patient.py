"""PatientTwin and its vitals component: live NEWS2/qSOFA, trends and de-duplicated alerts for one patient.

The vitals component follows the twin contract (docs/architecture): ``observe`` takes stored observations and
returns the events they cause (alerts, and a derived NEWS2 event when the score changes); ``forecast`` extrapolates
the NEWS2 trend (least squares over the trend window) with its residual spread; ``snapshot``/``restore`` persist
the state as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from medtwin.monitoring import (
    DEFAULT_FRESHNESS,
    AlertRules,
    AlertTracker,
    LatestVitals,
    News2Result,
    TrendHistory,
    VitalSigns,
    news2_observation,
    qsofa_score,
)
from medtwin.records import Event, Observation, Quantity

__all__ = ["News2Forecast", "PatientTwin", "VitalsComponent"]


@dataclass(frozen=True, slots=True)
class News2Forecast:
    """A linear extrapolation of the NEWS2 total *horizon* ahead, with the residual standard deviation."""

    at: datetime
    horizon: timedelta
    expected_total: float
    slope_per_h: float
    residual_sd: float
    points: int


class VitalsComponent:
    """Scores and alerts from the patient's vital signs."""

    name = "vitals"

    def __init__(
        self,
        patient_id: str,
        *,
        freshness: timedelta = DEFAULT_FRESHNESS,
        rules: AlertRules = AlertRules(),
        spo2_scale: int = 1,
    ) -> None:
        self.patient_id = patient_id
        self.freshness = freshness
        self.rules = rules
        self.spo2_scale = spo2_scale
        self.latest = LatestVitals()
        self.news2_history = TrendHistory(max(rules.rise_window, timedelta(hours=6)))
        self.spo2_history = TrendHistory(max(rules.spo2_window, timedelta(hours=1)))
        self.tracker = AlertTracker(source=f"twin:{patient_id}/vitals")
        self.last_news2: News2Result | None = None
        self.last_news2_observation: Observation | None = None
        self.last_time: datetime | None = None
        self._last_key: tuple[int, tuple[str, ...]] | None = None
        self.cleared: list[str] = []

    def observe(self, observations: Sequence[Observation]) -> list[Event]:
        """Take in *observations* (any order), re-assess once at the newest time, and return the new events."""
        newest: datetime | None = None
        update = self.latest.update
        for obs in observations:
            parameter = update(obs)
            if parameter is None:
                continue
            if parameter == "spo2":
                value = obs.value
                if isinstance(value, Quantity):
                    self.spo2_history.add(obs.effective, value.value)
            if newest is None or obs.effective > newest:
                newest = obs.effective
        if newest is None:
            return []
        if self.last_time is not None and newest < self.last_time:
            newest = self.last_time  # a late arrival does not move the clock back
        return self.assess(newest)

    def assess(self, at: datetime) -> list[Event]:
        """Score the vitals fresh at *at*, evaluate the rules and return new alert / derived events."""
        self.last_time = at
        vitals = self.latest.snapshot(at, freshness=self.freshness)
        result = vitals.news2(spo2_scale=self.spo2_scale)
        self.last_news2 = result
        scored = len(result.missing) < len(result.scores)
        events: list[Event] = []
        if scored:
            self.news2_history.add(at, float(result.total))
            key = (result.total, result.missing)
            if key != self._last_key:  # only a changed score makes a derived event and a NEWS2 Observation
                self._last_key = key
                self.last_news2_observation = news2_observation(result, vitals, patient_id=self.patient_id)
                events.append(self._news2_event(at, result, vitals, self.last_news2_observation.observation_id))
        qsofa = qsofa_score(
            respiration_rate_per_min=vitals.respiration_rate_per_min,
            systolic_bp_mm_hg=vitals.systolic_bp_mm_hg,
            acvpu=vitals.consciousness,
        )
        fired, cleared = self.tracker.evaluate(
            at=at,
            news2=result if scored else None,
            news2_history=self.news2_history,
            spo2_history=self.spo2_history,
            qsofa=qsofa,
            rules=self.rules,
            patient_id=self.patient_id,
        )
        if cleared:
            self.cleared.extend(cleared)
        if fired:
            events.extend(fired)
        return events

    def _news2_event(self, at: datetime, result: News2Result, vitals: VitalSigns, observation_id: str) -> Event:
        return Event(
            kind="derived",
            code="news2",
            time=at,
            message=f"NEWS2 {result.total} ({result.level})"
            + ("" if result.complete else f"; missing {', '.join(result.missing)}"),
            patient_id=self.patient_id,
            severity=result.level,
            data={
                "total": result.total,
                "level": result.level,
                "scores": dict(result.scores),
                "missing": list(result.missing),
                "stale": list(vitals.stale),
                "observation_id": observation_id,
            },
            source=self.tracker.source,
        )

    def forecast(self, horizon: timedelta) -> News2Forecast | None:
        """Extrapolate the NEWS2 total linearly over the trend window; None with fewer than 3 points."""
        points = self.news2_history.points()
        if len(points) < 3 or self.last_time is None:
            return None
        t0 = points[0][0]
        xs = [(t - t0) / timedelta(hours=1) for t, _ in points]
        ys = [v for _, v in points]
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        intercept = my - slope * mx
        resid = [y - (intercept + slope * x) for x, y in zip(xs, ys, strict=True)]
        sd = (sum(r * r for r in resid) / max(1, n - 2)) ** 0.5
        x_end = (self.last_time + horizon - t0) / timedelta(hours=1)
        expected = min(20.0, max(0.0, intercept + slope * x_end))
        return News2Forecast(self.last_time, horizon, expected, slope, sd, n)

    def state(self) -> dict[str, Any]:
        """JSON-ready state."""
        return {
            "latest": self.latest.state(),
            "news2_history": [[t.isoformat(), v] for t, v in self.news2_history.points()],
            "spo2_history": [[t.isoformat(), v] for t, v in self.spo2_history.points()],
            "alerts": self.tracker.state(),
            "last_time": self.last_time.isoformat() if self.last_time else None,
            # the last announced NEWS2 (total, missing): a restored twin does not announce an unchanged score again
            "last_news2": None if self._last_key is None else [self._last_key[0], list(self._last_key[1])],
        }  # fmt: skip

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state`."""
        self.latest.load_state(state.get("latest", {}))
        for when, v in state.get("news2_history", []):
            self.news2_history.add(datetime.fromisoformat(when), float(v))
        for when, v in state.get("spo2_history", []):
            self.spo2_history.add(datetime.fromisoformat(when), float(v))
        self.tracker.restore(state.get("alerts", {}))
        self.last_time = datetime.fromisoformat(state["last_time"]) if state.get("last_time") else None
        last = state.get("last_news2")  # absent in snapshots of earlier releases: the score is announced once more
        self._last_key = None if last is None else (int(last[0]), tuple(str(m) for m in last[1]))


class PatientTwin:
    """The twin of one patient: a composition of components (here: vitals)."""

    def __init__(self, patient_id: str, *, vitals: VitalsComponent | None = None) -> None:
        self.patient_id = patient_id
        self.vitals = vitals or VitalsComponent(patient_id)

    @property
    def twin_id(self) -> str:
        """The id snapshots are stored under."""
        return f"patient:{self.patient_id}"

    def observe(self, observations: Sequence[Observation]) -> list[Event]:
        """Route *observations* of this patient to the components; return the events they produce."""
        mine = [o for o in observations if o.patient_id == self.patient_id]
        return self.vitals.observe(mine)

    def forecast(self, horizon: timedelta) -> News2Forecast | None:
        """The vitals component's NEWS2 forecast."""
        return self.vitals.forecast(horizon)

    def snapshot(self) -> bytes:
        """The twin state as JSON bytes."""
        return json.dumps({"patient_id": self.patient_id, "vitals": self.vitals.state()}).encode()

    @classmethod
    def restore(cls, blob: bytes, *, vitals: VitalsComponent | None = None) -> PatientTwin:
        """A twin from :meth:`snapshot` bytes (optionally into a configured, empty vitals component)."""
        state = json.loads(blob)
        twin = cls(state["patient_id"], vitals=vitals)
        twin.vitals.load_state(state["vitals"])
        return twin
