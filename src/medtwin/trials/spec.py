"""Trial specs: a TOML file that says who is enrolled, what each arm does, for how long, and what is measured.

The format is documented in docs/trials.md; every table is read strictly (:mod:`medtwin.trials.specfile`), so a
misspelt key or value is an error naming the file, table and key, with the closest known word. A spec is a glucose
trial (virtual type 1 diabetes patients under insulin controllers) or a dosing trial (virtual patients of a
population-PK library model under dosing strategies). Example specs ship in ``medtwin/trials/examples`` and can be
named by their id (``glucose-target-120``).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from medtwin.dosing.casefile import STANDARD_COVARIATE_FIELDS
from medtwin.errors import ValidationError, did_you_mean
from medtwin.glucose.devices import pump_spec, sensor_spec
from medtwin.glucose.envs import DEFAULT_MEALS
from medtwin.glucose.patients import GROUPS, resolve_patient_names
from medtwin.glucose.scenarios import CONTROLLERS
from medtwin.trials.protocol import (
    ANALYSIS_METHODS,
    DEFAULT_POWER_SIZES,
    DOSING_ENDPOINTS,
    DOSING_PROGNOSTIC,
    GLUCOSE_ENDPOINTS,
    GLUCOSE_PROGNOSTIC,
    VARIABLE_KINDS,
    AllocationSpec,
    AnalysisSpec,
    CovariateDistribution,
    Criterion,
    Design,
    DosingArm,
    DosingScenario,
    GlucoseArm,
    GlucoseScenario,
    Kind,
    PopulationSpec,
    PowerSpec,
    TdmSpec,
    TrialSpec,
)
from medtwin.trials.specfile import SpecError, Table, check_number
from medtwin.trials.virtual_patients import FREE_PARAMETERS

__all__ = ["MAX_POPULATION", "example_specs", "load_spec", "parse_spec"]

MAX_POPULATION = (1 << 22) - 1
"""Most patients one population may screen: each population (trial, twin library, power pool, checks) owns a block
of 2^22 screening indices, which seed its patients' random streams."""


def _criteria(pop: Table, variables: tuple[str, ...]) -> tuple[Criterion, ...]:
    out: list[Criterion] = []
    for action, keys in (("include", ("variable", "min", "max")), ("exclude", ("variable", "above", "below"))):
        for t in pop.tables(action, keys):
            variable = _variable(t, "variable", variables)
            lo_key, hi_key = keys[1], keys[2]
            if lo_key not in t and hi_key not in t:
                raise SpecError(f"{t.where}: give {lo_key!r}, {hi_key!r} or both")
            low = t.number(lo_key, -math.inf) if lo_key in t else -math.inf
            high = t.number(hi_key, math.inf) if hi_key in t else math.inf
            if low > high:
                raise SpecError(f"{t.where}: {lo_key} {low:g} is above {hi_key} {high:g}")
            out.append(Criterion(action=action, variable=variable, low=low, high=high))  # type: ignore[arg-type]
    return tuple(out)


def _variable(t: Table, key: str, names: tuple[str, ...]) -> str:
    """A ``kind:name`` variable whose name is among *names* (``group`` stands alone)."""
    text = t.text(key)
    if text == "group":
        return text
    kind, _, name = text.partition(":")
    if kind not in VARIABLE_KINDS or not name:
        raise SpecError(f"{t.at(key)}: {text!r} is not 'group' or 'parameter:NAME', 'baseline:NAME', 'covariate:NAME'")
    if name not in names:
        raise SpecError(f"{t.at(key)}: unknown {kind} {name!r}{did_you_mean(name, names, brackets=True)}")
    return text


_GLUCOSE_VARIABLES = (*FREE_PARAMETERS, *GLUCOSE_ENDPOINTS)


def _glucose_population(t: Table) -> PopulationSpec:
    source = t.text("source", "fitted", choices=("fitted", "original"))
    criteria = _criteria(t, _GLUCOSE_VARIABLES)
    if source == "original":
        if "size" in t or "groups" in t or "therapy" in t:
            raise SpecError(
                f"{t.where}: source 'original' takes 'patients' (names or groups), not size, groups, therapy"
            )
        try:
            patients = resolve_patient_names(list(t.texts("patients", ("all",))))
        except ValidationError as exc:
            raise SpecError(f"{t.at('patients')}: {exc}") from exc
        return PopulationSpec(
            source="original", size=len(patients), patients=patients, criteria=criteria, variables=_GLUCOSE_VARIABLES
        )
    if "patients" in t:
        raise SpecError(
            f"{t.where}: 'patients' belongs to source 'original'; a fitted population takes size and groups"
        )
    groups = t.table("groups", GROUPS)
    weights = {g: groups.number(g, 0.0, low=0.0) for g in GROUPS if g in groups} or {"adult": 1.0}
    if sum(weights.values()) <= 0:
        raise SpecError(f"{groups.where}: the group weights must not all be 0")
    return PopulationSpec(
        source="fitted",
        size=t.integer("size", low=2, high=MAX_POPULATION),
        groups=weights,
        therapy=t.text("therapy", "titrated", choices=("titrated", "sampled")),  # type: ignore[arg-type]
        criteria=criteria,
        variables=_GLUCOSE_VARIABLES,
    )


