"""Every built-in model declares consistent names and units, cites its source and returns well-shaped RHS."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from medtwin.glucose import UvaPadova2008, load_cohort
from medtwin.sim import MichaelisMentenElimination, Model, TwoCompartmentLinear

CASES: list[tuple[Model, dict[str, float | np.ndarray]]] = [
    (TwoCompartmentLinear(), {"k10": 0.01, "k12": 0.02, "k21": 0.03}),
    (MichaelisMentenElimination(), {"vmax_mg_min": 1.0, "km_mg": 10.0}),
    (UvaPadova2008(), dict(load_cohort(["adult#001", "child#001"]).params)),
]


@pytest.mark.parametrize(("model", "params"), CASES, ids=lambda c: type(c).__name__ if isinstance(c, Model) else "")
def test_model_conformance(model: Model, params: dict[str, float | np.ndarray]) -> None:
    assert len(model.state_names) == len(model.state_units) == len(set(model.state_names))
    assert len(model.param_names) == len(model.param_units) == len(set(model.param_names))
    assert len(model.input_names) == len(model.input_units)
    module_doc = inspect.getmodule(type(model)).__doc__ or ""  # type: ignore[union-attr]
    assert any(word in module_doc for word in ("doi", "ed.", "Source")), "the model module must cite its source"
    p = model.make_params(params)
    x = np.abs(np.random.default_rng(0).normal(10.0, 3.0, (p.batch, len(model.state_names))))
    dx = model.rhs(0.0, x, p, np.zeros((p.batch, len(model.input_names))))
    assert dx.shape == x.shape
    assert np.all(np.isfinite(dx))
