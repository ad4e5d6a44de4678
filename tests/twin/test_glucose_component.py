"""The glucose component: batched filtering equals one patient at a time; a predicted-low alert before a simulated
low (UVA/Padova adult#001 after a correction bolus) and none on a steady day; sustained-high alert; snapshots
mid-stream give the same outputs; re-identification applies at a deterministic reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from medtwin import codes
from medtwin.glucose.forecast import GlucoseForecaster
from medtwin.glucose.stream import population_posterior, update_many
from medtwin.records import Coding, Event, MedicationAdministration, Observation, Quantity, Record
from medtwin.twin import PatientTwin
from medtwin.twin.component import ComponentRegistry
from medtwin.twin.glucose_component import GlucoseComponent

T0 = datetime(2026, 2, 1, 6, tzinfo=UTC)
INSULIN = Coding(system="http://www.whocc.no/atc", code="A10AB04", display="insulin lispro")


def cgm(pid: str, minutes: int, value: float) -> Observation:
    return Observation(
        patient_id=pid,
        code=codes.GLUCOSE_INTERSTITIAL,
        effective=T0 + timedelta(minutes=minutes),
        value=Quantity(value=value, unit="mg/dL"),
        observation_id=f"{pid}-cgm-{minutes}",
    )


def trace(kind: str, n: int) -> list[float]:  # for the batched-vs-sequential check
    """A CGM trace: ``fall`` from 160 to 55 mg/dL, ``high`` at 280 mg/dL, ``flat`` at 120 mg/dL."""
    if kind == "fall":
        return [max(55.0, 160.0 - 3.5 * k) for k in range(n)]
    if kind == "high":
        return [280.0 + (k % 3) for k in range(n)]
    return [120.0 + (k % 2) for k in range(n)]


def test_update_many_equals_one_at_a_time() -> None:
    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=64)
    seq = [GlucoseForecaster(posterior, T0, particles=32, seed=s) for s in range(3)]
    bat = [GlucoseForecaster(posterior, T0, particles=32, seed=s) for s in range(3)]
    for f in (*seq, *bat):
        f.add_bolus(T0 + timedelta(minutes=20), 4.0)
        f.add_carbs(T0 + timedelta(minutes=20), 45.0)
    traces = [trace("fall", 12), trace("flat", 12), trace("high", 12)]
    for k in range(12):
        at = T0 + timedelta(minutes=5 * k + (2 if k == 7 else 0))  # an irregular gap on the way
        want = [f.update(at, traces[i][k]) for i, f in enumerate(seq)]
        got = update_many([(f, at, traces[i][k]) for i, f in enumerate(bat)])
        assert [[(e.code, e.severity) for e in w] for w in want] == [[(e.code, e.severity) for e in g] for g in got]
    for a, b in zip(seq, bat, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.weights, b.weights)
        np.testing.assert_array_equal(a.sensor_error, b.sensor_error)
        assert a.forecast().median_mg_dl == b.forecast().median_mg_dl


def test_update_many_rows_are_bit_identical_to_one_at_a_time() -> None:
    """The round's weighting, resampling, process noise and alert screen computed as rows of arrays (stream.py) give
    every bit the forecasters give alone: 14 people (falls to a low that runs the full horizon, highs, flat days,
    a basal change, meals and boluses), one with another particle count and one unscreened (the per-person paths),
    several readings of one person in a round."""
    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=64)

    def people() -> list[GlucoseForecaster]:
        fs = [GlucoseForecaster(posterior, T0, particles=48, seed=s) for s in range(12)]
        fs.append(GlucoseForecaster(posterior, T0, particles=24, seed=12))
        fs.append(GlucoseForecaster(posterior, T0, particles=48, seed=13, alert_screen=False))
        for k, f in enumerate(fs):
            if k % 3 == 0:
                f.add_bolus(T0 + timedelta(minutes=40 + k), 3.0 + k % 4)
                f.add_carbs(T0 + timedelta(minutes=40 + k), 30.0 + 5 * k)
            if k % 4 == 1:
                f.set_basal(T0 + timedelta(minutes=62.5), 1.6)
        return fs

    seq, bat = people(), people()
    kinds = ["fall", "high", "flat", "fall"]
    traces = [trace(kinds[k % 4], 40) for k in range(len(seq))]
    raised = 0
    for step in range(40):
        at = T0 + timedelta(minutes=5 * step + (3 if step % 9 == 4 else 0))
        want = [[(e.code, e.severity, e.status, dict(e.data)) for e in f.update(at, traces[k][step])]
                for k, f in enumerate(seq)]  # fmt: skip
        items = [(f, at, traces[k][step]) for k, f in enumerate(bat)]
        if step % 10 == 5:  # a second reading of two people in the same call: taken in a later round
            later = at + timedelta(minutes=2)
            want += [[(e.code, e.severity, e.status, dict(e.data)) for e in seq[k].update(later, 64.0)] for k in (0, 5)]
            items += [(bat[k], later, 64.0) for k in (0, 5)]
        got = [[(e.code, e.severity, e.status, dict(e.data)) for e in events] for events in update_many(items)]
        assert got == want
        raised += sum(len(w) for w in want)
    assert raised >= 4  # alerts were raised (and the full horizon run)
    for a, b in zip(seq, bat, strict=True):
        for name in ("x", "weights", "sensor_error", "params", "meal_state"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.rng.bit_generator.state == b.rng.bit_generator.state
        assert (a.t_min, a.alert_level, a.last_cgm_mg_dl) == (b.t_min, b.alert_level, b.last_cgm_mg_dl)


def overdose(minutes: int = 360, bolus_u: float = 12.0, pid: str = "vp") -> tuple[list[Record], list[float]]:
    """adult#001 (UVA/Padova) on its basal rate with a correction bolus of *bolus_u* U at 30 min and no meal: the
    records a twin receives (weight, basal rate, the bolus, CGM every 5 min = the simulated glucose) and the
    simulated glucose per minute."""
    from medtwin.glucose.patients import load_cohort
    from medtwin.glucose.simulation import simulate_open_loop

    cohort = load_cohort(["adult#001"])
    basal = float(cohort.basal_u_per_min[0])
    insulin = np.full(minutes, basal)
    insulin[30] += bolus_u
    bg = simulate_open_loop(cohort, np.zeros(minutes), insulin).bg_mg_dl[:, 0]
    records: list[Record] = [
        Observation(
            patient_id=pid,
            code=codes.BODY_WEIGHT,
            effective=T0,
            observation_id="w",
            value=Quantity(value=float(cohort.params["BW"][0]), unit="kg"),
        ),
        MedicationAdministration(
            administration_id="basal",
            patient_id=pid,
            medication=INSULIN,
            start=T0,
            rate=Quantity(value=basal * 60, unit="U/h"),
        ),
        MedicationAdministration(
            administration_id="bolus",
            patient_id=pid,
            medication=INSULIN,
            start=T0 + timedelta(minutes=30),
            dose=Quantity(value=bolus_u, unit="U"),
        ),
    ]
    records += [cgm(pid, m, float(bg[m])) for m in range(0, minutes, 5)]
    return records, [float(v) for v in bg]


def run_records(records: list[Record], snapshot_at: int | None = None) -> list[Event]:
    """*records* through a twin, one time at a time (the twin snapshotted and restored at the *snapshot_at*-th)."""
    settings = {"glucose_particles": 64, "glucose_reidentify": False}
    registry = ComponentRegistry.default(entry_points=False)
    twin = PatientTwin("vp", registry=registry, settings=settings)
    out: list[Record] = []
    for n, r in enumerate(records):
        if n == snapshot_at:
            twin = PatientTwin.restore(twin.snapshot(), registry=registry, settings=settings)
        out += twin.observe([r])
    return [e for e in out if isinstance(e, Event)]


def test_predicted_low_comes_before_the_low() -> None:
    records, bg = overdose()
    below = next(m for m, v in enumerate(bg) if v < 70)  # the simulated glucose does fall below 70 mg/dL
    lows = [e for e in run_records(records) if e.code == "glucose-low-predicted"]
    assert lows, "no predicted-low alert"
    lead = T0 + timedelta(minutes=below) - lows[0].time
    assert timedelta(0) < lead <= timedelta(minutes=60), lead
    assert lows[0].event_id == f"vp-glucose-low-{lows[0].severity}-{lows[0].time:%Y%m%dT%H%M%S}"


def test_no_low_alert_on_a_steady_basal_day() -> None:
    records, bg = overdose(bolus_u=0.0)
    assert min(bg) > 100
    assert not [e for e in run_records(records) if e.code == "glucose-low-predicted"]


def test_sustained_high_alert_and_its_resolution() -> None:
    twin = PatientTwin(
        "h",
        registry=ComponentRegistry.default(entry_points=False),
        settings={"glucose_particles": 32, "glucose_reidentify": False},
    )
    out: list[Record] = []
    for k in range(30):
        out += twin.observe([cgm("h", 5 * k, 280.0 + k % 3)])
    highs = [e for e in out if isinstance(e, Event) and e.code == "glucose-high-sustained"]
    assert [e.event_id for e in highs] == ["h-glucose-high-20260201T060000"]  # once, 2 h after the first high
    assert highs[0].time == T0 + timedelta(hours=2)
    glucose = twin.component("glucose")
    assert isinstance(glucose, GlucoseComponent)
    twin.observe([cgm("h", 150, 240.0)])
    assert glucose.cleared == ["h-glucose-high-20260201T060000"]


def test_snapshot_mid_stream_gives_the_same_outputs() -> None:
    records, _ = overdose()
    straight = run_records(records)
    assert straight
    for at in (5, 20, 40):
        assert run_records(records, snapshot_at=at) == straight


def test_inputs_reach_the_filter_and_what_if() -> None:
    twin = PatientTwin(
        "p",
        registry=ComponentRegistry.default(entry_points=False),
        settings={"glucose_particles": 32, "glucose_reidentify": False},
    )
    bolus = MedicationAdministration(
        administration_id="b1",
        patient_id="p",
        medication=INSULIN,
        start=T0 + timedelta(minutes=30),
        dose=Quantity(value=5, unit="U"),
    )
    twin.observe([bolus])  # before any reading: kept for the component
    twin.observe([cgm("p", 0, 150.0), cgm("p", 5, 149.0)])
    glucose = twin.component("glucose")
    assert isinstance(glucose, GlucoseComponent)
    assert glucose.forecaster is not None
    assert glucose.forecaster.bolus == [(30.0, 5.0)]
    outcome = glucose.what_if({"carbs_g": 60, "bolus_u": 6, "minutes": 180})
    assert outcome["with_bolus"]["max_mg_dl"] < outcome["without_bolus"]["max_mg_dl"]
    forecast = glucose.forecast(timedelta(minutes=90))
    assert forecast is not None
    assert forecast.horizons_min == (30, 60, 90)


def test_reidentification_applies_at_a_fixed_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new posterior is applied at the first reading 6 h after the fit started, however fast the fit ran."""
    import medtwin.twin.glucose_component as gc

    calls: list[int] = []

    def fake_update(posterior, data, *, settings):  # type: ignore[no-untyped-def]
        calls.append(int(data.cgm_t_min.size))
        return population_posterior(body_weight_kg=80, basal_u_h=1.2, draws=64, seed=7)

    monkeypatch.setattr(gc, "update", fake_update)
    twin = PatientTwin(
        "p",
        registry=ComponentRegistry.default(entry_points=False),
        settings={"glucose_particles": 16, "glucose_reidentify_days": 0.5},
    )
    for k in range(12 * 20):  # 20 h of readings
        twin.observe([cgm("p", 5 * k, 120.0 + 10 * np.sin(k / 10))])
    glucose = twin.component("glucose")
    assert isinstance(glucose, GlucoseComponent)
    assert calls == [145]  # 12 h of readings at the trigger (12 h after the first), fit once
    assert glucose.identifications == 1
    assert glucose.posterior is not None
    assert glucose.posterior.body_weight_kg == 80


