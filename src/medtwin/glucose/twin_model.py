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
from dataclasses import dataclass
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
    "TIED_PARAMETERS",
    "PersonalModel",
    "PopulationPrior",
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
the same way in a trial and replayed "boluses x1.3" worse: docs/models/glucose_twin.md, "Variants tried and not
adopted".)"""

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

    def __post_init__(self) -> None:
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
        return PopulationPrior(names=tuple(self.names[j] for j in keep), mean=self.mean[keep].copy(),
                               cov=self.cov[np.ix_(keep, keep)].copy(), fixed=dict(self.fixed), group=self.group,
                               members=self.members, tied=tied)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (saved with the posterior)."""
        return {
            "names": list(self.names), "mean": self.mean.tolist(), "cov": self.cov.tolist(), "fixed": self.fixed,
            "group": self.group, "members": list(self.members),
            "logit": [n for n in self.names if n in LOGIT_PARAMETERS], "tied": list(self.tied),
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
