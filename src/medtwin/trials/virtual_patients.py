"""Virtual type 1 diabetes patients sampled from a joint distribution fitted to the 30 UVA/Padova subjects.

Method (docs/trials.md, "Virtual glucose populations")
------------------------------------------------------
1. *Free* parameters (those the 2008 simulator sets per subject and the model needs, plus the Quest therapy
   settings CR and CF) are mapped to an unbounded scale: ``log`` for positive quantities, ``logit`` for fractions
   (``b``, ``d``), ``logit(kmin / kmax)`` so that kmin < kmax, and ``log(EGPb - Fsnc)`` so that basal endogenous
   production exceeds insulin-independent uptake (otherwise Vm0 would be negative).
2. On that scale each group (adolescent, adult, child: 10 subjects each) gets its own mean and SD; the
   correlation is pooled over the groups' standardized residuals (27 degrees of freedom for 29 dimensions, so it
   is shrunk towards the identity with the Schafer-Strimmer / Ledoit-Wolf intensity, Schafer J, Strimmer K.
   Stat Appl Genet Mol Biol 2005;4:32, doi:10.2202/1544-6115.1175). A draw is ``mean_g + sd_g * L e`` with
   ``L L' = R`` and ``e ~ N(0, I)``.
3. Parameters every source subject shares (HEb 0.6, f 0.9, ke1, ke2, Fsnc 1, m4 = 0.4 m2) are kept; every
   *derived* quantity is recomputed from the draw with the model's basal steady-state equations
   (Dalla Man et al. 2007; they reproduce all 30 source rows to 1e-9): Gpb = Gb Vg; Gtb = (Fsnc - EGPb + k1
   Gpb) / k2; Vm0 = (EGPb - Fsnc)(Km0 + Gtb) / Gtb; kp1 = EGPb + kp2 Gpb + kp3 Ib; Ipb = Ib Vi;
   m30 = HEb m1 / (1 - HEb); Ilb = m2 Ipb / (m1 + m30); u2ss = (m2 + m4) Ipb - m1 Ilb; Isc1ss = u2ss / (kd + ka1);
   Isc2ss = kd Isc1ss / ka2; x0 = (0, 0, 0, Gpb, Gtb, Ipb, 0, Ib, Ib, Ilb, Isc1ss, Isc2ss, Gpb).
4. A draw is rejected (and counted) when the steady state is not physiological: Gtb <= 0, or Gpb >= ke2 (renal
   excretion at basal, which no source subject has and the equations above leave out).
5. Therapy titration (``population.therapy = "titrated"``, the default): the sampled CR and CF are a starting
   point, as a clinician's first settings are; both are multiplied by the factor (one of
   :data:`TITRATION_FACTORS`, 0.35-2.8) that minimizes the Kovatchev risk index LBGI + HBGI (Kovatchev BP et al.
   Diabetes Care 1997;20:1655-8) of a standard day (07:00 45 g, 12:00 70 g, 18:00 80 g; basal-bolus controller,
   noise-free Dexcom, Insulet pump). Measured on 300 sampled patients per group (tests/trials, slow): with the
   sampled CR and CF 21 % of adults, 30 % of adolescents and 49 % of children spend more than 5 % of the standard
   day below 54 mg/dL (source subjects: 0 %, 0 %, 20 %), after titration 1 %, 5 % and 13 %; median time in range
   after titration 99.9 / 85.0 / 79.5 % against the source's 98.5 / 82.3 / 79.1 %. The physiology the joint draw
   gives is plausible; its therapy settings are not matched to it, as the source subjects' Quest settings are.
   ``"sampled"`` keeps the drawn CR and CF.

Every sampled patient is at rest at its basal state (dx/dt(x0) = 0 under basal insulin, tested), and a population
is a pure function of its seed.

The fit is checked in tests/trials/test_virtual_patients.py: sampled means and SDs on the transformed scale match
the source per group, and the constraints hold.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.metrics import summary_metrics_batch
from medtwin.glucose.patients import GROUPS, Cohort, all_patient_names, load_cohort
from medtwin.glucose.scenarios import daily_meals, make_controller
from medtwin.glucose.simulation import meal_matrix, simulate_closed_loop
from medtwin.glucose.uva_padova import STATE_NAMES
from medtwin.sim.model import FloatArray

__all__ = [
    "FREE_PARAMETERS",
    "TITRATION_FACTORS",
    "GlucosePopulationFit",
    "SampledPatients",
    "fit_glucose_population",
    "sample_glucose_patients",
    "steady_state",
    "titrate_therapy",
]

FREE_PARAMETERS = (
    "BW",
    "Gb",
    "Ib",
    "EGPb",
    "kabs",
    "kmax",
    "kmin",
    "b",
    "d",
    "Vg",
    "Vi",
    "Vmx",
    "Km0",
    "k1",
    "k2",
    "p2u",
    "m1",
    "m2",
    "ki",
    "kp2",
    "kp3",
    "kd",
    "ksc",
    "ka1",
    "ka2",
    "CR",
    "CF",
)
"""Sampled quantities: per-subject model parameters of the 2008 simulator and the Quest CR (g/U), CF (mg/dL/U)."""

_LOGIT = ("b", "d")
_SHARED = ("HEb", "f", "ke1", "ke2", "Fsnc")
_M4_OVER_M2 = 0.4  # every source subject: m4 = 0.4 m2 (Dalla Man 2007: 40 % of insulin clearance is peripheral)


def _logit(p: FloatArray) -> FloatArray:
    return np.asarray(np.log(p / (1.0 - p)), dtype=np.float64)


def _expit(z: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)


def _to_unbounded(values: Mapping[str, FloatArray], fsnc: float) -> FloatArray:
    cols = []
    for name in FREE_PARAMETERS:
        v = np.asarray(values[name], dtype=np.float64)
        if name in _LOGIT:
            cols.append(_logit(v))
        elif name == "kmin":
            cols.append(_logit(v / np.asarray(values["kmax"])))
        elif name == "EGPb":
            cols.append(np.log(v - fsnc))
        else:
            cols.append(np.log(v))
    return np.column_stack(cols)


def _from_unbounded(z: FloatArray, fsnc: float) -> dict[str, FloatArray]:
    out: dict[str, FloatArray] = {}
    for j, name in enumerate(FREE_PARAMETERS):
        if name in _LOGIT:
            out[name] = _expit(z[:, j])
        elif name == "EGPb":
            out[name] = np.exp(z[:, j]) + fsnc
        elif name != "kmin":
            out[name] = np.exp(z[:, j])
    out["kmin"] = out["kmax"] * _expit(z[:, FREE_PARAMETERS.index("kmin")])
    return out


def steady_state(
    free: Mapping[str, FloatArray], shared: Mapping[str, float]
) -> tuple[dict[str, FloatArray], FloatArray]:
    """Model parameters and basal state ``(n, 13)`` of patients given their free parameters (module docstring)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in free.items()}
    n = p["BW"].shape[0]
    for k, v in shared.items():
        p[k] = np.full(n, float(v))
    p["Gpb"] = p["Gb"] * p["Vg"]
    p["Gtb"] = (p["Fsnc"] - p["EGPb"] + p["k1"] * p["Gpb"]) / p["k2"]
    p["Vm0"] = (p["EGPb"] - p["Fsnc"]) * (p["Km0"] + p["Gtb"]) / p["Gtb"]
    p["kp1"] = p["EGPb"] + p["kp2"] * p["Gpb"] + p["kp3"] * p["Ib"]
    p["Ipb"] = p["Ib"] * p["Vi"]
    p["m4"] = _M4_OVER_M2 * p["m2"]
    p["m30"] = p["HEb"] * p["m1"] / (1.0 - p["HEb"])
    p["Ilb"] = p["m2"] * p["Ipb"] / (p["m1"] + p["m30"])
    p["u2ss"] = (p["m2"] + p["m4"]) * p["Ipb"] - p["m1"] * p["Ilb"]
    p["isc1ss"] = p["u2ss"] / (p["kd"] + p["ka1"])
    p["isc2ss"] = p["kd"] * p["isc1ss"] / p["ka2"]
    zeros = np.zeros(n)
    x0 = np.column_stack(
        [
            zeros,
            zeros,
            zeros,
            p["Gpb"],
            p["Gtb"],
            p["Ipb"],
            zeros,
            p["Ib"],
            p["Ib"],
            p["Ilb"],
            p["isc1ss"],
            p["isc2ss"],
            p["Gpb"],
        ]
    )
    assert x0.shape[1] == len(STATE_NAMES)
    return p, x0