_DISTRIBUTION_KEYS = ("distribution", "mean", "sd", "median", "cv_pct", "min", "max", "female")


def _covariate_distribution(name: str, raw: Any, where: str) -> CovariateDistribution:
    if name not in STANDARD_COVARIATE_FIELDS:
        known = sorted(STANDARD_COVARIATE_FIELDS)
        hint = did_you_mean(name, known, brackets=True)
        raise SpecError(f"{where}: unknown patient field {name!r}{hint}; known: {', '.join(known)}")
    if not isinstance(raw, Mapping):
        return CovariateDistribution(field=name, distribution="fixed", a=check_number(raw, where))
    t = Table(raw, where, _DISTRIBUTION_KEYS)
    if name == "sex":
        return CovariateDistribution(field=name, distribution="female", a=t.number("female", low=0.0, high=1.0))
    dist = t.text("distribution", choices=("normal", "lognormal", "uniform"))
    low = t.number("min", -math.inf)
    high = t.number("max", math.inf)
    if dist == "normal":
        a, b = t.number("mean"), t.number("sd", low=0.0, low_open=True)
    elif dist == "lognormal":
        a, b = t.number("median", low=0.0, low_open=True), t.number("cv_pct", low=0.0, low_open=True) / 100.0
    else:
        a, b = t.number("min"), t.number("max")
        if b <= a:
            raise SpecError(f"{where}: uniform needs min < max")
    if low >= high:
        raise SpecError(f"{where}: min {low:g} must be below max {high:g}")
    return CovariateDistribution(field=name, distribution=dist, a=a, b=b, low=low, high=high)  # type: ignore[arg-type]


def _dosing_population(t: Table) -> PopulationSpec:
    from medtwin.dosing.modelfile import load_model

    model_id = t.text("model")
    try:
        model = load_model(model_id)
    except ValidationError as exc:
        raise SpecError(f"{t.at('model')}: {exc}") from exc
    raw = t.required("covariates")
    if not isinstance(raw, Mapping):
        raise SpecError(f"{t.at('covariates')}: expected a table of patient fields")
    dists = tuple(_covariate_distribution(str(k), v, f"{t.at('covariates')}.{k}") for k, v in raw.items())
    names = tuple(sorted({*STANDARD_COVARIATE_FIELDS, *(c.name for c in model.covariates)}))
    return PopulationSpec(
        source="pk-model",
        size=t.integer("size", low=2, high=MAX_POPULATION),
        model=model_id,
        covariates=dists,
        within_validity=t.flag("within_validity", True),
        criteria=_criteria(t, names),
        variables=names,
    )


def _clock_minute(value: Any, where: str) -> float:
    if isinstance(value, str):
        hh, _, mm = value.partition(":")
        if not (hh.isdigit() and mm.isdigit()) or not (0 <= int(hh) < 24 and 0 <= int(mm) < 60):
            raise SpecError(f"{where}: {value!r} is not a time of day HH:MM")
        return float(int(hh) * 60 + int(mm))
    return check_number(value, where, low=0.0, high=1439.0)


def _glucose_scenario(t: Table) -> GlucoseScenario:
    meals = tuple(
        (_clock_minute(m.required("time"), m.at("time")), m.number("carbs_g", low=0.0))
        for m in t.tables("meals", ("time", "carbs_g"))
    )
    size = t.numbers("size_range", (0.7, 1.3), low=0.0)
    if len(size) != 2 or size[0] > size[1]:
        raise SpecError(f"{t.at('size_range')}: expected [low, high] with low <= high")
    sensor, pump = t.text("sensor", "Dexcom"), t.text("pump", "Insulet")
    for check, name, key in ((sensor_spec, sensor, "sensor"), (pump_spec, pump, "pump")):
        try:
            check(name)
        except ValidationError as exc:
            raise SpecError(f"{t.at(key)}: {exc}") from exc
    return GlucoseScenario(
        days=t.integer("days", low=1, high=365),
        run_in_days=t.integer("run_in_days", 0, high=90),
        meals=meals or DEFAULT_MEALS,
        randomise_meals=t.flag("randomise_meals", True),
        time_sd_min=t.number("time_sd_min", 30.0, low=0.0),
        size_range=(size[0], size[1]),
        skip_probability=t.number("skip_probability", 0.0, low=0.0, high=1.0),
        sensor=sensor,
        pump=pump,
        sensor_noise=t.flag("sensor_noise", True),
        signal=t.text("signal", "bg", choices=("bg", "cgm")),  # type: ignore[arg-type]
    )


