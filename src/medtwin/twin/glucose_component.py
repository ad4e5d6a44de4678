"""The glucose component of a patient twin: the personal glucose twin (medtwin.glucose) fed by the record.

It starts with the first CGM reading (LOINC 99504-3, glucose in interstitial fluid, the code CGM readings are
stored under; a finger-stick blood glucose 2339-0 is not a CGM reading and is not filtered) and consumes insulin
administrations (boluses, basal rates: :func:`medtwin.interop.glucose_records.is_insulin`), carbohydrate intake
(LOINC 9059-7) and body weight (29463-7).

- State: the person's posterior (the population prior, :func:`medtwin.glucose.stream.population_posterior`, until
  their own data identify it) and the particle filter over it (:class:`~medtwin.glucose.forecast.GlucoseForecaster`,
  128 particles by default).
- On each reading the filter assimilates it and runs every particle 30 minutes ahead: the predicted-low alert
  (``glucose-low-predicted``: half the particles below 70 mg/dL within 30 min; high severity below 54). The work is
  deferred to :meth:`flush` so the runtime advances every patient with a new reading in one kernel call
  (:func:`medtwin.glucose.stream.update_many`).
- Sustained high: ``glucose-high-sustained`` when every reading for :data:`HIGH_SUSTAINED` was above 250 mg/dL
  (level 2 hyperglycaemia, Battelino et al. 2019, doi:10.2337/dci19-0028; the duration is medtwin's choice); it
  resolves at the first reading at or below 250 mg/dL.
- Re-identification: once :data:`REIDENTIFY_DAYS` of readings arrived since the last identification, a fit of
  those days (:func:`medtwin.glucose.identify.update`, from the current posterior) starts in a background thread;
  the stream goes on with the old posterior. The new posterior is applied at the first reading at least
  :data:`APPLY_AFTER` after the fit started (waiting for the fit only if it is still running then), and the filter
  is rebuilt on the last 24 h; so the outputs do not depend on how fast the fit ran, and a twin restored after a
  crash gives the same alerts as one that ran through.

Event ids come from the patient, the alert and the reading time: processing readings again stores nothing twice.
"""

from __future__ import annotations

import base64
import contextlib
import math
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from medtwin import codes
from medtwin.errors import UnitError, ValidationError
from medtwin.glucose.forecast import Forecast, GlucoseForecaster
from medtwin.glucose.identify import FitSettings, Posterior, update
from medtwin.glucose.stream import population_posterior, update_many
from medtwin.glucose.therapy_data import TherapyDataBuilder
from medtwin.interop.glucose_records import CARBOHYDRATE_INTAKE, is_insulin
from medtwin.records import Event, MedicationAdministration, Observation, Quantity, Record
from medtwin.twin.component import ComponentSpec, Consumes, UnsupportedQuestionError

__all__ = [
    "APPLY_AFTER",
    "CGM_CODES",
    "GLUCOSE_SPEC",
    "HIGH_SUSTAINED",
    "REIDENTIFY_DAYS",
    "GlucoseComponent",
    "flush_glucose",
]

CGM_CODES = (codes.GLUCOSE_INTERSTITIAL,)
HIGH_MG_DL = 250.0
HIGH_SUSTAINED = timedelta(hours=2)
REIDENTIFY_DAYS = 3.0
APPLY_AFTER = timedelta(hours=6)
DEFAULT_WEIGHT_KG = 70.0  # until the record has a weight: an assumption, named in `medtwin twin show`
DEFAULT_BASAL_U_H = 1.0  # until the record has a basal rate: an assumption, named too
_KEEP = timedelta(days=7)
_REBUILD_WINDOW = timedelta(hours=24)
_RETRACTED = frozenset({"entered-in-error", "cancelled", "not-done"})

_FITS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glucose-identify")
_RESULTS: dict[str, Future[Posterior]] = {}  # fit key -> running or finished fit (this process)
_RESULTS_LOCK = threading.Lock()


def _is_cgm(record: Record) -> bool:
    return isinstance(record, Observation) and record.code.code == codes.GLUCOSE_INTERSTITIAL.code