def _shrunk_correlation(resid: FloatArray) -> tuple[FloatArray, float]:
    """Correlation of standardized residuals shrunk towards I (Schafer & Strimmer 2005, target D)."""
    n = resid.shape[0]
    x = (resid - resid.mean(axis=0)) / resid.std(axis=0, ddof=1)
    w = x[:, :, None] * x[:, None, :]
    r = w.sum(axis=0) / (n - 1)
    var_r = n / (n - 1) ** 3 * np.sum((w - w.mean(axis=0)) ** 2, axis=0)
    off = ~np.eye(r.shape[0], dtype=bool)
    lam = float(np.clip(var_r[off].sum() / np.sum(r[off] ** 2), 0.0, 1.0))
    shrunk = (1.0 - lam) * r
    np.fill_diagonal(shrunk, 1.0)
    return shrunk, lam


@dataclass(frozen=True, slots=True, kw_only=True)
class GlucosePopulationFit:
    """The fitted joint distribution: per-group means and SDs on the transformed scale, a pooled correlation."""

    groups: tuple[str, ...]
    mean: FloatArray  # (groups, p)
    sd: FloatArray  # (groups, p)
    correlation: FloatArray  # (p, p), shrunk
    shrinkage: float
    shared: Mapping[str, float]
    source_transformed: FloatArray  # (30, p)
    source_groups: tuple[str, ...]

    def group_index(self, group: str) -> int:
        """Row of *group* in :attr:`mean`."""
        if group not in self.groups:
            raise ValidationError(f"unknown patient group {group!r} (known: {', '.join(self.groups)})")
        return self.groups.index(group)

    def transform(self, values: Mapping[str, FloatArray]) -> FloatArray:
        """Free parameters (natural units) to the fitted scale, ``(n, p)``."""
        return _to_unbounded(values, self.shared["Fsnc"])