def _dosing_scenario(t: Table) -> DosingScenario:
    target = t.numbers("target_auc24", (400.0, 600.0), low=0.0)
    if len(target) != 2 or not 0 < target[0] < target[1]:
        raise SpecError(f"{t.at('target_auc24')}: expected [low, high] mg.h/L with 0 < low < high")
    return DosingScenario(
        target_auc24=(target[0], target[1]),
        toxicity_trough_mg_l=t.number("toxicity_trough_mg_l", 20.0, low=0.0, low_open=True),
        infusion_h=t.number("infusion_h", 1.0, low=0.0, low_open=True),
    )


_GLUCOSE_ARM_KEYS = (
    "name",
    "control",
    "controller",
    "target_mg_dl",
    "correction_threshold_mg_dl",
    "cr_scale",
    "cf_scale",
    "basal_scale",
)
_DOSING_ARM_KEYS = (
    "name",
    "control",
    "strategy",
    "mg_per_kg",
    "interval_h",
    "crcl_intervals",
    "intervals_h",
    "max_dose_mg",
    "increment_mg",
    "trough_max_mg_l",
    "tdm",
)


def _glucose_arm(t: Table) -> GlucoseArm:
    return GlucoseArm(
        name=t.text("name"),
        controller=t.text("controller", "basal-bolus", choices=CONTROLLERS),
        target_mg_dl=t.number("target_mg_dl", 140.0, low=70.0, high=250.0),
        correction_threshold_mg_dl=t.number("correction_threshold_mg_dl", 150.0, low=70.0, high=300.0),
        cr_scale=t.number("cr_scale", 1.0, low=0.1, high=10.0),
        cf_scale=t.number("cf_scale", 1.0, low=0.1, high=10.0),
        basal_scale=t.number("basal_scale", 1.0, low=0.0, high=5.0),
    )


def _dosing_arm(t: Table) -> DosingArm:
    strategy = t.text("strategy", choices=("nomogram", "mipd"))
    bands: list[tuple[float, float]] = []
    raw_bands = t.raw.get("crcl_intervals", [])
    if not isinstance(raw_bands, list):
        raise SpecError(f"{t.at('crcl_intervals')}: expected [[CrCL up to (mL/min), interval (h)], ...]")
    for i, band in enumerate(raw_bands):
        w = f"{t.at('crcl_intervals')}[{i}]"
        if not isinstance(band, list) or len(band) != 2:
            raise SpecError(f"{w}: expected [CrCL up to (mL/min), interval (h)]")
        bands.append((check_number(band[0], w, low=0.0), check_number(band[1], w, low=0.0, low_open=True)))
    tdm = None
    if "tdm" in t:
        s = t.table("tdm", ("after_doses", "samples", "method", "trough_target_mg_l"))
        tdm = TdmSpec(
            after_doses=s.integer("after_doses", 3, low=1, high=50),
            samples=s.text("samples", "trough", choices=("trough", "peak-trough")),  # type: ignore[arg-type]
            method=s.text("method", "map", choices=("map", "trough-ratio")),  # type: ignore[arg-type]
            trough_target_mg_l=s.number("trough_target_mg_l", 15.0, low=0.0, low_open=True),
        )
    return DosingArm(
        name=t.text("name"),
        strategy=strategy,  # type: ignore[arg-type]
        mg_per_kg=t.number("mg_per_kg", 15.0, low=0.0, low_open=True),
        interval_h=t.number("interval_h", 12.0, low=1.0, high=168.0),
        crcl_intervals=tuple(sorted(bands)),
        intervals_h=t.numbers("intervals_h", (8.0, 12.0, 24.0), low=1.0),
        max_dose_mg=t.number("max_dose_mg", 3000.0, low=0.0, low_open=True),
        increment_mg=t.number("increment_mg", 250.0, low=0.0, low_open=True),
        trough_max_mg_l=t.number("trough_max_mg_l", math.inf, low=0.0, low_open=True)
        if "trough_max_mg_l" in t
        else math.inf,
        tdm=tdm,
    )


