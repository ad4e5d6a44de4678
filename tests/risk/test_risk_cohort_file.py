"""read_cohort: a Parquet or CSV cohort read into columns the equations take as they are, with the same results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from medtwin.errors import ValidationError
from medtwin.risk import RiskResult, cohort_table, compute_all, read_cohort
from medtwin.risk.prevent import prevent_cohort
from medtwin.risk.simulate import synthetic_cohort

N = 3000


def _cohort() -> dict[str, Any]:
    """The simulated cohort with what real files hold: unknown and oddly written text, nulls, yes/no words."""
    c: dict[str, Any] = synthetic_cohort(N, seed=5)
    rng = np.random.default_rng(6)
    sex = c["sex"].astype(object)
    sex[rng.random(N) < 0.02] = None
    sex[rng.random(N) < 0.02] = " Male"  # trimmed and lower-cased
    sex[rng.random(N) < 0.01] = "unknown"  # not given: refused as missing sex, not an error
    c["sex"] = sex
    race = c["race"].astype(object)
    race[rng.random(N) < 0.02] = None
    race[rng.random(N) < 0.02] = "African American"
    c["race"] = race
    c["smoker"] = np.where(c["smoker"] == 1, "yes", "no").astype(object)  # a yes/no column written as words
    c["smoker"][rng.random(N) < 0.03] = None
    c["prior_cvd"] = rng.random(N) < 0.05  # booleans
    c["age_years"] = c["age_years"].astype(np.int64)  # whole years as integers
    c["age_years"][:3] = (20, 90, 35)  # outside some equations' ranges: refused, flagged
    return c


def _write(c: dict[str, Any], path: Path, row_group_size: int = 1000) -> None:
    table = pa.Table.from_pandas(pd.DataFrame(c), preserve_index=False)
    pq.write_table(table, path, row_group_size=row_group_size)  # several row groups: a dictionary per group


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(a.tolist() == b.tolist())


def _assert_same_results(got_inputs: Any, want_inputs: Any) -> None:
    got, want = compute_all(got_inputs), compute_all(want_inputs)
    got_table, want_table = cohort_table(got), cohort_table(want)
    assert list(got_table) == list(want_table)
    for name in want_table:
        assert _same(np.asarray(got_table[name]), np.asarray(want_table[name])), name
    for name, r in want.items():
        g = got[name]
        assert [(p.kind, p.input, p.message) for p in g.problems] == [(p.kind, p.input, p.message) for p in r.problems]
        for p, q in zip(g.problems, r.problems, strict=True):
            assert np.array_equal(p.mask, q.mask), (name, p.message)
        if hasattr(r, "lp"):
            assert np.array_equal(g.lp, r.lp, equal_nan=True), name  # type: ignore[union-attr]
            for k, v in r.contributions.items():  # type: ignore[union-attr]
                assert np.array_equal(g.contributions[k], v, equal_nan=True), (name, k)  # type: ignore[union-attr]
    everything, expected = prevent_cohort(got_inputs), prevent_cohort(want_inputs)
    for key, risk in expected.items():
        assert np.array_equal(everything[key], risk, equal_nan=True), key


def test_every_equation_gives_the_same_results_from_the_file_as_from_the_arrays(tmp_path: Path) -> None:
    c = _cohort()
    path = tmp_path / "cohort.parquet"
    _write(c, path)
    columns = read_cohort(path)
    assert list(columns) == list(c)
    _assert_same_results(columns, c)
    pce = compute_all(columns)["pce"]
    assert isinstance(pce, RiskResult)
    assert (pce.status() == "refused").sum() > 0  # the odd values did reach the equations


def test_pandas_columns_give_the_same_results_as_numpy_arrays() -> None:
    c = _cohort()
    _assert_same_results(pd.DataFrame(c), c)  # text as pandas strings: factorized, not converted row by row


def test_columns_are_float64_or_categorical_and_numbers_are_not_copied(tmp_path: Path) -> None:
    c = _cohort()
    path = tmp_path / "cohort.parquet"
    _write(c, path, row_group_size=N)  # one row group
    columns = read_cohort(path)
    tc = columns["total_chol_mg_dl"]
    assert isinstance(tc, np.ndarray)
    assert tc.dtype == np.float64
    assert not tc.flags.writeable  # a view of the Arrow buffer, not a copy
    np.testing.assert_array_equal(tc, c["total_chol_mg_dl"])
    assert columns["age_years"].dtype == np.float64  # integers
    np.testing.assert_array_equal(columns["age_years"], c["age_years"])
    assert columns["prior_cvd"].tolist() == c["prior_cvd"].astype(float).tolist()  # booleans as 1.0 / 0.0
    hba1c = columns["hba1c_pct"]
    assert np.isnan(hba1c).sum() == np.isnan(c["hba1c_pct"]).sum() > 0  # nulls as NaN
    sex = columns["sex"]
    assert isinstance(sex, pd.Categorical)
    assert sorted(sex.categories) == [" Male", "female", "male", "unknown"]
    assert sex.isna().sum() == sum(v is None for v in c["sex"])
    assert [None if isinstance(v, float) else v for v in np.asarray(sex, dtype=object)] == list(c["sex"])


def test_text_split_over_row_groups_with_different_words_is_one_categorical(tmp_path: Path) -> None:
    path = tmp_path / "two.parquet"
    _write({"sex": ["male", "male", None, "female"], "age_years": [50.0, 60.0, 70.0, 55.0]}, path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 2
    sex = read_cohort(path)["sex"]
    assert isinstance(sex, pd.Categorical)
    assert list(np.asarray(sex, dtype=object)[[0, 1, 3]]) == ["male", "male", "female"]
    assert sex.isna()[2]


def test_csv_is_read_the_same_way(tmp_path: Path) -> None:
    c = _cohort()
    path = tmp_path / "cohort.csv"
    pd.DataFrame(c).to_csv(path, index=False)
    columns = read_cohort(path)
    assert isinstance(columns["race"], pd.Categorical)
    got = compute_all(columns)
    want = compute_all(pd.read_csv(path))  # type: ignore[arg-type]  # a DataFrame is a mapping of columns
    for name, r in want.items():
        value = "risk" if hasattr(r, "risk") and r.risk is not None else "points"
        np.testing.assert_allclose(getattr(got[name], value), getattr(r, value), rtol=1e-12, equal_nan=True)


def test_a_subset_of_columns_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    _write(_cohort(), path)
    assert list(read_cohort(path, ["sex", "age_years"])) == ["sex", "age_years"]
    with pytest.raises(ValidationError, match=r"no column 'age'; did you mean 'age_years'\?"):
        read_cohort(path, ["age"])
    with pytest.raises(ValidationError, match="no such file"):
        read_cohort(tmp_path / "missing.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValidationError, match=r"bad.parquet: cannot read as Parquet"):
        read_cohort(bad)
