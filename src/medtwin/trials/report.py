"""Reports of virtual trials: JSON, per-patient CSV, the spec for reruns, and the figures.

``write_trial_report`` writes ``report.json`` (spec and seed, the CONSORT-style flow, arm summaries and every
estimate, the prognostic model's quality), ``patients.csv`` (one row per enrolled patient: id, group, arm,
baseline variables, prognostic scores and outcomes in every arm simulated), ``spec.toml`` (the spec as run),
``consort.png`` and ``forest.png``. ``write_power_report`` writes ``power.json``, ``power.png`` and ``spec.toml``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd  # type: ignore[import-untyped,unused-ignore]

from medtwin.trials.plots import plot_consort, plot_forest, plot_power
from medtwin.trials.power import PowerStudy
from medtwin.trials.protocol import DOSING_ENDPOINTS, GLUCOSE_ENDPOINTS, TrialSpec
from medtwin.trials.trial import Comparison, TrialData

__all__ = ["patients_frame", "power_json", "trial_json", "write_power_report", "write_trial_report"]


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return _clean(value.item())
    return value


def _spec_json(spec: TrialSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "kind": spec.kind,
        "design": spec.design,
        "seed": spec.seed,
        "source": spec.source,
        "description": spec.description,
        "spec": spec.raw,
        "rerun": f"medtwin trial run spec.toml   (seed {spec.seed}; the same spec and seed give the same numbers)",
    }


def _version() -> str:
    try:
        return metadata.version("medtwin")
    except metadata.PackageNotFoundError:
        return "unknown"


def trial_json(data: TrialData, comparisons: Sequence[Comparison], *, seconds: float | None = None) -> dict[str, Any]:
    """The trial report as a JSON-ready dict."""
    spec = data.spec
    catalogue = GLUCOSE_ENDPOINTS if spec.kind == "glucose" else DOSING_ENDPOINTS
    arms = []
    for a, arm in enumerate(spec.arms):
        n = data.cohort.size if data.arm is None else int(np.sum(data.arm == a))
        arms.append({"name": arm.name, "control": a == spec.control, "n": n, "settings": asdict(arm)})
    primary = [c.to_dict() for c in comparisons if c.endpoint == spec.primary]
    out: dict[str, Any] = {
        "medtwin": _version(),
        "generated": datetime.now(UTC).isoformat(),
        "trial": _spec_json(spec),
        "flow": [f.to_dict() for f in data.flow],
        "arms": arms,
        "endpoints": {e: catalogue[e] for e in spec.endpoints},
        "primary_endpoint": spec.primary,
        "primary": primary,
        "comparisons": [c.to_dict() for c in comparisons],
        "notes": _notes(spec),
    }
    if seconds is not None:
        out["run_seconds"] = seconds
    return dict(_clean(out))


def _notes(spec: TrialSpec) -> list[str]:
    notes = []
    if spec.kind == "glucose":
        notes.append(
            "In silico: every period starts from each patient's basal steady state; no period or carry-over "
            "effects exist, so a crossover's sequences do not matter."
        )
        if spec.population.source == "fitted":
            notes.append(
                "Patients are draws from the joint distribution fitted to the 30 UVA/Padova subjects "
                "(docs/trials.md); their outcomes spread wider than the 30 subjects' own."
            )
    if spec.analysis.prognostic == "known-parameters":
        notes.append(
            "Prognostic twins use each virtual patient's own parameters (a perfectly identified twin) with "
            "fresh meals and sensor noise; real participants' twins are matched or identified from run-in data."
        )
    return notes


def patients_frame(data: TrialData) -> pd.DataFrame:
    """One row per enrolled patient: id, group, arm, variables, prognostic scores, outcomes per arm."""
    spec = data.spec
    frame: dict[str, Any] = {"id": list(data.cohort.ids), "group": list(data.cohort.groups)}
    if data.arm is not None:
        frame["arm"] = [spec.arms[a].name for a in data.arm]
    for name, values in sorted(data.cohort.variables.items()):
        frame[name] = values
    for endpoint, values in data.prognostic.items():
        frame[f"prognostic:{endpoint}"] = values
    for endpoint, values in data.outcomes.items():
        for a, arm in enumerate(spec.arms):
            frame[f"{endpoint}[{arm.name}]"] = values[a]
    return pd.DataFrame(frame)


def _write_spec(spec: TrialSpec, out: Path) -> None:
    text = spec.text or f"# spec given as data; as JSON:\n# {orjson.dumps(_clean(spec.raw)).decode()}\n"
    (out / "spec.toml").write_text(text, encoding="utf-8")


def write_trial_report(
    out_dir: str | Path, data: TrialData, comparisons: Sequence[Comparison], *, seconds: float | None = None
) -> dict[str, Path]:
    """Write the trial's files into *out_dir* (created); return their paths by kind."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = trial_json(data, comparisons, seconds=seconds)
    paths = {"json": out / "report.json", "patients": out / "patients.csv", "spec": out / "spec.toml"}
    paths["json"].write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    patients_frame(data).to_csv(paths["patients"], index=False)
    _write_spec(data.spec, out)
    title = f"{data.spec.name} (seed {data.spec.seed})"
    paths["consort"] = plot_consort(out / "consort.png", data.flow, title=title)
    paths["forest"] = plot_forest(out / "forest.png", comparisons, title=title)
    return paths


def power_json(spec: TrialSpec, studies: Sequence[PowerStudy], *, seconds: float | None = None) -> dict[str, Any]:
    """The power report as a JSON-ready dict."""
    out: dict[str, Any] = {
        "medtwin": _version(),
        "generated": datetime.now(UTC).isoformat(),
        "trial": _spec_json(spec),
        "alpha": spec.analysis.alpha,
        "target_power": spec.power.target_power,
        "replicates": spec.power.replicates,
        "method": "pool then draw: every pool patient simulated in every arm once; each replicated trial draws "
        "its patients from the pool without replacement and is randomised afresh (docs/trials.md)",
        "studies": [s.to_dict() for s in studies],
    }
    if seconds is not None:
        out["run_seconds"] = seconds
    return dict(_clean(out))


def write_power_report(
    out_dir: str | Path, spec: TrialSpec, studies: Sequence[PowerStudy], *, seconds: float | None = None
) -> dict[str, Path]:
    """Write ``power.json``, ``power.png`` and ``spec.toml`` into *out_dir*."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "power.json", "spec": out / "spec.toml"}
    paths["json"].write_bytes(orjson.dumps(power_json(spec, studies, seconds=seconds), option=orjson.OPT_INDENT_2))
    _write_spec(spec, out)
    paths["power"] = plot_power(
        out / "power.png", studies, target=spec.power.target_power, title=f"{spec.name} (seed {spec.seed})"
    )
    return paths
