"""PatientTwin and its vitals component: live NEWS2/qSOFA, trends and de-duplicated alerts for one patient.

The vitals component follows the twin contract (docs/architecture): ``observe`` takes stored observations and
returns the events they cause (alerts, and a derived NEWS2 event when the score changes); ``forecast`` extrapolates
the NEWS2 trend (least squares over the trend window) with its residual spread; ``snapshot``/``restore`` persist
the state as JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from medtwin.errors import ValidationError
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
from medtwin.records import (
    Condition,
    Encounter,
    Event,
    MedicationAdministration,
    MedicationRequest,
    Observation,
    Patient,
    Quantity,
    Record,
)
from medtwin.store import codec
from medtwin.twin.component import Component, ComponentRegistry, ComponentSpec, UnsupportedQuestionError

__all__ = ["PENDING_PER_CODE", "News2Forecast", "PatientTwin", "VitalsComponent"]

log = logging.getLogger(__name__)


PENDING_PER_CODE = 20
"""Records kept per kind and code for a component that has not started yet (the newest)."""

_RECORD_TYPES: dict[str, type[Any]] = {
    t.__name__: t
    for t in (Observation, MedicationAdministration, MedicationRequest, Patient, Encounter, Condition, Event)
}


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
            # from the time and the observations scored: the same input gives the same id, a score changed by a late
            # arrival (same time, other observations) another one
            event_id=f"{self.patient_id}-news2-{at.strftime('%Y%m%dT%H%M%S.%f')}-"
            + hashlib.blake2b("|".join(sorted(vitals.observation_ids)).encode(), digest_size=8).hexdigest(),
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

    def what_if(self, scenario: Mapping[str, Any]) -> Any:
        """Not offered: the vitals component scores what was measured; it does not simulate the patient."""
        raise UnsupportedQuestionError("the vitals component has no what-if: it scores measured vital signs")

    def recommend(self, goal: Mapping[str, Any] | None = None) -> Any:
        """The latest NEWS2 and its RCP 2017 clinical response level (None before any score)."""
        if self.last_news2 is None:
            return None
        return {"news2": self.last_news2.total, "clinical_response_level": self.last_news2.level}

    def snapshot(self) -> dict[str, Any]:
        """The component contract's name for :meth:`state`."""
        return self.state()

    def restore(self, state: Mapping[str, Any]) -> None:
        """The component contract's name for :meth:`load_state`."""
        self.load_state(dict(state))

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
    """The twin of one patient: the vitals component always, and the other components of its *registry* that its
    records call for (docs/architecture.md, "Patient twin components").

    A record goes to every component that consumes it (:class:`~medtwin.twin.component.Consumes`). A component
    starts with the first record that starts it (a CGM reading, a dose of a drug with a library model); records it
    consumes that arrive before that (a weight, a creatinine) are kept, at most :data:`PENDING_PER_CODE` per kind
    and code, and handed to it when it starts.
    """

    def __init__(
        self,
        patient_id: str,
        *,
        vitals: VitalsComponent | None = None,
        registry: ComponentRegistry | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.patient_id = patient_id
        self.vitals = vitals or VitalsComponent(patient_id)
        self.registry = registry
        self.settings: Mapping[str, Any] = settings or {}
        self.components: dict[str, Component] = {}
        self.patient: Patient | None = None  # the latest Patient record (sex, birth date for the components)
        self._pending: dict[str, list[Record]] = {}
        self._other_specs = [] if registry is None else [s for s in registry.specs() if s.name != VitalsComponent.name]

    @property
    def twin_id(self) -> str:
        """The id snapshots are stored under."""
        return f"patient:{self.patient_id}"

    def _others(self) -> list[ComponentSpec]:
        return self._other_specs

    def observe(self, records: Sequence[Record], *, defer: bool = False) -> list[Record]:
        """Route *records* of this patient to the components; return the events and derived records they produce.

        Observations go to the vitals component as before; every record goes to the other components that consume
        it. *defer*: leave the work a component batches across patients (the glucose filter) for the runtime to
        flush for many twins at once (:meth:`TwinRuntime.process_many`); otherwise it is flushed here.
        """
        mine = [r for r in records if getattr(r, "patient_id", None) == self.patient_id]
        out: list[Record] = list(self.vitals.observe([r for r in mine if isinstance(r, Observation)]))
        others = self._others()
        if not others:
            return out
        for r in mine:
            if isinstance(r, Patient):
                self.patient = r
        for spec in others:
            wanted = [r for r in mine if spec.wants(r)]
            if not wanted:
                continue
            component = self.components.get(spec.name)
            if component is None:
                if not any(spec.starts(r) for r in wanted):
                    self._keep_pending(spec.name, [r for r in wanted if not isinstance(r, Patient)])
                    continue
                component = spec.factory(self.patient_id, self.settings)
                self.components[spec.name] = component
                wanted = [r for r in wanted if not isinstance(r, Patient)]
                patient = self._known_patient()
                if patient is not None and spec.wants(patient):
                    wanted.insert(0, patient)
                wanted = [*self._pending.pop(spec.name, []), *wanted]
            out.extend(component.observe(wanted))
        if not defer:
            out.extend(self.flush())
        return out

    def flush(self) -> list[Record]:
        """Finish the work the components deferred (see :meth:`observe`); return what it produced."""
        out: list[Record] = []
        for component in self.components.values():
            flush = getattr(component, "flush", None)
            if flush is not None:
                out.extend(flush())
        return out

    def _known_patient(self) -> Patient | None:
        """The latest Patient record seen, else the one the *settings*' ``patient_lookup`` finds (the store's)."""
        if self.patient is None:
            lookup = self.settings.get("patient_lookup")
            if lookup is not None:
                self.patient = lookup(self.patient_id)
        return self.patient

    def _keep_pending(self, name: str, records: Sequence[Record]) -> None:
        if not records:
            return
        kept = self._pending.setdefault(name, [])
        kept.extend(records)
        counts: dict[tuple[str, str], int] = {}
        keep: list[Record] = []
        for r in reversed(kept):  # the newest PENDING_PER_CODE of each kind and code
            key = (type(r).__name__, r.code.code if isinstance(r, Observation) else "")
            counts[key] = counts.get(key, 0) + 1
            if counts[key] <= PENDING_PER_CODE:
                keep.append(r)
        self._pending[name] = keep[::-1]

    def component(self, name: str) -> Component | VitalsComponent:
        """The component called *name* (a :class:`ValidationError` when this twin has none of that name)."""
        if name == VitalsComponent.name:
            return self.vitals
        try:
            return self.components[name]
        except KeyError:
            have = ", ".join([VitalsComponent.name, *self.components])
            raise ValidationError(f"patient {self.patient_id} has no {name} component (it has: {have})") from None

    def forecast(self, horizon: timedelta) -> News2Forecast | None:
        """The vitals component's NEWS2 forecast."""
        return self.vitals.forecast(horizon)

    def snapshot(self) -> bytes:
        """The twin state as JSON bytes (the vitals state, then the other components' and the kept records)."""
        state: dict[str, Any] = {"patient_id": self.patient_id, "vitals": self.vitals.state()}
        if self.components:
            state["components"] = {name: c.snapshot() for name, c in self.components.items()}
            if self.patient is not None:  # without the identity (it is kept apart in the store)
                state["patient"] = codec.encode(dataclasses.replace(self.patient, identity=None))
        if self._pending:
            state["pending"] = {
                name: [[type(r).__name__, codec.encode(r)] for r in kept] for name, kept in self._pending.items()
            }
        return json.dumps(state).encode()

    @classmethod
    def restore(
        cls,
        blob: bytes,
        *,
        vitals: VitalsComponent | None = None,
        registry: ComponentRegistry | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> PatientTwin:
        """A twin from :meth:`snapshot` bytes (optionally into a configured, empty vitals component); the other
        components are made by *registry* (a component the registry no longer has is logged and dropped)."""
        state = json.loads(blob)
        twin = cls(state["patient_id"], vitals=vitals, registry=registry, settings=settings)
        twin.vitals.load_state(state["vitals"])
        known = {s.name: s for s in twin._others()}
        for name, comp_state in state.get("components", {}).items():
            spec = known.get(name)
            if spec is None:
                log.warning("twin %s: component %r of the snapshot is not registered; dropped", twin.twin_id, name)
                continue
            component = spec.factory(twin.patient_id, twin.settings)
            component.restore(comp_state)
            twin.components[name] = component
        if state.get("patient"):
            twin.patient = codec.decode(Patient, state["patient"])
        for name, kept in state.get("pending", {}).items():
            if name in known:
                twin._pending[name] = [codec.decode(_RECORD_TYPES[kind], body) for kind, body in kept]
        return twin