def _is_insulin(record: Record) -> bool:
    return isinstance(record, MedicationAdministration) and is_insulin(record.medication)


class GlucoseComponent:
    """See the module docstring. *settings*: ``glucose_particles`` (128), ``glucose_reidentify`` (True),
    ``glucose_fit_settings`` (:class:`FitSettings`), ``glucose_reidentify_days`` (3)."""

    name = "glucose"

    def __init__(self, patient_id: str, settings: Mapping[str, Any] | None = None) -> None:
        settings = settings or {}
        self.patient_id = patient_id
        self.particles = int(settings.get("glucose_particles", 128))
        self.reidentify = bool(settings.get("glucose_reidentify", True))
        self.reidentify_days = float(settings.get("glucose_reidentify_days", REIDENTIFY_DAYS))
        self.fit_settings: FitSettings = settings.get("glucose_fit_settings", FitSettings())
        self.forecaster: GlucoseForecaster | None = None
        self.posterior: Posterior | None = None
        self.population: dict[str, Any] | None = None  # the population posterior's arguments, until identified
        self.weight_kg: float | None = None
        self.basal_u_h: float | None = None
        self.identified_until: datetime | None = None
        self.identifications = 0
        self.fit: dict[str, Any] | None = None  # a running re-identification: key, started, data end
        self.fit_error: str | None = None
        self.readings: list[tuple[str, float]] = []  # kept for identification (ISO time, mg/dL)
        self.boluses: list[tuple[str, float]] = []
        self.carbs: list[tuple[str, float]] = []
        self.basal: list[tuple[str, float]] = []
        self.queue: list[tuple[datetime, float, str]] = []
        self.high_since: str | None = None
        self.open_low: list[str] = []
        self.open_high: str | None = None
        self.cleared: list[str] = []
        self.last_reading: tuple[str, float] | None = None
        self.alerts_raised = 0

    # -- observe ---------------------------------------------------------------------------------------------------
    def observe(self, records: Sequence[Record]) -> list[Record]:
        """Take in inputs at once and queue readings for :meth:`flush` (or :func:`flush_glucose`)."""
        for r in sorted(records, key=_when):
            if isinstance(r, Observation):
                if r.status in _RETRACTED or not isinstance(r.value, Quantity):
                    continue
                try:
                    if _is_cgm(r):
                        self.queue.append((r.effective, _mg_dl(r.value), r.observation_id))
                    elif r.code.code == CARBOHYDRATE_INTAKE.code:
                        self._input("carbs", r.effective, codes.convert(r.value.value, r.value.unit, "g"))
                    elif r.code.code == codes.BODY_WEIGHT.code:
                        self.weight_kg = codes.convert(r.value.value, r.value.unit, "kg")
                except (UnitError, ValidationError):
                    continue  # a value that cannot be used: the store keeps it; the twin does not guess
            elif isinstance(r, MedicationAdministration) and is_insulin(r.medication) and r.status not in _RETRACTED:
                if r.rate is not None:
                    self.basal_u_h = r.rate.value
                    self._input("basal", r.start, r.rate.value)
                    if r.end is not None:
                        self._input("basal", r.end, 0.0)
                elif r.dose is not None:
                    self._input("bolus", r.start, r.dose.value)
        return []

    def _input(self, kind: str, at: datetime, value: float) -> None:
        getattr(self, "boluses" if kind == "bolus" else kind).append((at.isoformat(), float(value)))
        f = self.forecaster
        if f is None:
            return
        try:
            if kind == "bolus":
                f.add_bolus(at, value)
            elif kind == "carbs":
                f.add_carbs(at, value)
            else:
                f.set_basal(at, value)
        except ValidationError:
            pass  # outside the model's range: kept in the record, not fed to the filter

    def _posterior_state(self) -> dict[str, Any] | None:
        """The posterior's state: the arguments of the population posterior (its draws are made again from them),
        or the identified posterior whole."""
        if self.posterior is None:
            return None
        if self.population is not None and self.identifications == 0:
            return {"population": self.population}
        return self.posterior.to_dict()

    def _start(self, at: datetime) -> GlucoseForecaster:
        weight = self.weight_kg or DEFAULT_WEIGHT_KG
        basal = self.basal_u_h if self.basal_u_h and self.basal_u_h > 0 else DEFAULT_BASAL_U_H
        if self.posterior is None:
            self.population = {"body_weight_kg": float(weight), "basal_u_h": float(basal), "draws": 512, "seed": 0}
            self.posterior = population_posterior(**self.population)
        f = GlucoseForecaster(self.posterior, at, particles=self.particles, seed=1, basal_u_h=basal)
        self._feed_inputs(f, since=None)
        self.identified_until = self.identified_until or at
        return f

    def _feed_inputs(self, f: GlucoseForecaster, since: datetime | None) -> None:
        for name, add in (("boluses", f.add_bolus), ("carbs", f.add_carbs), ("basal", f.set_basal)):
            for when, value in getattr(self, name):
                t = datetime.fromisoformat(when)
                if since is None or t >= since:
                    try:
                        add(t, value)
                    except ValidationError:
                        continue

    # -- the deferred work -------------------------------------------------------------------------------------------
    def pending(self) -> list[tuple[datetime, float, str]]:
        """The readings waiting for the filter, in time order (those older than its state dropped, as late)."""
        self.queue.sort(key=lambda r: r[0])
        out, self.queue = self.queue, []
        if self.forecaster is None and out:
            self.forecaster = self._start(out[0][0])
        f = self.forecaster
        kept = []
        for at, mg, oid in out:
            if f is not None and f.started and f._minutes(at) < f.t_min:
                continue  # a late reading cannot move the filter back: it stays in the record
            if not 20.0 <= mg <= 600.0:
                continue
            kept.append((at, mg, oid))
        return kept

    def live_forecaster(self) -> GlucoseForecaster:
        """The filter (started by :meth:`pending` at the first reading)."""
        if self.forecaster is None:
            raise ValidationError(f"patient {self.patient_id}: the glucose filter has no reading yet")
        return self.forecaster

    def after(self, at: datetime, mg: float, oid: str, events: list[Event]) -> list[Record]:
        """The component's outputs for one assimilated reading (*events*: the filter's alert events)."""
        out: list[Record] = []
        self.last_reading = (at.isoformat(), mg)
        self.readings.append(self.last_reading)
        for e in events:
            if e.status == "resolved":
                self.cleared.extend(self.open_low)
                self.open_low = []
                continue
            event_id = f"{self.patient_id}-glucose-low-{e.severity}-{at.strftime('%Y%m%dT%H%M%S')}"
            self.open_low.append(event_id)
            self.alerts_raised += 1
            out.append(Event(kind="alert", code="glucose-low-predicted", time=at, patient_id=self.patient_id,
                             severity=e.severity, message=e.message, data={**e.data, "reading": oid},
                             source=f"twin:{self.patient_id}/glucose", event_id=event_id))  # fmt: skip
        out.extend(self._high(at, mg))
        self._maybe_reidentify(at)
        self._trim(at)
        return out

    def _high(self, at: datetime, mg: float) -> list[Record]:
        if mg <= HIGH_MG_DL:
            self.high_since = None
            if self.open_high is not None:
                self.cleared.append(self.open_high)
                self.open_high = None
            return []
        if self.high_since is None:
            self.high_since = at.isoformat()
        since = datetime.fromisoformat(self.high_since)
        if self.open_high is not None or at - since < HIGH_SUSTAINED:
            return []
        self.open_high = f"{self.patient_id}-glucose-high-{since.strftime('%Y%m%dT%H%M%S')}"
        self.alerts_raised += 1
        hours = (at - since) / timedelta(hours=1)
        return [Event(kind="alert", code="glucose-high-sustained", time=at, patient_id=self.patient_id,
                      severity="medium", source=f"twin:{self.patient_id}/glucose", event_id=self.open_high,
                      message=f"glucose above {HIGH_MG_DL:.0f} mg/dL for {hours:.1f} h (since {since.isoformat()})",
                      data={"since": since.isoformat(), "threshold_mg_dl": HIGH_MG_DL,
                            "latest_mg_dl": mg})]  # fmt: skip

    def flush(self) -> list[Record]:
        """Assimilate the queued readings (one at a time: :func:`flush_glucose` does many patients at once)."""
        return flush_glucose([self])

    # -- re-identification ------------------------------------------------------------------------------------------
    def _fit_key(self) -> str:
        assert self.fit is not None
        return f"{self.patient_id}|{self.fit['start']}|{self.fit['end']}|{self.identifications}"

    def _maybe_reidentify(self, at: datetime) -> None:
        if not self.reidentify or self.identified_until is None:
            return
        if self.fit is not None:
            if at - datetime.fromisoformat(self.fit["started"]) >= APPLY_AFTER:
                self._apply_fit(at)
            return
        days = (at - self.identified_until) / timedelta(days=1)
        if days < self.reidentify_days:
            return
        self.fit = {"started": at.isoformat(), "start": self.identified_until.isoformat(), "end": at.isoformat()}
        try:
            self._submit_fit()
        except ValidationError as exc:  # the days cannot be fitted (too few readings): say so, try on later days
            self.fit_error = str(exc)[:500]
            self.identified_until = at
            self.fit = None

    def _window_data(self, start: datetime, end: datetime) -> Any:
        b = TherapyDataBuilder(f"twin {self.patient_id} glucose record")
        for when, mg in self.readings:
            t = datetime.fromisoformat(when)
            if start <= t <= end:
                b.add_cgm(t, mg, f"reading {when}")
        in_force = self.basal_u_h if self.basal_u_h and self.basal_u_h > 0 else DEFAULT_BASAL_U_H
        for when, value in self.basal:  # the rate in force at the window's start (else the one assumed)
            if datetime.fromisoformat(when) <= start:
                in_force = value
        b.add_basal(start, in_force, "basal rate in force at the start")
        for name, add in (("boluses", b.add_bolus), ("carbs", b.add_carbs), ("basal", b.add_basal)):
            for when, value in getattr(self, name):
                t = datetime.fromisoformat(when)
                if start < t <= end or (name != "basal" and t == start):
                    add(t, value, f"{name} {when}")
        return b.build(self.weight_kg or DEFAULT_WEIGHT_KG)

    def _submit_fit(self) -> Future[Posterior]:
        assert self.fit is not None
        assert self.posterior is not None
        key = self._fit_key()
        with _RESULTS_LOCK:
            future = _RESULTS.get(key)
            if future is None:
                data = self._window_data(
                    datetime.fromisoformat(self.fit["start"]), datetime.fromisoformat(self.fit["end"])
                )
                settings = self.fit_settings
                future = _FITS.submit(update, self.posterior, data, settings=settings)
                _RESULTS[key] = future
        return future

    def _apply_fit(self, at: datetime) -> None:
        key = self._fit_key()
        try:
            future = self._submit_fit()  # the same fit (a restored twin starts it again: same data, same seed)
            posterior = future.result()  # waits only if the fit is slower than APPLY_AFTER of data time
        except Exception as exc:  # not identified (did not converge): keep the posterior, say why in the state
            self.fit_error = f"{type(exc).__name__}: {exc}"[:500]
            posterior = None
        finally:
            with _RESULTS_LOCK:
                _RESULTS.pop(key, None)
        assert self.fit is not None
        self.identified_until = datetime.fromisoformat(self.fit["end"])
        self.fit = None
        self.identifications += 1
        if posterior is None:
            return
        self.posterior = posterior
        start = at - _REBUILD_WINDOW
        try:
            data = self._window_data(start, at)
        except ValidationError:
            return
        self.forecaster = GlucoseForecaster.from_data(posterior, data, particles=self.particles, seed=1)

    def _trim(self, at: datetime) -> None:
        if len(self.readings) % 288:
            return
        horizon = (at - _KEEP).isoformat()
        for name in ("readings", "boluses", "carbs", "basal"):
            kept = getattr(self, name)
            setattr(self, name, [e for e in kept if e[0] >= horizon])

    # -- the rest of the contract -------------------------------------------------------------------------------------
    def forecast(self, horizon: timedelta) -> Forecast | None:
        """CGM forecast at 30 min, 60 min and *horizon* from the last reading (None before any reading)."""
        if self.forecaster is None or not self.forecaster.started:
            return None
        minutes = max(1, min(24 * 60, int(horizon.total_seconds() // 60)))
        return self.forecaster.forecast(sorted({30, 60, minutes}))

    def what_if(self, scenario: Mapping[str, Any]) -> dict[str, Any]:
        """The next hours with a bolus (U) and/or carbohydrate (g) now: ``{"bolus_u", "carbs_g", "minutes"}``."""
        f = self.forecaster
        if f is None or not f.started:
            raise UnsupportedQuestionError(f"patient {self.patient_id}: no CGM reading yet")
        minutes = int(scenario.get("minutes", 180))
        bolus = float(scenario.get("bolus_u", 0.0))
        carbs = float(scenario.get("carbs_g", 0.0))
        if not 1 <= minutes <= 720 or not 0 <= bolus <= 50 or not 0 <= carbs <= 400:
            raise ValidationError("what-if: minutes 1-720, bolus_u 0-50, carbs_g 0-400")
        bg = f.simulate_ahead(minutes, boluses_u=[0.0, bolus], carbs_g=carbs)
        w = f.weights

        def summary(k: int) -> dict[str, float]:
            paths = bg[:, k, :]
            mean = paths @ w
            return {"min_mg_dl": float(np.min(mean)), "max_mg_dl": float(np.max(mean)),
                    "end_mg_dl": float(mean[-1]),
                    "p_below_70": float(np.sum(w[np.min(paths, axis=0) < 70.0]))}  # fmt: skip

        return {"minutes": minutes, "carbs_g": carbs, "bolus_u": bolus, "without_bolus": summary(0),
                "with_bolus": summary(1)}  # fmt: skip

    def recommend(self, goal: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """A meal bolus for ``{"carbs_g", "cr_g_per_u", "cf_mg_dl_per_u"}`` (medtwin.glucose.advise)."""
        from medtwin.glucose.advise import advise_meal_bolus

        f = self.forecaster
        if not goal or f is None or not f.started:
            return None
        try:
            advice = advise_meal_bolus(f, float(goal["carbs_g"]), cr_g_per_u=float(goal["cr_g_per_u"]),
                                       cf_mg_dl_per_u=float(goal["cf_mg_dl_per_u"]),
                                       target_mg_dl=float(goal.get("target_mg_dl", 110.0)))  # fmt: skip
        except KeyError as exc:
            raise ValidationError(
                f"glucose advice needs {exc.args[0]!r} (carbs_g, cr_g_per_u, cf_mg_dl_per_u)"
            ) from None
        return advice.to_dict()

    def summary(self) -> dict[str, Any]:
        """What ``medtwin twin show`` prints of this component."""
        assumptions = []
        if self.weight_kg is None:
            assumptions.append(f"body weight {DEFAULT_WEIGHT_KG:g} kg (none in the record)")
        if self.basal_u_h is None:
            assumptions.append(f"basal {DEFAULT_BASAL_U_H:g} U/h (none in the record)")
        if self.identifications == 0:
            assumptions.append("population prior (not identified from this person's data yet)")
        return {"last_reading": self.last_reading, "identifications": self.identifications,
                "identified_until": None if self.identified_until is None else self.identified_until.isoformat(),
                "fit_running": self.fit, "open_alerts": [*self.open_low, *([self.open_high] if self.open_high else [])],
                "assumptions": assumptions}  # fmt: skip

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state (posterior, filter, kept days, alert state)."""
        return {
            "posterior": self._posterior_state(),
            "forecaster": None if self.forecaster is None else _packed(self.forecaster.state()),
            "weight_kg": self.weight_kg, "basal_u_h": self.basal_u_h,
            "identified_until": None if self.identified_until is None else self.identified_until.isoformat(),
            "identifications": self.identifications, "fit": self.fit, "readings": self.readings,
            "boluses": self.boluses, "carbs": self.carbs, "basal": self.basal,
            "queue": [[t.isoformat(), mg, oid] for t, mg, oid in self.queue], "high_since": self.high_since,
            "open_low": self.open_low, "open_high": self.open_high, "last_reading": self.last_reading,
            "alerts_raised": self.alerts_raised,
        }  # fmt: skip

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load :meth:`snapshot` state (a re-identification that was running starts again)."""
        posterior = state.get("posterior")
        if posterior is not None and "population" in posterior:
            self.population = dict(posterior["population"])
            self.posterior = population_posterior(**self.population)
        elif posterior is not None:
            self.posterior = Posterior.from_dict(posterior)
        if state.get("forecaster") is not None and self.posterior is not None:
            self.forecaster = GlucoseForecaster.restore(self.posterior, _unpacked(state["forecaster"]))
        self.weight_kg = state.get("weight_kg")
        self.basal_u_h = state.get("basal_u_h")
        until = state.get("identified_until")
        self.identified_until = None if until is None else datetime.fromisoformat(until)
        self.identifications = int(state.get("identifications", 0))
        self.fit = state.get("fit")
        for name in ("readings", "boluses", "carbs", "basal"):
            setattr(self, name, [(str(t), float(v)) for t, v in state.get(name, [])])
        self.queue = [(datetime.fromisoformat(t), float(mg), str(oid)) for t, mg, oid in state.get("queue", [])]
        self.high_since = state.get("high_since")
        self.open_low = list(state.get("open_low", []))
        self.open_high = state.get("open_high")
        last = state.get("last_reading")
        self.last_reading = None if last is None else (str(last[0]), float(last[1]))
        self.alerts_raised = int(state.get("alerts_raised", 0))
        if self.fit is not None and self.reidentify:
            with contextlib.suppress(ValidationError):  # it fails again when applied, and is recorded then
                self._submit_fit()


def _when(r: Record) -> datetime:
    if isinstance(r, Observation):
        return r.effective
    if isinstance(r, MedicationAdministration):
        return r.start
    return _EPOCH


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


_PACKED = ("params", "x", "meal_state", "weights", "sensor_error")


def _packed(state: dict[str, Any]) -> dict[str, Any]:
    """The filter state with its particle arrays as base64 float64 (exact, and a third of the JSON numbers' size)."""
    out = dict(state)
    for key in _PACKED:
        array = np.asarray(state[key], dtype="<f8")
        out[key] = {"shape": list(array.shape), "f8": base64.b64encode(array.tobytes()).decode()}
    return out


def _unpacked(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    for key in _PACKED:
        value = state[key]
        if isinstance(value, dict):
            out[key] = np.frombuffer(base64.b64decode(value["f8"]), dtype="<f8").reshape(value["shape"]).tolist()
    return out


def _mg_dl(q: Quantity) -> float:
    value = codes.convert(q.value, q.unit, "mg/dL", analyte="glucose")
    if not math.isfinite(value):
        raise ValidationError("not a finite glucose value")
    return value


def flush_glucose(components: Sequence[Any]) -> list[Record]:
    """Assimilate the queued readings of every component in *components*: the filters of all patients with a
    reading advance in one batch per round (:func:`medtwin.glucose.stream.update_many`)."""
    work: list[tuple[GlucoseComponent, list[tuple[datetime, float, str]]]] = []
    for c in components:
        readings = c.pending()
        if readings:
            work.append((c, readings))
    out: list[Record] = []
    depth = 0
    while True:
        batch = [(c, readings[depth]) for c, readings in work if depth < len(readings)]
        if not batch:
            return out
        results = update_many([(c.live_forecaster(), at, mg) for c, (at, mg, _) in batch])
        for (c, (at, mg, oid)), events in zip(batch, results, strict=True):
            out.extend(c.after(at, mg, oid, events))
        depth += 1


GLUCOSE_SPEC = ComponentSpec(
    name="glucose",
    consumes=(
        Consumes.observations(CGM_CODES, "CGM glucose"),
        Consumes.observations([CARBOHYDRATE_INTAKE, codes.BODY_WEIGHT], "carbohydrate intake, body weight"),
        Consumes("MedicationAdministration", test=_is_insulin, description="insulin"),
    ),
    factory=lambda patient_id, settings: GlucoseComponent(patient_id, settings),
    starts_on=_is_cgm,
    flush_many=flush_glucose,
    summary="glucose twin: particle filter on each CGM reading, predicted-low and sustained-high alerts",
)
