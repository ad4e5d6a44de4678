"""The personal UVA/Padova model: which parameters a person's data identify, their population prior, and the
map from an identified parameter vector to the full 2008 model (steady state, initial state).

Parametrisation (Dalla Man et al. 2007, "basal steady state" constraints): instead of the endogenous glucose
production parameter kp1 the model takes the basal glucose Gb (mg/dL) reached under the reference basal insulin
rate u2ss; kp1 and the basal insulin Ib then follow from the steady state:

    Isc1 = u2ss / (kd + ka1), Isc2 = kd Isc1 / ka2, Ip = u2ss / (m2 + m4 - m1 m2 / (m1 + m30)), Ib = Ip / Vi
    Gp = Gb Vg, Gt solves k1 Gp = Vm0 Gt / (Km0 + Gt) + k2 Gt
    kp1 = Fsnc + ke1 max(Gp - ke2, 0) + k1 Gp - k2 Gt + kp2 Gp + kp3 Ib

These reproduce the 30 virtual patients' own x0, kp1 and Ib to 1e-11 (tests). The identified parameters are
estimated in log space (b, a fraction, in logit space: :data:`LOGIT_PARAMETERS`) with a normal prior there built
from the virtual patients (mean and covariance of their log values, leave-one-out when validating); every other
parameter is fixed at the population geometric mean of the chosen group. Which parameters are identified, and why,
is in docs/models/glucose_twin.md (identifiability analysis over the 30 patients,
:mod:`medtwin.glucose.identifiability`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medtwin.errors import ValidationError
from medtwin.glucose._kernels import PARAM_ORDER
from medtwin.glucose._twin_kernels import run_inputs
from medtwin.glucose.patients import GROUPS, load_cohort
from medtwin.glucose.therapy_data import TherapyData
from medtwin.glucose.uva_padova import PMOL_PER_UNIT_INSULIN
from medtwin.sim.model import FloatArray

__all__ = [
    "CANDIDATE_PARAMETERS",
    "DEFAULT_IDENTIFIED",
    "LOGIT_PARAMETERS",
    "SETTINGS_COVARIATES",
    "SUBSYSTEMS",
    "TIED_PARAMETERS",
    "PersonalModel",
    "PopulationPrior",
    "conditioned_prior",
    "coupled_prior",
    "population_prior",
    "population_values",
    "to_natural",
    "to_unconstrained",
]

CANDIDATE_PARAMETERS = (
    "Gb", "Vg", "Vmx", "Vm0", "Km0", "kp2", "kp3", "k1", "k2", "kabs", "kmax", "kmin", "b", "d",
    "ka1", "ka2", "kd", "p2u", "ki", "m1", "m2", "m4", "m30", "Vi", "ksc",
)  # fmt: skip
"""Parameters that differ between the 30 virtual patients (f, Fsnc, ke1, ke2 are the same for all; BW is known;
kp1 and Ib are derived)."""

DEFAULT_IDENTIFIED = ("Gb", "Vmx", "kp3", "k1", "m4", "kmax", "kmin", "d", "ki")
"""Identified by default: the identifiability analysis (docs/models/glucose_twin.md) keeps these."""

LOGIT_PARAMETERS = frozenset({"b"})
"""Fractions identified on the logit scale, log(v / (1 - v)), instead of the log scale. b (the fraction of the meal
left in the stomach where gastric emptying is halfway down, Dalla Man 2007) must lie in (0, 1): its tanh slope is
5 / (2 (1 - b) D), which becomes a step at b = 1 and turns over beyond it. The 30 virtual patients have b from 0.56
to 0.99, and a log-normal prior fitted to them puts about 5 % of its mass above 1 (and the sampler's 6-SD box
reaches b = 2.1): a region where the model is not the published one and the posterior has a cliff. On the logit
scale every value is a valid b. Every other parameter is positive and unbounded above: log scale."""

TIED_PARAMETERS = {"m2": "m4", "m30": "m1"}
"""Parameters that the published model derives from another (Dalla Man 2007, insulin kinetics from the clearance
CL and the basal hepatic extraction HEb): m2 = 3/5 CL / (HEb Vi BW) and m4 = 2/5 CL / (Vi BW), so m2 = 3 / (2 HEb)
m4; m30 = HEb / (1 - HEb) m1. HEb is 0.6 in all 30 virtual patients (m2 = 2.5 m4 and m30 = 1.5 m1 in each, to
rounding: tests). Where the partner (value) is identified and the key is not, the key is not held at its population
value but follows the partner in the population's ratio (its population value *given* the partner): a held m2
beside an identified m4 is a hepatic extraction no patient has, and the fit bends m4 and the insulin sensitivities
to make up for it. (Vm0, which the published model derives from the basal production EGPb, k1 and k2, was derived
the same way in a trial and replayed "boluses x1.3" worse: docs/models/glucose_twin.md, seventh session.)"""

_PARAM_INDEX = {name: i for i, name in enumerate(PARAM_ORDER)}


def to_unconstrained(names: Sequence[str], values: FloatArray) -> FloatArray:
    """The sampler's coordinates of parameter *values* (natural units, columns in the order of *names*): log, or
    logit for :data:`LOGIT_PARAMETERS`."""
    v = np.asarray(values, dtype=np.float64)
    out = np.log(v)
    for j, name in enumerate(names):
        if name in LOGIT_PARAMETERS:
            col = v[..., j]
            if np.any((col <= 0.0) | (col >= 1.0)):
                raise ValidationError(f"{name} must lie in (0, 1) (a fraction), got {col}")
            out[..., j] = np.log(col / (1.0 - col))
    return np.asarray(out, dtype=np.float64)


def to_natural(names: Sequence[str], theta: FloatArray) -> FloatArray:
    """Inverse of :func:`to_unconstrained`: parameter values in their own units."""
    t = np.asarray(theta, dtype=np.float64)
    out = np.exp(t)
    for j, name in enumerate(names):
        if name in LOGIT_PARAMETERS:
            out[..., j] = 1.0 / (1.0 + np.exp(-t[..., j]))
    return np.asarray(out, dtype=np.float64)


_GB_PRIOR_SD = 0.25
"""Log-SD of the basal-glucose prior. The virtual patients all sit at 133-153 mg/dL on their own basal rate; a
real person's basal rate is rarely that exact, so Gb gets a wide prior and the overnight data decide it."""


