"""The latest vital signs of one patient, within a freshness window, and the NEWS2 Observation built from them.

A score combines only values observed within ``freshness`` of the scoring time: an older value is reported as
stale and the parameter as missing, never carried forward silently. Observations are expected in medtwin's
canonical units (the HL7/FHIR edges convert on ingest); a value in another unit is converted with
:func:`medtwin.codes.convert`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from medtwin import codes
from medtwin.errors import ValidationError
from medtwin.monitoring.news2 import News2Result, news2_score
from medtwin.records import Coding, Observation, ObservationComponent, Provenance, Quantity, utc

__all__ = [
    "DEFAULT_FRESHNESS",
    "PARAMETER_CODES",
    "LatestVitals",
    "VitalSigns",
    "news2_observation",
]

DEFAULT_FRESHNESS = timedelta(hours=1)
_NO_TIME = timedelta(0)

# NEWS2 parameter -> the LOINC coding of the component in the NEWS2 Observation.
PARAMETER_CODES: dict[str, Coding] = {
    "respiration_rate": codes.RESPIRATORY_RATE,
    "spo2": codes.OXYGEN_SATURATION_PULSE_OX,
    "air_or_oxygen": codes.INHALED_OXYGEN_FLOW,
    "systolic_bp": codes.SYSTOLIC_BP,
    "pulse": codes.HEART_RATE,
    "consciousness": codes.LEVEL_OF_CONSCIOUSNESS,
    "temperature": codes.BODY_TEMPERATURE,
}

# LOINC code -> (parameter, unit); the first listed code of a parameter wins over later ones at the same time.
_CODE_PARAMETER: dict[str, tuple[str, str]] = {
    codes.RESPIRATORY_RATE.code: ("respiration_rate", "/min"),
    codes.OXYGEN_SATURATION_PULSE_OX.code: ("spo2", "%"),
    codes.OXYGEN_SATURATION.code: ("spo2", "%"),
    codes.SYSTOLIC_BP.code: ("systolic_bp", "mm[Hg]"),
    codes.HEART_RATE.code: ("pulse", "/min"),
    codes.PULSE_RATE_OXIMETRY.code: ("pulse", "/min"),
    codes.BODY_TEMPERATURE.code: ("temperature", "Cel"),
    codes.INHALED_OXYGEN_FLOW.code: ("oxygen_flow", "L/min"),
    codes.INHALED_OXYGEN_CONCENTRATION.code: ("fio2", "%"),
}
_ACVPU_BY_CODE = {c.code: letter for letter, c in codes.ACVPU.items()}


def _dispatch_table() -> dict[str, dict[str, tuple[str, str | None]]]:
    """system -> code -> (parameter, canonical unit; None for consciousness): LOINC codes and the MDC codes that
    :func:`medtwin.codes.normalise_to_loinc` maps to them, so :meth:`LatestVitals.update` needs one lookup."""
    loinc: dict[str, tuple[str, str | None]] = dict(_CODE_PARAMETER)
    loinc[codes.LEVEL_OF_CONSCIOUSNESS.code] = ("consciousness", None)
    mdc = {
        code: loinc[coding.code]
        for code, coding in codes.MDC_TO_LOINC.items()
        if coding.system == codes.LOINC and coding.code in loinc
    }
    return {codes.LOINC: loinc, codes.MDC: mdc}


_DISPATCH = _dispatch_table()
_IGNORED_STATUSES = ("entered-in-error", "cancelled")


@dataclass(frozen=True, slots=True)
class VitalSigns:
    """One set of vital signs at time *at*: each value is the latest observed within the freshness window."""

    at: datetime
    respiration_rate_per_min: float | None = None
    spo2_percent: float | None = None
    on_oxygen: bool | None = None
    systolic_bp_mm_hg: float | None = None
    pulse_per_min: float | None = None
    consciousness: str | None = None
    temperature_c: float | None = None
    observation_ids: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()

    def news2(self, *, spo2_scale: int = 1) -> News2Result:
        """The NEWS2 result for these vitals."""
        return news2_score(
            respiration_rate_per_min=self.respiration_rate_per_min,
            spo2_percent=self.spo2_percent,
            on_oxygen=self.on_oxygen,
            systolic_bp_mm_hg=self.systolic_bp_mm_hg,
            pulse_per_min=self.pulse_per_min,
            consciousness=self.consciousness,
            temperature_c=self.temperature_c,
            spo2_scale=2 if spo2_scale == 2 else 1,
        )


def _acvpu(value: object) -> str | None:
    if isinstance(value, Coding):
        return _ACVPU_BY_CODE.get(value.code) or (value.code.upper() if value.code.upper() in "ACVPU" else None)
    if isinstance(value, str) and value.strip()[:1].upper() in ("A", "C", "V", "P", "U"):
        return value.strip()[:1].upper()
    return None


class LatestVitals:
    """The latest value of each vital sign of one patient (mutable; feed it with :meth:`update`)."""

    __slots__ = ("_latest",)

    def __init__(self) -> None:
        self._latest: dict[str, tuple[datetime, float | str, str]] = {}

    def update(self, observation: Observation) -> str | None:
        """Take *observation* into account; returns the parameter it updated, or None when it is not a vital.

        Out-of-order arrivals do not overwrite a newer value. Entered-in-error results are ignored.
        """
        if observation.status in _IGNORED_STATUSES:
            return None
        coding = observation.code
        by_code = _DISPATCH.get(coding.system)
        target = None if by_code is None else by_code.get(coding.code)
        if target is None:
            return None
        parameter, unit = target
        raw = observation.value
        value: float | str
        if unit is None:
            letter = _acvpu(raw)
            if letter is None:
                return None
            value = letter
        elif isinstance(raw, Quantity):
            value = raw.value if raw.unit == unit else codes.convert(raw.value, raw.unit, unit)
        else:
            return None
        effective = observation.effective
        current = self._latest.get(parameter)
        if current is None or effective >= current[0]:
            self._latest[parameter] = (effective, value, observation.observation_id)
        return parameter

    def latest(self, parameter: str) -> tuple[datetime, float | str] | None:
        """(time, value) of the latest value of *parameter*, or None."""
        entry = self._latest.get(parameter)
        return None if entry is None else (entry[0], entry[1])

    def snapshot(self, at: datetime, *, freshness: timedelta = DEFAULT_FRESHNESS) -> VitalSigns:
        """The vital signs at *at*: values observed in ``[at - freshness, at]``; older ones are listed as stale."""
        if type(at) is not datetime or at.tzinfo is not UTC:
            at = utc(at, field_name="LatestVitals.snapshot(at)")
        if freshness <= _NO_TIME:
            raise ValidationError(f"freshness window must be positive, got {freshness}")
        fresh: dict[str, float | str] = {}
        ids: list[str] = []
        stale: list[str] = []
        for parameter, (when, value, obs_id) in self._latest.items():
            if when > at:
                continue
            if at - when <= freshness:
                fresh[parameter] = value
                ids.append(obs_id)
            else:
                stale.append(parameter)
        get = fresh.get
        on_oxygen: bool | None = None
        if "oxygen_flow" in fresh or "fio2" in fresh:
            on_oxygen = float(get("oxygen_flow", 0.0)) > 0.0 or float(get("fio2", 21.0)) > 21.0
        ids.sort()
        stale.sort()
        rr, spo2, sbp, pulse, temp = (
            get("respiration_rate"),
            get("spo2"),
            get("systolic_bp"),
            get("pulse"),
            get("temperature"),
        )
        consciousness = get("consciousness")
        return VitalSigns(
            at=at,
            respiration_rate_per_min=None if rr is None else float(rr),
            spo2_percent=None if spo2 is None else float(spo2),
            on_oxygen=on_oxygen,
            systolic_bp_mm_hg=None if sbp is None else float(sbp),
            pulse_per_min=None if pulse is None else float(pulse),
            consciousness=None if consciousness is None else str(consciousness),
            temperature_c=None if temp is None else float(temp),
            observation_ids=tuple(ids),
            stale=tuple(stale),
        )

    def state(self) -> dict[str, list[str | float]]:
        """JSON-ready state: parameter -> [ISO time, value, observation id]."""
        return {k: [t.isoformat(), v, i] for k, (t, v, i) in self._latest.items()}

    def load_state(self, state: dict[str, list[str | float]]) -> None:
        """Restore a state from :meth:`state`."""
        for parameter, (when, value, obs_id) in state.items():
            self._latest[parameter] = (datetime.fromisoformat(str(when)), value, str(obs_id))

    @classmethod
    def from_observations(cls, observations: Iterable[Observation]) -> LatestVitals:
        """A LatestVitals fed with every observation in *observations*."""
        latest = cls()
        for obs in observations:
            latest.update(obs)
        return latest


_COMPONENTS: dict[tuple[str, int | None], ObservationComponent] = {}


def _component(name: str, points: int | None) -> ObservationComponent:
    """The (immutable, so shared) component of a NEWS2 Observation for *points* in parameter *name*."""
    key = (name, points)
    component = _COMPONENTS.get(key)
    if component is None:
        component = ObservationComponent(
            code=PARAMETER_CODES[name],
            value=None if points is None else Quantity(value=float(points), unit="{score}"),
        )
        if len(_COMPONENTS) < 256:
            _COMPONENTS[key] = component
    return component


def news2_observation(
    result: News2Result,
    vitals: VitalSigns,
    *,
    patient_id: str,
    source_system: str = "medtwin.monitoring",
) -> Observation:
    """The NEWS2 total as an Observation (LOINC 88330-6, unit ``{score}``) with one component per parameter score.

    ``derived_from`` lists the observation ids the score used; a missing parameter has a component without value.
    """
    components = tuple(_component(name, points) for name, points in result.scores.items())
    source_id = f"news2/{patient_id}/{vitals.at.isoformat()}"
    return Observation(
        patient_id=patient_id,
        code=codes.NEWS2_TOTAL,
        effective=vitals.at,
        value=Quantity(value=float(result.total), unit="{score}"),
        components=components,
        status="final" if result.complete else "preliminary",
        category="survey",
        derived_from=vitals.observation_ids,
        provenance=Provenance(source_system=source_system, source_id=source_id),
    )
