"""Power by pool-then-draw agrees with fully simulated trials and with the formulas."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from medtwin.trials import load_spec, parse_spec, power_study


def _dosing_spec(**power: Any) -> Any:
    raw = copy.deepcopy(dict(load_spec("vancomycin-mipd").raw))
    raw["arms"][0].pop("tdm")
    raw["arms"][1].pop("tdm")
    raw["endpoints"] = {"primary": "auc24_ss"}
    raw["analysis"] = {"methods": ["difference", "ancova"], "baseline": "covariate:CRCL"}
    raw["power"] = {"sizes": [30, 60, 120], "replicates": 400, "pool": 1500} | power
    return parse_spec(raw)


def test_pool_draws_agree_with_fully_simulated_trials() -> None:
    spec = _dosing_spec(full_simulation_check=150)
    study = power_study(spec)[0]
    check = study.check
    assert check["trials"] == 150
    assert check["size"] == 30
    for method in ("difference", "ancova"):
        p_full, p_pool = check[f"{method}_power_full"], check[f"{method}_power_pool"]
        se = math.sqrt(p_pool * (1 - p_pool) / 150 + p_pool * (1 - p_pool) / 400)
        assert abs(p_full - p_pool) < 3.5 * se, method
        # the SD of the estimate over 150 trials is known to about 6 % (1 / sqrt(2 * 149))
        assert check[f"{method}_estimate_sd_full"] == pytest.approx(check[f"{method}_estimate_sd_pool"], rel=0.25)


def test_simulated_power_matches_the_formula_and_rises_with_size() -> None:
    spec = _dosing_spec()
    study = power_study(spec)[0]
    assert study.endpoint == "auc24_ss"
    assert study.arm == "mipd"
    assert study.pool_size == 1500
    for curve in study.curves:
        assert list(curve.simulated) == sorted(curve.simulated)
        for sim, formula, mc in zip(curve.simulated, curve.analytic, curve.simulated_se, strict=True):
            # the formula's variance comes from the same pool; AUC24 is skewed, so allow 4 MC SEs + 0.03
            assert abs(sim - formula) < 4 * mc + 0.03, (curve.method, sim, formula)
        assert curve.sample_size is not None
    ancova = next(c for c in study.curves if c.method == "ancova")
    difference = next(c for c in study.curves if c.method == "difference")
    assert ancova.variance < difference.variance
    assert ancova.sample_size <= difference.sample_size  # type: ignore[operator]


@pytest.mark.slow
def test_glucose_pool_draws_agree_with_fully_simulated_trials() -> None:
    spec = parse_spec(
        {
            "trial": {"name": "g", "kind": "glucose", "seed": 8},
            "population": {"source": "fitted", "size": 10, "groups": {"adult": 1}, "therapy": "sampled"},
            "scenario": {"days": 1, "run_in_days": 1},
            "arms": [{"name": "standard", "control": True}, {"name": "t120", "target_mg_dl": 120}],
            "endpoints": {"primary": "tir_pct"},
            "power": {"sizes": [30], "replicates": 1000, "pool": 600, "full_simulation_check": 300},
        }
    )
    check = power_study(spec)[0].check
    for method in ("difference", "ancova", "procova"):
        p_full, p_pool = check[f"{method}_power_full"], check[f"{method}_power_pool"]
        se = math.sqrt(p_pool * (1 - p_pool) * (1 / 300 + 1 / 1000))
        assert abs(p_full - p_pool) < 3.5 * se + 0.01, method
        assert check[f"{method}_estimate_sd_full"] == pytest.approx(check[f"{method}_estimate_sd_pool"], rel=0.2)