@cache
def fit_glucose_population() -> GlucosePopulationFit:
    """Fit the joint distribution to the 30 virtual patients of the 2008 simulator (module docstring)."""
    names = all_patient_names()
    cohort = load_cohort(list(names))
    values = {k: v for k, v in cohort.params.items() if k in FREE_PARAMETERS}
    values["CR"] = cohort.cr_g_per_u
    values["CF"] = cohort.cf_mg_dl_per_u
    shared = {}
    for k in _SHARED:
        col = cohort.params[k]
        if np.ptp(col) > 1e-12 * max(1.0, abs(float(col[0]))):
            raise ValidationError(f"virtual population fit: {k} differs between source subjects")
        shared[k] = float(col[0])
    z = _to_unbounded(values, shared["Fsnc"])
    groups = tuple(n.split("#")[0] for n in names)
    mean = np.stack([z[np.array(groups) == g].mean(axis=0) for g in GROUPS])
    sd = np.stack([z[np.array(groups) == g].std(axis=0, ddof=1) for g in GROUPS])
    gi = np.array([GROUPS.index(g) for g in groups])
    resid = (z - mean[gi]) / sd[gi]
    corr, lam = _shrunk_correlation(resid)
    return GlucosePopulationFit(
        groups=GROUPS,
        mean=mean,
        sd=sd,
        correlation=corr,
        shrinkage=lam,
        shared=shared,
        source_transformed=z,
        source_groups=groups,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledPatients:
    """Sampled virtual patients as a glucose :class:`~medtwin.glucose.Cohort`, with their groups and draws."""

    cohort: Cohort
    groups: tuple[str, ...]
    transformed: FloatArray  # (n, p) the accepted draws on the fitted scale
    rejected: int  # draws rejected for a non-physiological steady state


def sample_glucose_patients(
    groups: Sequence[str], *, rng: np.random.Generator, fit: GlucosePopulationFit | None = None, prefix: str = "vp"
) -> SampledPatients:
    """One sampled patient per entry of *groups* (``adult``, ``adolescent`` or ``child``), drawn with *rng*.

    Draws are made group by group in the order given, each rejected draw replaced by a new one; names are
    ``{prefix}-{group}-{index:06d}`` with the index in *groups*.
    """
    fit = fit or fit_glucose_population()
    n = len(groups)
    gi = np.array([fit.group_index(g) for g in groups], dtype=np.int64)
    chol = np.linalg.cholesky(fit.correlation)
    z = np.empty((n, len(FREE_PARAMETERS)))
    todo = np.arange(n)
    rejected = 0
    for _ in range(100):
        if todo.size == 0:
            break
        e = rng.standard_normal((todo.size, len(FREE_PARAMETERS)))
        z[todo] = fit.mean[gi[todo]] + fit.sd[gi[todo]] * (e @ chol.T)
        params, _ = steady_state(_from_unbounded(z[todo], fit.shared["Fsnc"]), fit.shared)
        bad = (params["Gtb"] <= 0) | (params["Gpb"] >= params["ke2"]) | ~np.isfinite(params["u2ss"])
        rejected += int(bad.sum())
        todo = todo[bad]
    if todo.size:
        raise ValidationError(f"virtual population: {todo.size} draws never met the steady-state constraints")
    free = _from_unbounded(z, fit.shared["Fsnc"])
    params, x0 = steady_state(free, fit.shared)
    cr = params.pop("CR")
    cf = params.pop("CF")
    names = tuple(f"{prefix}-{g}-{i:06d}" for i, g in enumerate(groups))
    cohort = Cohort(names=names, params=params, x0=x0, cr_g_per_u=cr, cf_mg_dl_per_u=cf)
    return SampledPatients(cohort=cohort, groups=tuple(groups), transformed=z, rejected=rejected)


TITRATION_FACTORS = tuple(float(f) for f in np.round(np.geomspace(0.35, 2.8, 6), 6))
"""Multipliers of the sampled CR and CF tried by :func:`titrate_therapy` (1.52x apart; 6 simulated days per patient)."""


def titrate_therapy(cohort: Cohort) -> FloatArray:
    """The factor of :data:`TITRATION_FACTORS` minimizing LBGI + HBGI of each patient's standard day.

    Every patient is simulated once per factor (noise-free CGM) in one batch; ties go to the smallest factor.
    """
    factors = np.asarray(TITRATION_FACTORS)
    m, n = factors.size, cohort.size
    trial = Cohort(
        names=tuple(f"{name}*{f:g}" for name in cohort.names for f in factors),
        params={k: np.repeat(v, m) for k, v in cohort.params.items()},
        x0=np.repeat(cohort.x0, m, axis=0),
        cr_g_per_u=np.repeat(cohort.cr_g_per_u, m) * np.tile(factors, n),
        cf_mg_dl_per_u=np.repeat(cohort.cf_mg_dl_per_u, m) * np.tile(factors, n),
    )
    result = simulate_closed_loop(
        trial,
        minutes=1440,
        meals=meal_matrix(1440, daily_meals(trial.size, 1), trial.size),
        controller=make_controller("basal-bolus", trial),
        sensor=CGMSensor(sensor_spec("Dexcom"), [1] * trial.size, noise=False),
        pump=InsulinPump(pump_spec("Insulet")),
    )
    metrics = summary_metrics_batch(result.bg_mg_dl[1:])
    risk = (metrics["lbgi"] + metrics["hbgi"]).reshape(n, m)
    return np.asarray(factors[np.argmin(risk, axis=1)], dtype=np.float64)
