"""Gymnasium environments for insulin-dosing agents: one patient, or a whole cohort as a VectorEnv.

Each step lasts one CGM sample period (3 minutes for the Dexcom sensor). The action is the insulin rate
(U/min) delivered through the pump during the period; the observation is the CGM reading (mg/dL) at its end.
The default reward is minus the Kovatchev risk index (LBGI + HBGI components, 0 at 112.5 mg/dL) of the
period's mean blood glucose; pass ``reward=`` a function ``(bg_previous, bg_now) -> reward`` (arrays, one entry
per member) to change it. Episodes terminate when BG leaves ``[bg_low, bg_high]`` and are truncated after
``episode_minutes``. The vector env autoresets a finished member on the next step (Gymnasium's NEXT_STEP mode);
the single env follows Gymnasium's ``Env.step`` contract instead: once an episode has terminated or been
truncated, ``reset()`` must be called, and stepping before it raises :class:`EpisodeOverError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from gymnasium import Env, spaces
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode, VectorEnv

from medtwin.errors import MedtwinError
from medtwin.glucose.devices import CGMSensor, InsulinPump, pump_spec, sensor_spec
from medtwin.glucose.metrics import risk_components
from medtwin.glucose.patients import load_cohort
from medtwin.glucose.simulation import PatientBatch, meal_matrix
from medtwin.sim.model import FloatArray

__all__ = ["DEFAULT_MEALS", "EpisodeOverError", "GlucoseEnv", "GlucoseVectorEnv", "RewardFunction", "risk_reward"]

DEFAULT_MEALS: tuple[tuple[float, float], ...] = ((420.0, 45.0), (720.0, 70.0), (1080.0, 80.0))
"""The benchmark day: 07:00 45 g, 12:00 70 g, 18:00 80 g (minutes after midnight, grams)."""

RewardFunction = Callable[[FloatArray, FloatArray], FloatArray]


class EpisodeOverError(MedtwinError, ResetNeeded):  # type: ignore[misc]
    """:meth:`GlucoseEnv.step` was called with no episode running (before ``reset()``, or after it ended)."""


def risk_reward(bg_previous: FloatArray, bg_now: FloatArray) -> FloatArray:
    """Minus the Kovatchev risk index of the current glucose (0 is best)."""
    rl, rh = risk_components(np.clip(bg_now, 1.0, None))
    return np.asarray(-(rl + rh), dtype=np.float64)


class GlucoseVectorEnv(VectorEnv):  # type: ignore[misc]
    """A cohort of virtual patients stepped together; member i is patient ``patients[i]``."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        patients: Sequence[str] = ("adult#001",),
        *,
        meals: Sequence[tuple[float, float]] = DEFAULT_MEALS,
        randomize_meals: bool = False,
        sensor: str = "Dexcom",
        sensor_noise: bool = True,
        pump: str = "Insulet",
        episode_minutes: int = 1440,
        reward: RewardFunction = risk_reward,
        bg_low: float = 40.0,
        bg_high: float = 600.0,
    ) -> None:
        self.cohort = load_cohort(patients)
        self.num_envs = self.cohort.size
        self._sensor_spec = sensor_spec(sensor)
        self._sensor_noise = sensor_noise
        self._pump = InsulinPump(pump_spec(pump))
        self._st = round(self._sensor_spec.sample_time_min)
        self._meals = tuple(meals)
        self._randomize = randomize_meals
        self.episode_minutes = episode_minutes
        self.reward_fn = reward
        self.bg_low, self.bg_high = bg_low, bg_high
        self.single_observation_space = spaces.Box(0.0, 600.0, shape=(1,), dtype=np.float32)
        self.single_action_space = spaces.Box(0.0, float(self._pump.spec.max_basal), shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 600.0, shape=(self.num_envs, 1), dtype=np.float32)
        self.action_space = spaces.Box(
            0.0, float(self._pump.spec.max_basal), shape=(self.num_envs, 1), dtype=np.float32
        )
        self._patients = PatientBatch(self.cohort)
        self._rng = np.random.default_rng()
        self._seed_base = 0
        self._sensor = CGMSensor(self._sensor_spec, list(range(self.num_envs)), noise=sensor_noise)
        self._t = np.zeros(self.num_envs, dtype=np.int64)
        self._meal_plan = np.zeros((episode_minutes + self._st, self.num_envs))
        self._bg = self._patients.bg_mg_dl
        self._needs_reset = np.zeros(self.num_envs, dtype=bool)

    @property
    def basal_u_per_min(self) -> FloatArray:
        """Each member's steady-state basal rate (U/min), a sensible baseline action."""
        return self.cohort.basal_u_per_min

    def _plan(self, members: FloatArray) -> None:
        idx = np.flatnonzero(members)
        base = np.asarray(self._meals, dtype=np.float64).reshape(-1, 2)
        per = np.broadcast_to(base, (idx.size, *base.shape)).copy()
        if self._randomize and base.size:
            per[..., 0] += self._rng.normal(0.0, 30.0, per.shape[:2])
            per[..., 1] *= self._rng.uniform(0.7, 1.3, per.shape[:2])
        self._meal_plan[:, idx] = meal_matrix(self._meal_plan.shape[0], per, idx.size)

    def _reset_members(self, members: FloatArray) -> None:
        p = self._patients
        p.x[members] = self.cohort.x0[members]
        p.meal_state[members] = 0.0
        p.meal_state[members, 2] = p.x[members, 0] + p.x[members, 1]
        self._t[members] = 0
        self._plan(members)
        self._needs_reset[members] = False

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset every member; *seed* (int) seeds meal randomization and member i's sensor with seed + i."""
        if seed is not None:
            base = int(seed if isinstance(seed, int) else seed[0])
            self._rng = np.random.default_rng(base)
            self._sensor = CGMSensor(
                self._sensor_spec, [base + i for i in range(self.num_envs)], noise=self._sensor_noise
            )
        everyone = np.ones(self.num_envs, dtype=bool)
        self._reset_members(everyone)
        self._bg = self._patients.bg_mg_dl
        cgm = self._sensor.measure(self._bg)
        return cgm.astype(np.float32)[:, None], {"bg_mg_dl": self._bg.copy()}

    def step(self, actions: Any) -> tuple[np.ndarray, FloatArray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Deliver *actions* (U/min, shape (num_envs, 1) or (num_envs,)) for one sample period."""
        rate = np.asarray(actions, dtype=np.float64).reshape(self.num_envs)
        if not np.all(np.isfinite(rate)):
            raise ValueError("GlucoseVectorEnv.step: actions must be finite insulin rates (U/min)")
        resetting = self._needs_reset.copy()
        if resetting.any():
            self._reset_members(resetting)
        delivered = self._pump.basal(np.maximum(rate, 0.0))
        cols = np.arange(self.num_envs)
        rows = self._t[None, :] + np.arange(self._st)[:, None]
        meals = self._meal_plan[np.minimum(rows, self._meal_plan.shape[0] - 1), cols]
        bg_prev = self._bg
        bg, _ = self._patients.advance(meals, delivered)
        self._t += self._st
        if resetting.any():  # NEXT_STEP autoreset: a member being reset ignores its action
            self._reset_members(resetting)
            bg[:, resetting] = self._patients.bg_mg_dl[resetting]
        self._bg = bg[-1]
        cgm = self._sensor.measure(self._bg)
        reward = self.reward_fn(bg_prev, bg.mean(axis=0))
        terminated = (self._bg < self.bg_low) | (self._bg > self.bg_high)
        truncated = (self._t >= self.episode_minutes) & ~terminated
        reward = np.where(resetting, 0.0, reward)
        terminated &= ~resetting
        truncated &= ~resetting
        self._needs_reset = terminated | truncated
        info = {"bg_mg_dl": self._bg.copy(), "insulin_u_min": delivered, "cho_g": meals.sum(axis=0)}
        return cgm.astype(np.float32)[:, None], reward, terminated, truncated, info


class GlucoseEnv(Env):  # type: ignore[misc]
    """One virtual patient as a Gymnasium environment (the single-member case of :class:`GlucoseVectorEnv`)."""

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(self, patient: str = "adult#001", **kwargs: Any) -> None:
        self._vec = GlucoseVectorEnv((patient,), **kwargs)
        self._episode_over: str | None = "no episode has started: call reset() before the first step"
        self.observation_space = self._vec.single_observation_space
        self.action_space = self._vec.single_action_space

    @property
    def basal_u_per_min(self) -> float:
        """The patient's steady-state basal rate (U/min)."""
        return float(self._vec.basal_u_per_min[0])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode."""
        super().reset(seed=seed)
        obs, info = self._vec.reset(seed=seed)
        self._episode_over = None
        return obs[0], {k: v[0] for k, v in info.items()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Deliver *action* (U/min) for one sample period.

        Raises
        ------
        EpisodeOverError
            Before the first ``reset()``, or after a step returned ``terminated`` or ``truncated``: Gymnasium's
            single-env contract is that the caller resets (the vector env autoresets instead).
        """
        if self._episode_over is not None:
            raise EpisodeOverError(f"GlucoseEnv({self._vec.cohort.names[0]!r}).step: {self._episode_over}")
        obs, reward, terminated, truncated, info = self._vec.step(np.asarray(action, dtype=np.float64).reshape(1, 1))
        done, cut = bool(terminated[0]), bool(truncated[0])
        if done or cut:
            why = "terminated: glucose left the allowed range" if done else "truncated at episode_minutes"
            t_min = int(self._vec._t[0])
            self._episode_over = f"the episode ended ({why}) at minute {t_min}; call reset() to start a new one"
        return obs[0], float(reward[0]), done, cut, {k: v[0] for k, v in info.items()}