def _allocation(t: Table, n_arms: int, design: Design, variables: tuple[str, ...]) -> AllocationSpec:
    if design == "crossover":
        if t.raw:
            raise SpecError(f"{t.where}: a crossover gives every patient every arm; remove [allocation]")
        return AllocationSpec(ratio=(1,) * n_arms)
    method = t.text("method", "randomised", choices=("randomised", "stratified"))
    raw_ratio = t.numbers("ratio", (1.0,) * n_arms, low=1.0)
    if len(raw_ratio) != n_arms or any(r != int(r) for r in raw_ratio):
        raise SpecError(f"{t.at('ratio')}: expected {n_arms} whole numbers, one per arm")
    ratio = tuple(int(r) for r in raw_ratio)
    block = t.integer("block_size", 0)
    if block and block % sum(ratio):
        raise SpecError(f"{t.at('block_size')}: {block} is not a multiple of the ratio's sum {sum(ratio)}")
    strata: list[tuple[str, tuple[float, ...]]] = []
    for s in t.tables("strata", ("variable", "cuts")):
        variable = _variable(s, "variable", variables)
        cuts = s.numbers("cuts") if variable != "group" else ()
        strata.append((variable, tuple(sorted(cuts))))
    if method == "stratified" and not strata:
        raise SpecError(f"{t.where}: stratified allocation needs [[allocation.strata]] (variable, cuts)")
    if method == "randomised" and strata:
        raise SpecError(f"{t.where}: strata are given, so set method = 'stratified'")
    return AllocationSpec(method=method, ratio=ratio, block_size=block, strata=tuple(strata))  # type: ignore[arg-type]


_TOP = ("trial", "population", "allocation", "scenario", "arms", "endpoints", "analysis", "power", "execution")


def parse_spec(data: Mapping[str, Any], *, source: str = "<spec>", text: str = "") -> TrialSpec:
    """Validate a spec given as a mapping (the TOML structure)."""
    top = Table(data, source, _TOP)
    trial = top.table("trial", ("name", "kind", "design", "seed", "description"))
    kind: Kind = trial.text("kind", choices=("glucose", "dosing"))  # type: ignore[assignment]
    design: Design = trial.text("design", "parallel", choices=("parallel", "crossover"))  # type: ignore[assignment]
    glucose = kind == "glucose"
    pop_keys = (
        ("source", "size", "groups", "therapy", "patients", "include", "exclude")
        if glucose
        else ("model", "size", "covariates", "within_validity", "include", "exclude")
    )
    population = (_glucose_population if glucose else _dosing_population)(top.table("population", pop_keys))
    scenario_keys = (
        (
            "days",
            "run_in_days",
            "meals",
            "randomise_meals",
            "time_sd_min",
            "size_range",
            "skip_probability",
            "sensor",
            "pump",
            "sensor_noise",
            "signal",
        )
        if glucose
        else ("target_auc24", "toxicity_trough_mg_l", "infusion_h")
    )
    if "scenario" not in top and glucose:
        raise SpecError(f"{source}: missing [scenario] (at least days)")
    scenario = (_glucose_scenario if glucose else _dosing_scenario)(top.table("scenario", scenario_keys))
    arm_tables = top.tables("arms", _GLUCOSE_ARM_KEYS if glucose else _DOSING_ARM_KEYS)
    if len(arm_tables) < 2:
        raise SpecError(f"{source}: a trial needs at least two [[arms]]")
    arms = tuple((_glucose_arm if glucose else _dosing_arm)(a) for a in arm_tables)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise SpecError(f"{source}: arm names must be unique, got {names}")
    controls = [i for i, a in enumerate(arm_tables) if a.flag("control", False)]
    if len(controls) > 1:
        raise SpecError(f"{source}: only one arm can be the control, got {[names[i] for i in controls]}")
    catalogue = GLUCOSE_ENDPOINTS if glucose else DOSING_ENDPOINTS
    ends = top.table("endpoints", ("primary", "secondary"))
    primary = ends.text("primary", next(iter(catalogue)), choices=tuple(catalogue))
    secondary = ends.texts("secondary", (), choices=tuple(catalogue))
    variables = population.variables
    allocation = _allocation(
        top.table("allocation", ("method", "ratio", "block_size", "strata")), len(arms), design, variables
    )
    analysis = _analysis(top, kind, design, scenario, variables)
    pw = top.table("power", ("sizes", "replicates", "pool", "target_power", "full_simulation_check"))
    sizes = tuple(int(s) for s in pw.numbers("sizes", DEFAULT_POWER_SIZES, low=4.0))
    power = PowerSpec(
        sizes=sizes,
        replicates=pw.integer("replicates", 1000, low=10),
        pool=pw.integer("pool", max(1000, 5 * max(sizes)), low=8, high=MAX_POPULATION),
        target_power=pw.number("target_power", 0.8, low=0.0, high=1.0, low_open=True),
        full_simulation_check=pw.integer("full_simulation_check", 0),
    )
    if power.pool < max(power.sizes):
        raise SpecError(f"{pw.at('pool')}: the pool ({power.pool}) must hold the largest trial ({max(power.sizes)})")
    seed = trial.integer("seed", 1, high=2**32 - 2**24)
    return TrialSpec(
        name=trial.text("name"),
        kind=kind,
        design=design,
        seed=seed,
        description=trial.text("description", ""),
        population=population,
        allocation=allocation,
        scenario=scenario,
        arms=arms,
        control=controls[0] if controls else 0,
        primary=primary,
        secondary=secondary,
        analysis=analysis,
        power=power,
        chunk_size=top.table("execution", ("chunk_size",)).integer("chunk_size", 250, low=1),
        source=source,
        raw=data,
        text=text,
    )