def test_forgetting_applied_inputs_changes_no_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two days with meals, boluses (one entered late, one planned ahead) and basal changes: a forecaster that drops the
    inputs its state has passed (and boluses past the calculator's insulin on board) gives bit-identical filtering,
    alerts, forecasts and advice to one that keeps everything, batched and one at a time; and its lists stay short."""
    from medtwin.glucose.advise import advise_meal_bolus
    from medtwin.glucose.forecast import BOLUS_MEMORY_MIN

    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=64)

    def run(forget: bool, batched: bool) -> tuple[GlucoseForecaster, list[list[tuple[str, str | None]]], list[Any]]:
        if not forget:
            monkeypatch.setattr(GlucoseForecaster, "forget_applied_inputs", lambda self: None)
        f = GlucoseForecaster(posterior, T0, particles=32, seed=4)
        events, answers = [], []
        for k in range(2 * 288):
            at = T0 + timedelta(minutes=5 * k)
            if k % 96 == 10:  # a meal every 8 h with its bolus, and a correction bolus charted 40 min late
                f.add_carbs(at + timedelta(minutes=1.5), 50.0)
                f.add_bolus(at + timedelta(minutes=1.5), 4.0)
            if k % 96 == 30:
                f.add_bolus(at - timedelta(minutes=40), 1.0)
            if k % 96 == 60:  # a snack at the reading's own minute: the next advance takes it in
                f.add_carbs(at, 15.0)
            if k % 144 == 50:  # a temporary basal rate, then back
                f.set_basal(at + timedelta(minutes=2.5), 0.4)
                f.set_basal(at + timedelta(minutes=62.5), 1.0)
            if k == 500:  # planned ahead: a meal in 3 h
                f.add_carbs(at + timedelta(hours=3), 30.0)
            dip = k % 288 - 200  # a fall to 52 mg/dL once a day
            value = max(52.0, 150.0 - 5.0 * dip) if 0 <= dip <= 40 else 130.0 + 30.0 * np.sin(k / 25.0)
            out = update_many([(f, at, value)])[0] if batched else f.update(at, value)
            events.append([(e.code, e.severity) for e in out])
            if k % 35 == 34:  # every 175 min: some advice comes 4-6 h after a bolus
                advice = advise_meal_bolus(f, 40.0, cr_g_per_u=10.0, cf_mg_dl_per_u=40.0)
                answers.append((f.forecast().to_dict(), advice.iob_u, advice.twin.bolus_u, f.simulate_ahead(90)))
        monkeypatch.undo()
        return f, events, answers

    kept, kept_events, kept_answers = run(forget=False, batched=False)
    kept_rng = kept.rng.bit_generator.state
    assert len(kept.carbs) == 13  # the reference really held every input
    assert len(kept.basal) == 9
    assert any(kept_events)  # alerts and insulin on board were exercised
    assert any(a[1] > 0 for a in kept_answers)
    for batched in (False, True):
        trimmed, events, answers = run(forget=True, batched=batched)
        assert events == kept_events
        for a, b in zip(answers, kept_answers, strict=True):
            assert a[:3] == b[:3]
            np.testing.assert_array_equal(a[3], b[3])
        for name in ("x", "weights", "sensor_error", "params", "meal_state"):
            np.testing.assert_array_equal(getattr(trimmed, name), getattr(kept, name))
        assert trimmed.rng.bit_generator.state == kept_rng
        assert trimmed.carbs == []  # only what can still matter is kept
        assert len(trimmed.basal) == 1
        assert all(trimmed.t_min - t <= BOLUS_MEMORY_MIN + 1 for t, _ in trimmed.bolus)


def test_the_forecasts_hypo_probability_is_the_predicted_low_alerts() -> None:
    """``Forecast.hypo_probability_30min`` reckons a low as the alert does (predicted CGM: model glucose plus the
    carried sensor error), so the probability shown with a forecast is the one the alert fired on."""
    posterior = population_posterior(body_weight_kg=70, basal_u_h=1.0, draws=64)
    f = GlucoseForecaster(posterior, T0, particles=64, seed=2, alert_screen=False)
    fired = []
    for k, value in enumerate(trace("fall", 36)):
        for e in f.update(T0 + timedelta(minutes=5 * k), value):
            if e.status != "resolved":
                fired.append((e.data["probability"], e.data["threshold_mg_dl"], f.forecast().hypo_probability_30min))
    medium = [(p, shown) for p, threshold, shown in fired if threshold == 70.0]
    assert medium, "the falling trace raised no predicted-low alert"
    for p, shown in medium:
        assert shown == pytest.approx(p, abs=1e-12)


def test_an_alert_raised_and_resolved_in_one_group_is_stored_resolved(tmp_path: Any) -> None:
    """The stored outcome does not depend on how the worker grouped the readings: one group, or one per reading."""
    from medtwin.store import Store
    from medtwin.twin import TwinRuntime

    values = [max(55.0, 160.0 - 6.0 * k) for k in range(25)] + [60.0 + 8.0 * k for k in range(15)]
    readings = [cgm("g", 5 * k, v) for k, v in enumerate(values)]
    outcomes = []
    for name, groups in (("apart", [[r] for r in readings]), ("together", [readings])):
        with Store(f"sqlite:///{tmp_path}/{name}.db") as store:
            runtime = TwinRuntime(store, snapshot_every=None,
                                  settings={"glucose_particles": 32, "glucose_reidentify": False})  # fmt: skip
            for group in groups:  # a group: one transaction of the worker, one message per reading
                runtime.process_many([([r], None) for r in group])
            outcomes.append(sorted((e.event_id, e.status) for e in store.events(kind="alert")))
    apart, together = outcomes
    lows = [(i, s) for i, s in apart if "glucose-low" in i]
    assert lows
    assert all(s == "resolved" for _, s in lows)
    assert together == apart