def population_values(names: Sequence[str]) -> dict[str, FloatArray]:
    """Per-patient values of every model parameter plus ``Gb`` (basal glucose, mg/dL) for virtual patients."""
    cohort = load_cohort(list(names))
    values = {k: np.asarray(v, dtype=np.float64) for k, v in cohort.params.items()}
    values["Gb"] = cohort.x0[:, 3] / cohort.params["Vg"]
    return values


@dataclass(frozen=True, slots=True, kw_only=True)
class PopulationPrior:
    """Log-normal prior of the identified parameters and the values the others are fixed at.

    *mean*/*cov* are of the sampler's coordinates of *names* (natural logarithms; logits for
    :data:`LOGIT_PARAMETERS`, see :func:`to_unconstrained`); *fixed* holds every model parameter (per kg where the
    model is per kg) at the population value, BW, kp1 and Ib excepted (person-specific or derived). *tied* names
    the parameters that are not identified but follow their identified partner of :data:`TIED_PARAMETERS` in the
    ratio of their *fixed* values (empty, the default: every parameter not identified is held at its *fixed*
    value).
    """

    names: tuple[str, ...]
    mean: FloatArray
    cov: FloatArray
    fixed: dict[str, float]
    group: str
    members: tuple[str, ...]
    tied: tuple[str, ...] = ()
    coupling: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Held parameters that follow the identified ones (:func:`coupled_prior`): name -> slopes of its log value on
    the identified coordinates, about *coupling_center* (empty, the default: held at their *fixed* value)."""
    coupling_center: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        odd = [n for n, v in self.coupling.items() if n in self.names or n in self.tied or len(v) != len(self.names)]
        if odd or (self.coupling and len(self.coupling_center) != len(self.names)):
            raise ValidationError(
                f"coupling {odd or list(self.coupling)}: held, untied parameters with one slope per identified one "
                f"({len(self.names)}) and a centre of that length"
            )
        wrong = [t for t in self.tied if TIED_PARAMETERS.get(t) not in self.names or t in self.names]
        if wrong:
            raise ValidationError(
                f"tied {wrong}: each must be a key of {TIED_PARAMETERS} whose partner is identified and which is not "
                f"(identified: {list(self.names)})"
            )

    @property
    def dim(self) -> int:
        """Number of identified parameters."""
        return len(self.names)

    def logpdf(self, theta: FloatArray) -> FloatArray:
        """Log density (up to a constant) of each row of *theta* ``(B, dim)``."""
        diff = np.atleast_2d(theta) - self.mean
        sol = np.linalg.solve(self.cov, diff.T).T
        return np.asarray(-0.5 * np.sum(diff * sol, axis=1), dtype=np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> FloatArray:
        """*n* draws ``(n, dim)`` of the log parameters."""
        return np.asarray(rng.multivariate_normal(self.mean, self.cov, size=n), dtype=np.float64)

    def without(self, names: Sequence[str]) -> PopulationPrior:
        """The marginal prior of the other identified parameters, *names* fixed at their population values (the
        same prior as :func:`population_prior` with the smaller set: the mean and covariance are per-parameter and
        *fixed* holds every parameter)."""
        unknown = [n for n in names if n not in self.names]
        keep = [j for j, n in enumerate(self.names) if n not in names]
        if unknown or not keep:
            raise ValidationError(f"cannot drop {list(names)} from the identified {list(self.names)}")
        tied = tuple(t for t in self.tied if TIED_PARAMETERS[t] not in names)
        coupling = {n: tuple(v[j] for j in keep) for n, v in self.coupling.items()}
        center = tuple(self.coupling_center[j] for j in keep) if self.coupling else ()
        return PopulationPrior(names=tuple(self.names[j] for j in keep), mean=self.mean[keep].copy(),
                               cov=self.cov[np.ix_(keep, keep)].copy(), fixed=dict(self.fixed), group=self.group,
                               members=self.members, tied=tied, coupling=coupling,
                               coupling_center=center)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved with the posterior)."""
        return {
            "names": list(self.names), "mean": self.mean.tolist(), "cov": self.cov.tolist(), "fixed": self.fixed,
            "group": self.group, "members": list(self.members),
            "logit": [n for n in self.names if n in LOGIT_PARAMETERS], "tied": list(self.tied),
            "coupling": {n: list(v) for n, v in self.coupling.items()}, "coupling_center": list(self.coupling_center),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PopulationPrior:
        """Inverse of :meth:`to_dict` (a prior saved before :data:`TIED_PARAMETERS` has no ``tied``: none, so its
        posterior replays as it was fitted). A prior saved before the logit scale (no ``logit`` entry) that identifies a
        parameter of :data:`LOGIT_PARAMETERS` is refused: its mean and covariance are on the log scale."""
        names = tuple(d["names"])
        expected = [n for n in names if n in LOGIT_PARAMETERS]
        if list(d.get("logit", [])) != expected:
            raise ValidationError(
                f"prior saved with {list(d.get('logit', []))} on the logit scale, this version identifies {expected} "
                "on it (log scale before 2026-12-07): fit the twin again"
            )
        return cls(
            names=names, mean=np.asarray(d["mean"], dtype=np.float64),
            cov=np.asarray(d["cov"], dtype=np.float64), fixed={k: float(v) for k, v in d["fixed"].items()},
            group=str(d["group"]), members=tuple(d["members"]), tied=tuple(d.get("tied", ())),
            coupling={n: tuple(float(x) for x in v) for n, v in d.get("coupling", {}).items()},
            coupling_center=tuple(float(x) for x in d.get("coupling_center", ())),
        )  # fmt: skip


def population_prior(
    group: str = "all",
    *,
    identified: Sequence[str] = DEFAULT_IDENTIFIED,
    exclude: Sequence[str] = (),
    sd_inflation: float = 1.0,
    tie: bool = False,
) -> PopulationPrior:
    """The prior over *identified* from the virtual patients of *group* (``adult``, ``adolescent``, ``child``,
    ``all``), leaving out the patients in *exclude* (leave-one-out validation).

    The mean is the group's mean log value (logit for :data:`LOGIT_PARAMETERS`); the covariance is the
    within-group covariance pooled over all 30 patients (10 per group are too few for a covariance of their own),
    with the prior SDs multiplied by *sd_inflation*. Gb gets a wide prior (log-SD 0.25). Parameters not identified
    are fixed at the group's geometric mean, except, with *tie* (off by default: validated on fresh seeds only
    together with Vm0 identified, where it did not reach the x1.3 goal, docs/models/glucose_twin.md), those of
    :data:`TIED_PARAMETERS` whose partner is identified: they follow it in the population's ratio.
    """
    if group not in (*GROUPS, "all"):
        raise ValidationError(f"unknown population {group!r} (use one of {(*GROUPS, 'all')})")
    unknown = [n for n in identified if n not in CANDIDATE_PARAMETERS]
    if unknown or len(set(identified)) != len(identified) or not identified:
        raise ValidationError(f"identified parameters {list(identified)}: distinct names from {CANDIDATE_PARAMETERS}")
    everyone = load_cohort("all").names
    excluded = {e.casefold() for e in exclude}
    pool = tuple(n for n in everyone if n.casefold() not in excluded)
    members = tuple(n for n in pool if group == "all" or n.startswith(group + "#"))
    if len(members) < 3:
        raise ValidationError(f"population {group!r} without {list(exclude)} has {len(members)} patients, need 3")
    values = population_values(pool)
    logs = to_unconstrained(identified, np.stack([values[n] for n in identified], axis=1))
    groups = np.array([n.split("#")[0] for n in pool])
    centred = logs.copy()
    for g in set(groups):
        centred[groups == g] -= logs[groups == g].mean(axis=0)
    cov = centred.T @ centred / max(1, len(pool) - len(set(groups)))
    if "Gb" in identified:
        i = list(identified).index("Gb")
        cov[i, :] = cov[:, i] = 0.0
        cov[i, i] = _GB_PRIOR_SD**2
    scale = np.full(len(identified), sd_inflation)
    cov = cov * np.outer(scale, scale) + np.eye(len(identified)) * 1e-6
    in_group = np.array([n in members for n in pool])
    mean = logs[in_group].mean(axis=0)
    fixed = {k: float(np.exp(np.mean(np.log(v[in_group])))) for k, v in values.items() if k not in ("BW", "kp1", "Ib")}
    tied = tuple(t for t, partner in TIED_PARAMETERS.items() if tie and partner in identified and t not in identified)
    return PopulationPrior(names=tuple(identified), mean=mean, cov=cov, fixed=fixed, group=group, members=members,
                           tied=tied)  # fmt: skip


class PersonalModel:
    """Maps identified log parameters to full UVA/Padova parameter rows and states for one person.

    *body_weight_kg* is the person's weight; *basal_u_h* the reference basal rate at which Gb is the steady state
    (the rate in force at the start of the data).
    """

    def __init__(self, prior: PopulationPrior, *, body_weight_kg: float, basal_u_h: float) -> None:
        if body_weight_kg <= 0 or basal_u_h <= 0:
            raise ValidationError(f"body weight ({body_weight_kg} kg) and basal rate ({basal_u_h} U/h) must be > 0")
        self.prior = prior
        self.body_weight_kg = float(body_weight_kg)
        self.basal_u_h = float(basal_u_h)
        base = np.zeros(len(PARAM_ORDER))
        for name, value in prior.fixed.items():
            if name in _PARAM_INDEX:
                base[_PARAM_INDEX[name]] = value
        base[_PARAM_INDEX["BW"]] = self.body_weight_kg
        base[_PARAM_INDEX["u2ss"]] = basal_u_h / 60.0 * PMOL_PER_UNIT_INSULIN / self.body_weight_kg
        self._base = base
        self._columns = [(_PARAM_INDEX[n] if n != "Gb" else -1) for n in prior.names]

    def parameters(self, theta: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Full parameter rows ``(B, 32)`` in ``PARAM_ORDER`` and basal glucose ``(B,)`` for log (logit)
        parameters *theta* ``(B, dim)``; kp1 and Ib are set so the basal state is a steady state."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        p = np.tile(self._base, (theta.shape[0], 1))
        gb = np.full(theta.shape[0], self.prior.fixed["Gb"])
        values = to_natural(self.prior.names, theta)
        for j, col in enumerate(self._columns):
            if col < 0:
                gb = values[:, j]
            else:
                p[:, col] = values[:, j]
        if self.prior.coupling:
            shift = theta - np.asarray(self.prior.coupling_center)
            for name, slopes in self.prior.coupling.items():
                p[:, _PARAM_INDEX[name]] = self.prior.fixed[name] * np.exp(shift @ np.asarray(slopes))
        for name in self.prior.tied:
            partner = TIED_PARAMETERS[name]
            ratio = self.prior.fixed[name] / self.prior.fixed[partner]
            p[:, _PARAM_INDEX[name]] = p[:, _PARAM_INDEX[partner]] * ratio
        state = self._basal_state(p, gb)
        i = _PARAM_INDEX
        gp, gt, ip = state[:, 3], state[:, 4], state[:, 5]
        ib = ip / p[:, i["Vi"]]
        renal = p[:, i["ke1"]] * np.maximum(gp - p[:, i["ke2"]], 0.0)
        p[:, i["kp1"]] = (p[:, i["Fsnc"]] + renal + p[:, i["k1"]] * gp - p[:, i["k2"]] * gt
                          + p[:, i["kp2"]] * gp + p[:, i["kp3"]] * ib)  # fmt: skip
        p[:, i["Ib"]] = ib
        return np.ascontiguousarray(p), gb

    @staticmethod
    def _basal_state(p: FloatArray, gb: FloatArray) -> FloatArray:
        """States ``(B, 13)`` at basal insulin u2ss with plasma and interstitial glucose at *gb* (mg/dL)."""
        i = _PARAM_INDEX
        u2ss, kd, ka1, ka2 = p[:, i["u2ss"]], p[:, i["kd"]], p[:, i["ka1"]], p[:, i["ka2"]]
        m1, m2, m4, m30 = p[:, i["m1"]], p[:, i["m2"]], p[:, i["m4"]], p[:, i["m30"]]
        x = np.zeros((p.shape[0], 13))
        x[:, 10] = u2ss / (kd + ka1)
        x[:, 11] = kd * x[:, 10] / ka2
        x[:, 5] = u2ss / (m2 + m4 - m1 * m2 / (m1 + m30))
        x[:, 9] = m2 * x[:, 5] / (m1 + m30)
        x[:, 7] = x[:, 8] = x[:, 5] / p[:, i["Vi"]]
        gp = gb * p[:, i["Vg"]]
        k1, k2, km0, vm0 = p[:, i["k1"]], p[:, i["k2"]], p[:, i["Km0"]], p[:, i["Vm0"]]
        bq = vm0 + k2 * km0 - k1 * gp
        x[:, 4] = (-bq + np.sqrt(bq * bq + 4.0 * k2 * k1 * gp * km0)) / (2.0 * k2)
        x[:, 3] = x[:, 12] = gp
        return x

    def initial_state(self, p: FloatArray, glucose_mg_dl: float | FloatArray) -> FloatArray:
        """States ``(B, 13)`` at the basal insulin state with glucose *glucose_mg_dl* in plasma and interstitium
        (tissue glucose in equilibrium with it): the state at the first CGM reading when nothing earlier is known."""
        g = np.broadcast_to(np.asarray(glucose_mg_dl, dtype=np.float64), (p.shape[0],))
        return self._basal_state(p, np.maximum(g, 1.0))

    def simulate(
        self,
        theta: FloatArray,
        data: TherapyData,
        *,
        initial_glucose_mg_dl: float | FloatArray,
        minutes: int | None = None,
    ) -> FloatArray:
        """BG (mg/dL) ``(minutes + 1, B)`` of each parameter row of *theta* under the inputs recorded in *data*,
        from the basal state at *initial_glucose_mg_dl* (index k = minute k after the first reading)."""
        p, _ = self.parameters(theta)
        x = self.initial_state(p, initial_glucose_mg_dl)
        meal_state = np.zeros((p.shape[0], 5))
        meals, insulin = data.minute_inputs(minutes)
        start = x[None, :, 12] / p[None, :, _PARAM_INDEX["Vg"]]  # before run_inputs advances x in place
        bg = run_inputs(x, p, meal_state, meals, insulin)
        return np.concatenate([start, bg], axis=0)


SETTINGS_COVARIATES = ("cr_g_per_u", "cf_mg_dl_per_u")
"""Therapy settings a prior may be conditioned on (:func:`conditioned_prior`): the carbohydrate ratio (g/U) and
the correction factor (mg/dL/U) of the person's bolus calculator, taken on the log scale."""


def conditioned_prior(
    group: str,
    settings: dict[str, float],
    *,
    identified: Sequence[str] = DEFAULT_IDENTIFIED,
    exclude: Sequence[str] = (),
    conditioned: Sequence[str] | None = None,
    settings_log_sd: float = 0.0,
    tie: bool = False,
    select_by_loo: bool = False,
) -> PopulationPrior:
    """:func:`population_prior` conditioned on the person's therapy *settings* (keys of
    :data:`SETTINGS_COVARIATES`, natural units): a population regression of the log parameters on the log
    settings, slopes pooled within the age groups (as the covariance is), leave-one-out through *exclude*.

    For each parameter of *conditioned* (default: every one of :data:`CANDIDATE_PARAMETERS` but Gb, whose prior is
    deliberately wide) the log value is predicted as ``group mean + B (log settings - group mean of the settings)``;
    identified parameters get that as their prior mean, held ones as their value. The covariance is that of the
    population's residuals from the regression (the plain within-group deviations for parameters not conditioned),
    times the prediction's ``1 + d' (X'X)^-1 d`` for the person's centred settings d.

    *settings_log_sd*: the SD of the error of the person's settings on the log scale (the population's are taken as
    exact): the slopes are then those of the errors-in-variables regression (``(X'X + n s^2 I)^-1 X'Y``,
    attenuated) and the covariance carries ``B' s^2 B``, so that noisy settings move the prior less.
    *select_by_loo*: of *conditioned*, keep only the parameters whose leave-one-out prediction over the population
    (without the people in *exclude*) has a smaller squared error with the settings than with the group mean alone.
    Settings are clinicians' choices, so this is an empirical relation of the virtual population (the Quest table
    against the parameters), not a physiological law.
    """
    unknown = [k for k in settings if k not in SETTINGS_COVARIATES]
    bad = [k for k, v in settings.items() if not np.isfinite(v) or v <= 0]
    if unknown or bad or not settings:
        raise ValidationError(f"settings {settings}: give one or more of {SETTINGS_COVARIATES}, each finite and > 0")
    if settings_log_sd < 0:
        raise ValidationError(f"settings_log_sd {settings_log_sd} must be >= 0")
    base = population_prior(group, identified=identified, exclude=exclude, tie=tie)
    conditioned = tuple(n for n in CANDIDATE_PARAMETERS if n != "Gb") if conditioned is None else tuple(conditioned)
    wrong = [n for n in conditioned if n not in CANDIDATE_PARAMETERS]
    if wrong:
        raise ValidationError(f"conditioned {wrong}: not parameters of {CANDIDATE_PARAMETERS}")
    everyone = load_cohort("all")
    excluded = {e.casefold() for e in exclude}
    keep = np.array([n.casefold() not in excluded for n in everyone.names])
    pool = tuple(n for n, k in zip(everyone.names, keep, strict=True) if k)
    cols = [k for k in SETTINGS_COVARIATES if k in settings]
    table = {"cr_g_per_u": everyone.cr_g_per_u, "cf_mg_dl_per_u": everyone.cf_mg_dl_per_u}
    x = np.log(np.stack([table[k][keep] for k in cols], axis=1))
    values = population_values(pool)
    names = list(dict.fromkeys([*identified, *conditioned]))
    y = to_unconstrained(names, np.stack([values[n] for n in names], axis=1))
    groups = np.array([n.split("#")[0] for n in pool])
    in_group = np.array([n in base.members for n in pool])
    xc, yc = x.copy(), y.copy()
    for g in set(groups):
        xc[groups == g] -= x[groups == g].mean(axis=0)
        yc[groups == g] -= y[groups == g].mean(axis=0)
    dof = max(1, len(pool) - len(set(groups)) - len(cols))
    gram = xc.T @ xc
    slopes = np.linalg.solve(gram + len(pool) * settings_log_sd**2 * np.eye(len(cols)), xc.T @ yc)
    if select_by_loo:
        better = _loo_gain(x, y, groups) > 0
        conditioned = tuple(n for j, n in enumerate(names) if n in conditioned and better[j])
    slopes[:, [j for j, n in enumerate(names) if n not in conditioned]] = 0.0
    d = np.log(np.array([settings[k] for k in cols])) - x[in_group].mean(axis=0)
    predicted = y[in_group].mean(axis=0) + d @ slopes
    residual = yc - xc @ slopes
    k = [names.index(n) for n in identified]
    cov = residual[:, k].T @ residual[:, k] / dof + settings_log_sd**2 * slopes[:, k].T @ slopes[:, k]
    cov *= 1.0 + float(d @ np.linalg.solve(gram, d))
    if "Gb" in identified:
        i = list(identified).index("Gb")
        cov[i, :] = cov[:, i] = 0.0
        cov[i, i] = _GB_PRIOR_SD**2
    cov += np.eye(len(identified)) * 1e-6
    fixed = dict(base.fixed)
    for j, n in enumerate(names):
        if n in conditioned and n in fixed:
            fixed[n] = float(to_natural([n], predicted[None, j : j + 1])[0, 0])
    return PopulationPrior(names=base.names, mean=predicted[k], cov=cov, fixed=fixed, group=base.group,
                           members=base.members, tied=base.tied)  # fmt: skip


def _loo_gain(x: FloatArray, y: FloatArray, groups: np.ndarray) -> FloatArray:
    """Per column of *y*: the leave-one-out squared error of the group mean minus that of the group mean plus the
    within-group regression on *x* (positive: the regression predicts better)."""
    plain = np.zeros(y.shape[1])
    regressed = np.zeros(y.shape[1])
    for i in range(y.shape[0]):
        rest = np.arange(y.shape[0]) != i
        xc, yc = x[rest].copy(), y[rest].copy()
        g_rest = groups[rest]
        for g in set(g_rest):
            xc[g_rest == g] -= x[rest][g_rest == g].mean(axis=0)
            yc[g_rest == g] -= y[rest][g_rest == g].mean(axis=0)
        slopes = np.linalg.lstsq(xc, yc, rcond=None)[0]
        mine = rest & (groups == groups[i])
        base = y[mine].mean(axis=0)
        plain += (y[i] - base) ** 2
        regressed += (y[i] - base - (x[i] - x[mine].mean(axis=0)) @ slopes) ** 2
    return np.asarray(plain - regressed, dtype=np.float64)


SUBSYSTEMS = {
    "glucose": ("Vg", "k1", "k2", "Vm0", "Vmx", "Km0", "kp2", "kp3", "p2u", "ki"),
    "gut": ("kabs", "kmax", "kmin", "b", "d"),
    "insulin": ("m1", "m2", "m4", "m30", "Vi"),
    "subcutaneous": ("ka1", "ka2", "kd"),
    "sensor": ("ksc",),
}
"""The subsystems of the model (Dalla Man et al. 2007: glucose kinetics with production and utilisation, gut
absorption, insulin kinetics, subcutaneous insulin, the sensor's interstitial lag): :func:`coupled_prior` lets a
held parameter follow the identified parameters of its own subsystem."""


def coupled_prior(
    prior: PopulationPrior, *, exclude: Sequence[str] = (), select_by_loo: bool = True
) -> PopulationPrior:
    """*prior* with its held parameters following the identified ones of their subsystem (:data:`SUBSYSTEMS`): the
    log of a held parameter is the population's within-group regression on the identified coordinates of its
    subsystem, ``log fixed + (theta - mean) B``, about the group mean (the population conditional mean of the held
    parameter given the identified ones, where holding it at the group mean ignores their correlation; the m2 tie of
    :data:`TIED_PARAMETERS` is the exact case). Gb and tied parameters take no part. *exclude*: the people left out
    of the regression (those left out of *prior*); *select_by_loo*: couple only the held parameters whose
    leave-one-out prediction over that population is better than the group mean's.
    """
    everyone = load_cohort("all").names
    excluded = {e.casefold() for e in exclude}
    pool = tuple(n for n in everyone if n.casefold() not in excluded)
    values = population_values(pool)
    groups = np.array([n.split("#")[0] for n in pool])
    theta = to_unconstrained(prior.names, np.stack([values[n] for n in prior.names], axis=1))
    coupling: dict[str, tuple[float, ...]] = {}
    for members in SUBSYSTEMS.values():
        cols = [j for j, n in enumerate(prior.names) if n in members]
        held = [n for n in members if n not in prior.names and n not in prior.tied]
        if not cols or not held:
            continue
        y = np.log(np.stack([values[n] for n in held], axis=1))
        x = theta[:, cols]
        xc, yc = x.copy(), y.copy()
        for g in set(groups):
            xc[groups == g] -= x[groups == g].mean(axis=0)
            yc[groups == g] -= y[groups == g].mean(axis=0)
        slopes = np.linalg.lstsq(xc, yc, rcond=None)[0]
        keep = _loo_gain(x, y, groups) > 0 if select_by_loo else np.ones(len(held), dtype=bool)
        for i, name in enumerate(held):
            if keep[i]:
                full = np.zeros(prior.dim)
                full[cols] = slopes[:, i]
                coupling[name] = tuple(full.tolist())
    return replace(prior, coupling=coupling, coupling_center=tuple(prior.mean.tolist()) if coupling else ())