def _analysis(top: Table, kind: Kind, design: Design, scenario: Any, variables: tuple[str, ...]) -> AnalysisSpec:
    t = top.table(
        "analysis",
        (
            "alpha",
            "methods",
            "baseline",
            "robust_se",
            "prognostic",
            "prognostic_replicates",
            "library_size",
            "neighbours",
        ),
    )
    choices = GLUCOSE_PROGNOSTIC if kind == "glucose" else DOSING_PROGNOSTIC
    methods = t.texts(
        "methods", ANALYSIS_METHODS if design == "parallel" else ("difference",), choices=ANALYSIS_METHODS
    )
    if design == "crossover" and set(methods) - {"difference"}:
        raise SpecError(f"{t.at('methods')}: a crossover is analysed by paired differences only ('difference')")
    run_in = isinstance(scenario, GlucoseScenario) and scenario.run_in_days > 0
    default_baseline = "run_in" if run_in else ""
    baseline = t.text("baseline", default_baseline) if ("baseline" in t or default_baseline) else ""
    if baseline == "run_in" and not run_in:
        raise SpecError(f"{t.at('baseline')}: 'run_in' needs scenario.run_in_days > 0")
    if baseline not in ("", "run_in"):
        baseline = _variable(t, "baseline", variables)
    if "ancova" in methods and not baseline:
        raise SpecError(f"{t.where}: ANCOVA needs a baseline (scenario.run_in_days, or analysis.baseline)")
    prognostic_default = (
        "none" if "procova" not in methods else ("known-parameters" if kind == "glucose" else "covariates")
    )
    prognostic = t.text("prognostic", prognostic_default, choices=choices)
    if "procova" in methods and prognostic == "none":
        raise SpecError(f"{t.at('prognostic')}: PROCOVA needs a prognostic model ({', '.join(choices[:-1])})")
    if prognostic == "matched" and not run_in:
        raise SpecError(f"{t.at('prognostic')}: 'matched' twins are built from the run-in: set scenario.run_in_days")
    return AnalysisSpec(
        alpha=t.number("alpha", 0.05, low=0.0, high=0.5, low_open=True),
        methods=methods,
        baseline=baseline,
        robust_se=t.flag("robust_se", False),
        prognostic=prognostic,
        prognostic_replicates=t.integer("prognostic_replicates", 1 if kind == "glucose" else 64, low=1, high=1024),
        library_size=t.integer("library_size", 1000, low=10, high=MAX_POPULATION),
        neighbours=t.integer("neighbours", 20, low=1),
    )


def _examples_dir() -> Any:
    return resources.files("medtwin.trials") / "examples"


def example_specs() -> list[str]:
    """Ids of the example specs shipped with medtwin."""
    return sorted(p.name[:-5] for p in _examples_dir().iterdir() if p.name.endswith(".toml"))


def load_spec(name_or_path: str | Path) -> TrialSpec:
    """Read a spec from a TOML file, or an example by id (see :func:`example_specs`)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"trial spec {path} does not exist")
        content, source = path.read_text(encoding="utf-8"), str(path)
    else:
        entry = _examples_dir() / f"{text}.toml"
        if not entry.is_file():
            raise SpecError(
                f"unknown trial spec {text!r}: not a file, and not an example ({', '.join(example_specs())})"
            )
        content, source = entry.read_text(encoding="utf-8"), f"{text}.toml"
    try:
        data = tomllib.loads(content)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: invalid TOML: {exc}") from exc
    return parse_spec(data, source=source, text=content)
