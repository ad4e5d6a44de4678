"""Gymnasium environments: API conformance, seeding, vectorized stepping equals the single env."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

from medtwin.errors import MedtwinError
from medtwin.glucose.envs import EpisodeOverError, GlucoseEnv, GlucoseVectorEnv, risk_reward


def test_single_env_passes_gymnasium_checker() -> None:
    env = GlucoseEnv("adult#001")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the checker's advice to normalise the action space
        check_env(env, skip_render_check=True)


def test_basal_episode_is_truncated_after_a_day_and_seeding_repeats() -> None:
    env = GlucoseEnv("adult#001", episode_minutes=1440)
    obs, _info = env.reset(seed=7)
    assert obs.shape == (1,)
    first = []
    steps = 0
    while True:
        obs, reward, terminated, truncated, _ = env.step(np.array([env.basal_u_per_min]))
        first.append(obs[0])
        steps += 1
        assert reward <= 0.0
        if terminated or truncated:
            break
    assert truncated
    assert steps == 480
    env.reset(seed=7)
    again = [env.step(np.array([env.basal_u_per_min]))[0][0] for _ in range(20)]
    np.testing.assert_array_equal(first[:20], again)


def test_single_env_refuses_to_step_after_the_episode_ended_until_reset() -> None:
    """Gymnasium's Env.step contract: after terminated or truncated, reset() must be called. Starting a new
    episode silently (the vector env's autoreset) would hand an agent a transition across two episodes."""
    env = GlucoseEnv("adult#001", sensor_noise=False, bg_low=100.0)
    with pytest.raises(EpisodeOverError, match=r"call reset\(\) before the first step"):
        env.step(np.array([0.0]))
    obs0, _ = env.reset(seed=1)
    terminated = False
    for _ in range(400):
        _obs, _reward, terminated, truncated, info = env.step(np.array([0.5]))  # an overdose ends the episode
        assert not truncated
        if terminated:
            break
    assert terminated
    assert info["bg_mg_dl"] < 100.0
    with pytest.raises(
        EpisodeOverError,
        match=r"the episode ended \(terminated: glucose left the allowed range\) at minute \d+; call reset\(\)",
    ) as info_:
        env.step(np.array([0.0]))
    assert isinstance(info_.value, MedtwinError)
    assert isinstance(info_.value, ResetNeeded)  # what Gymnasium's own OrderEnforcing wrapper raises
    obs, _ = env.reset(seed=1)
    assert obs[0] == obs0[0]
    env.step(np.array([0.0]))  # a fresh episode steps again

    short = GlucoseEnv("adult#001", episode_minutes=6)
    short.reset(seed=0)
    assert short.step(np.array([0.0]))[3] is False
    assert short.step(np.array([0.0]))[3] is True
    with pytest.raises(EpisodeOverError, match=r"\(truncated at episode_minutes\) at minute 6;"):
        short.step(np.array([0.0]))


def test_vector_env_steps_cohort_like_single_envs() -> None:
    names = ("adult#001", "child#004", "adolescent#007")
    vec = GlucoseVectorEnv(names, sensor_noise=False)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    vec.reset(seed=0)
    singles = [GlucoseEnv(n, sensor_noise=False) for n in names]
    for s in singles:
        s.reset(seed=0)
    actions = np.array([[0.05], [0.0], [0.03]])
    for _ in range(60):
        obs, reward, terminated, _, _ = vec.step(actions)
        for i, s in enumerate(singles):
            o, r, *_ = s.step(actions[i])
            assert o[0] == obs[i, 0]
            assert r == reward[i]
    assert obs.shape == (3, 1)
    assert vec.observation_space.shape == (3, 1)
    assert not terminated.any()


def test_vector_env_terminates_and_autoresets_next_step() -> None:
    vec = GlucoseVectorEnv(("adult#001", "adult#002"), sensor_noise=False, bg_low=100.0)
    obs0, _ = vec.reset(seed=1)
    done_at = None
    for k in range(400):
        obs, reward, terminated, _truncated, info = vec.step(np.array([[0.5], [0.0]]))  # overdose member 0
        if terminated[0]:
            done_at = k
            break
    assert done_at is not None
    assert info["bg_mg_dl"][0] < 100.0
    obs, reward, *_ = vec.step(np.array([[0.5], [0.0]]))
    assert reward[0] == 0.0
    assert obs[0, 0] == obs0[0, 0]  # the reset observation (noise-free sensor)


def test_custom_reward_and_default_risk_reward() -> None:
    assert risk_reward(np.array([0.0]), np.array([112.5]))[0] > -0.01
    vec = GlucoseVectorEnv(("adult#001",), reward=lambda prev, now: now - prev)
    vec.reset(seed=0)
    _, reward, *_ = vec.step(np.array([[0.0]]))
    assert reward.shape == (1,)
