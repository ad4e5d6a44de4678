"""The monitoring hot paths give exactly what the straightforward implementations they replaced gave.

The reference implementations below are the code before the runtime was optimised (TrendHistory as a plain window
scan, LatestVitals.update through ``normalise_to_loinc``, LatestVitals.snapshot, the NEWS2 Observation built
component by component; AlertTracker.evaluate against evaluate_rules then AlertTracker.update); hypothesis drives
both with the same inputs, late and equal times, odd codes and units included.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtwin import codes
from medtwin.errors import MedtwinError
from medtwin.monitoring import (
    AlertRules,
    AlertTracker,
    LatestVitals,
    TrendHistory,
    VitalSigns,
    evaluate_rules,
    news2_score,
    qsofa_score,
)
from medtwin.monitoring.vitals import _CODE_PARAMETER, PARAMETER_CODES, _acvpu, news2_observation
from medtwin.records import Coding, Event, Observation, ObservationComponent, Quantity

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- references ------------------------------------------------------------------------------------------------
class ReferenceHistory:
    """TrendHistory before the monotonic queues: every query scans the window."""

    def __init__(self, keep: timedelta, *, max_points: int = 2048) -> None:
        self.keep = keep
        self.max_points = max_points
        self._points: deque[tuple[datetime, float]] = deque()

    def add(self, when: datetime, value: float) -> None:
        if self._points and when < self._points[-1][0]:
            if self._points[-1][0] - when > self.keep:
                return
            self._points.insert(bisect.bisect_right(self._points, (when, value)), (when, value))
        else:
            self._points.append((when, value))
        newest = self._points[-1][0]
        while self._points and (newest - self._points[0][0] > self.keep or len(self._points) > self.max_points):
            self._points.popleft()

    def within(self, at: datetime, window: timedelta) -> list[tuple[datetime, float]]:
        return [(t, v) for t, v in self._points if at - window <= t <= at]


def reference_update(latest: dict[str, tuple[datetime, float | str, str]], observation: Observation) -> str | None:
    if observation.status in ("entered-in-error", "cancelled"):
        return None
    code = observation.code.code if observation.code.system == codes.LOINC else None
    if code is None:
        loinc = codes.normalise_to_loinc(observation.code)
        code = loinc.code if loinc.system == codes.LOINC else None
    value: float | str
    if code == codes.LEVEL_OF_CONSCIOUSNESS.code:
        letter = _acvpu(observation.value)
        if letter is None:
            return None
        parameter, value = "consciousness", letter
    elif code in _CODE_PARAMETER and isinstance(observation.value, Quantity):
        parameter, unit = _CODE_PARAMETER[code]
        q = observation.value
        value = q.value if q.unit == unit else codes.convert(q.value, q.unit, unit)
    else:
        return None
    current = latest.get(parameter)
    if current is None or observation.effective >= current[0]:
        latest[parameter] = (observation.effective, value, observation.observation_id)
    return parameter


def reference_snapshot(
    latest: dict[str, tuple[datetime, float | str, str]], at: datetime, freshness: timedelta
) -> VitalSigns:
    at = at.astimezone(UTC)
    fresh: dict[str, float | str] = {}
    ids: list[str] = []
    stale: list[str] = []
    for parameter, (when, value, obs_id) in latest.items():
        if when > at:
            continue
        if at - when <= freshness:
            fresh[parameter] = value
            ids.append(obs_id)
        else:
            stale.append(parameter)
    on_oxygen: bool | None = None
    if "oxygen_flow" in fresh or "fio2" in fresh:
        on_oxygen = float(fresh.get("oxygen_flow", 0.0)) > 0.0 or float(fresh.get("fio2", 21.0)) > 21.0

    def num(name: str) -> float | None:
        value = fresh.get(name)
        return None if value is None else float(value)

    return VitalSigns(
        at=at,
        respiration_rate_per_min=num("respiration_rate"),
        spo2_percent=num("spo2"),
        on_oxygen=on_oxygen,
        systolic_bp_mm_hg=num("systolic_bp"),
        pulse_per_min=num("pulse"),
        consciousness=str(fresh["consciousness"]) if "consciousness" in fresh else None,
        temperature_c=num("temperature"),
        observation_ids=tuple(sorted(ids)),
        stale=tuple(sorted(stale)),
    )


# -- TrendHistory ----------------------------------------------------------------------------------------------
minutes = st.integers(min_value=0, max_value=400)
values = st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 88.0, 91.5, 94.0, 97.0, 100.0])


@SETTINGS
@given(
    adds=st.lists(st.tuples(minutes, values), max_size=80),
    keep_min=st.sampled_from([30, 60, 360]),
    max_points=st.sampled_from([3, 10, 2048]),
    queries=st.lists(
        st.tuples(st.integers(min_value=-30, max_value=450), st.sampled_from([0, 10, 60, 360])), max_size=8
    ),
)
def test_trend_history_queries_match_a_window_scan(
    adds: list[tuple[int, float]], keep_min: int, max_points: int, queries: list[tuple[int, int]]
) -> None:
    keep = timedelta(minutes=keep_min)
    fast, ref = TrendHistory(keep, max_points=max_points), ReferenceHistory(keep, max_points=max_points)
    for i, (m, v) in enumerate(adds):
        fast.add(T0 + timedelta(minutes=m), v)
        ref.add(T0 + timedelta(minutes=m), v)
        assert fast.points() == list(ref._points)
        for qm, wm in [*queries, (m, keep_min), (max(x for x, _ in adds[: i + 1]), 60)]:
            at, window = T0 + timedelta(minutes=qm), timedelta(minutes=wm)
            scan = ref.within(at, window)
            assert fast.within(at, window) == scan
            assert fast.lowest(at, window) == min(scan, key=lambda p: (p[1], p[0]), default=None)
            assert fast.highest(at, window) == max(scan, key=lambda p: (p[1], p[0]), default=None)
            assert fast.newest(at, window, 2) == scan[-2:]


def test_trend_history_ties_go_to_the_earliest_low_and_the_latest_high() -> None:
    h = TrendHistory(timedelta(hours=1))
    for m, v in [(0, 2.0), (10, 1.0), (20, 3.0), (30, 1.0), (40, 3.0), (50, 2.0)]:
        h.add(T0 + timedelta(minutes=m), v)
    at = T0 + timedelta(minutes=50)
    assert h.lowest(at, timedelta(hours=1)) == (T0 + timedelta(minutes=10), 1.0)
    assert h.lowest(at, timedelta(minutes=25)) == (T0 + timedelta(minutes=30), 1.0)
    assert h.highest(at, timedelta(hours=1)) == (T0 + timedelta(minutes=40), 3.0)
    assert h.lowest(at, timedelta(0)) == (at, 2.0)
    assert h.newest(at, timedelta(minutes=15), 5) == [(T0 + timedelta(minutes=40), 3.0), (at, 2.0)]
    assert TrendHistory(timedelta(hours=1)).lowest(at, timedelta(hours=1)) is None


# -- LatestVitals ----------------------------------------------------------------------------------------------
vital_codes = st.sampled_from(
    [
        *(Coding(system=codes.LOINC, code=c) for c in _CODE_PARAMETER),
        codes.LEVEL_OF_CONSCIOUSNESS,
        codes.DIASTOLIC_BP,
        codes.CREATININE_SERUM,
        *(Coding(system=codes.MDC, code=c) for c in codes.MDC_TO_LOINC),
        Coding(system=codes.MDC, code="999999"),
        Coding(system=codes.SNOMED, code="8867-4"),
        Coding(system="http://example.org/local", code="HR"),
    ]
)
quantities = st.builds(
    lambda v, u: Quantity(value=v, unit=u),
    st.one_of(st.integers(min_value=0, max_value=250), st.floats(min_value=0, max_value=250, allow_nan=False)),
    st.sampled_from(["/min", "%", "mm[Hg]", "Cel", "[degF]", "L/min", "1", "kg"]),
)
obs_values = st.one_of(
    quantities,
    st.sampled_from([*codes.ACVPU.values(), Coding(system=codes.SNOMED, code="c"), Coding(system="x", code="v")]),
    st.sampled_from(["A", " alert", "Voice", "pain", "unresponsive", "?", "", "12"]),
    st.none(),
)
observations = st.builds(
    lambda code, value, m, status, n: Observation(
        patient_id="p1",
        code=code,
        effective=T0 + timedelta(minutes=m),
        value=value,
        status=status,
        observation_id=f"o{n}",
    ),
    vital_codes,
    obs_values,
    st.integers(min_value=0, max_value=180),
    st.sampled_from(["final", "final", "preliminary", "amended", "entered-in-error", "cancelled"]),
    st.integers(min_value=0, max_value=10**6),
)


def _outcome(call: Callable[[], object]) -> object:
    """What *call* returns, or the type of the medtwin error it raises."""
    try:
        return call()
    except MedtwinError as exc:
        return type(exc)


@SETTINGS
@given(
    feed=st.lists(observations, max_size=40),
    at_min=st.lists(st.integers(min_value=0, max_value=240), min_size=1, max_size=4),
    fresh_min=st.sampled_from([1, 30, 60, 120]),
)
def test_latest_vitals_match_the_reference(feed: list[Observation], at_min: list[int], fresh_min: int) -> None:
    fast = LatestVitals()
    ref: dict[str, tuple[datetime, float | str, str]] = {}
    for o in feed:
        assert _outcome(partial(fast.update, o)) == _outcome(partial(reference_update, ref, o))
    assert fast.state() == {k: [t.isoformat(), v, i] for k, (t, v, i) in ref.items()}
    freshness = timedelta(minutes=fresh_min)
    for m in at_min:
        at = T0 + timedelta(minutes=m)
        got = fast.snapshot(at, freshness=freshness)
        want = reference_snapshot(ref, at, freshness)
        assert got == want
        for scale in (1, 2):
            assert _outcome(partial(got.news2, spo2_scale=scale)) == _outcome(partial(want.news2, spo2_scale=scale))


def test_snapshot_converts_other_time_zones_and_refuses_naive_times() -> None:
    latest = LatestVitals.from_observations(
        [Observation(patient_id="p1", code=codes.HEART_RATE, effective=T0, value=Quantity(value=80, unit="/min"))]
    )
    plus2 = (T0 + timedelta(minutes=5)).astimezone(timezone(timedelta(hours=2)))
    snap = latest.snapshot(plus2)
    assert snap.at == T0 + timedelta(minutes=5)
    assert snap.at.tzinfo is UTC
    assert snap.pulse_per_min == 80.0
    with pytest.raises(MedtwinError, match="time zone"):
        latest.snapshot(datetime(2026, 1, 1, 8, 5))


# -- the NEWS2 Observation -------------------------------------------------------------------------------------
score_inputs = st.fixed_dictionaries(
    {},
    optional={
        "respiration_rate_per_min": st.integers(min_value=4, max_value=40),
        "spo2_percent": st.integers(min_value=70, max_value=100),
        "on_oxygen": st.booleans(),
        "systolic_bp_mm_hg": st.integers(min_value=60, max_value=240),
        "pulse_per_min": st.integers(min_value=30, max_value=160),
        "consciousness": st.sampled_from(list("ACVPU")),
        "temperature_c": st.floats(min_value=33.0, max_value=41.0),
    },
)


@SETTINGS
@given(inputs=score_inputs, ids=st.lists(st.text(min_size=1, max_size=5), max_size=7))
def test_news2_observation_components_match_the_reference(inputs: dict[str, float], ids: list[str]) -> None:
    result = news2_score(**inputs)  # type: ignore[arg-type]
    vitals = VitalSigns(at=T0, observation_ids=tuple(ids))
    record = news2_observation(result, vitals, patient_id="p1")
    assert record.components == tuple(
        ObservationComponent(
            code=PARAMETER_CODES[name],
            value=None if points is None else Quantity(value=float(points), unit="{score}"),
        )
        for name, points in result.scores.items()
    )
    assert record.value == Quantity(value=float(result.total), unit="{score}")
    assert record.derived_from == tuple(ids)
    assert record.status == ("final" if result.complete else "preliminary")


# -- AlertTracker.evaluate -------------------------------------------------------------------------------------
assessments = st.lists(
    st.tuples(score_inputs, st.integers(min_value=0, max_value=40), st.sampled_from([None, 85.0, 90.0, 94.0, 99.0])),
    min_size=1,
    max_size=30,
)


def _comparable(events: list[Event], ids: dict[str, int]) -> list[tuple[object, ...]]:
    """Events with their random ids replaced by their order of appearance (an escalation keeps its alert's id)."""
    out: list[tuple[object, ...]] = []
    for e in events:
        label = ids.setdefault(e.event_id, len(ids))
        out.append((label, e.kind, e.code, e.time, e.severity, e.status, e.message, e.patient_id, e.source, e.data))
    return out


@SETTINGS
@given(steps=assessments, rules=st.sampled_from([AlertRules(), AlertRules(min_level="medium", qsofa=False)]))
def test_tracker_evaluate_matches_evaluate_rules_then_update(
    steps: list[tuple[dict[str, float], int, float | None]], rules: AlertRules
) -> None:
    fast = AlertTracker(clear_after=2, clear_after_time=timedelta(minutes=10))
    slow = AlertTracker(clear_after=2, clear_after_time=timedelta(minutes=10))
    news2_history, spo2_history = TrendHistory(timedelta(hours=6)), TrendHistory(timedelta(hours=1))
    fast_ids: dict[str, int] = {}
    slow_ids: dict[str, int] = {}
    at = T0
    for inputs, step_min, spo2 in steps:
        at += timedelta(minutes=step_min)
        result = news2_score(**inputs)  # type: ignore[arg-type]
        news2_history.add(at, float(result.total))
        if spo2 is not None:
            spo2_history.add(at, spo2)
        qsofa = qsofa_score(
            respiration_rate_per_min=inputs.get("respiration_rate_per_min"),
            systolic_bp_mm_hg=inputs.get("systolic_bp_mm_hg"),
            acvpu=inputs.get("consciousness"),  # type: ignore[arg-type]
        )
        kw = {"at": at, "news2": result, "news2_history": news2_history, "spo2_history": spo2_history, "qsofa": qsofa}
        fired, cleared = fast.evaluate(**kw, rules=rules, patient_id="p1")  # type: ignore[arg-type]
        signals = evaluate_rules(**kw, rules=rules)  # type: ignore[arg-type]
        want_fired, want_cleared = slow.update(signals, patient_id="p1", at=at)
        assert _comparable(fired, fast_ids) == _comparable(want_fired, slow_ids)
        assert [fast_ids[i] for i in cleared] == [slow_ids[i] for i in want_cleared]
