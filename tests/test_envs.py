import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from toy_env import TIME_LIMIT, counter_env


def test_unknown_id_lists_valid_ids():
    with pytest.raises(envs.UnknownEnvError) as e:
        envs.canonical_id("CartPole-v9")
    msg = str(e.value)
    assert "CartPole-v9" in msg and "CartPole-v1" in msg and "ant" in msg and "\n" not in msg


def test_aliases():
    assert envs.canonical_id("cartpole") == "CartPole-v1"
    assert envs.canonical_id("half_cheetah") == "halfcheetah"
    assert envs.canonical_id("walker_2d") == "walker2d"
    assert envs.is_brax("ant") and not envs.is_brax("Pendulum-v1")


def test_time_limit_auto_reset_and_episode_stats():
    """Walk the counter env by hand and check every Timestep field against its known dynamics."""
    env = counter_env()
    step = jax.jit(env.step)
    obs, state = env.reset(jax.random.PRNGKey(0))
    seen = {"terminated": 0, "truncated": 0}
    ret, length = 0.0, 0
    for i in range(60):
        ts = step(jax.random.PRNGKey(i), state, 0)
        count, horizon = float(obs[0]) + 1, float(obs[1])
        ret, length = ret + 1 + count / 10, length + 1
        np.testing.assert_allclose(ts.final_obs, [count, horizon])
        assert bool(ts.terminated) == (count == horizon)
        assert bool(ts.truncated) == (count == TIME_LIMIT and horizon > TIME_LIMIT)
        assert np.isclose(ts.episode_return, ret) and int(ts.episode_length) == length
        if ts.terminated or ts.truncated:
            seen["terminated" if ts.terminated else "truncated"] += 1
            assert float(ts.obs[0]) == 0.0  # the next observation is a fresh reset
            ret, length = 0.0, 0
        else:
            np.testing.assert_allclose(ts.obs, ts.final_obs)
        obs, state = ts.obs, ts.state
    assert seen["terminated"] > 2 and seen["truncated"] > 2


def test_gymnax_cartpole_truncation_keeps_final_obs():
    env = envs.make("CartPole-v1", max_episode_steps=4)
    assert env.obs_shape == (4,) and env.action_spec == envs.ActionSpec(True, 2)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    obs, state = jax.vmap(env.reset)(keys)
    step = jax.jit(jax.vmap(env.step))
    for t in range(4):
        ts = step(keys, state, jnp.array([0, 1, 0]))
        state = ts.state
    assert ts.truncated.all() and not ts.terminated.any()
    assert (ts.episode_length == 4).all() and np.allclose(ts.episode_return, 4.0)
    assert not np.allclose(ts.obs, ts.final_obs)  # reset obs differs from the true final obs


def test_continuous_actions_are_clipped():
    """An env that echoes its action as the observation shows what reaches it."""
    spec = envs.ActionSpec(False, 2, np.array([-1.0, 0.0], np.float32), np.array([1.0, 3.0], np.float32))
    raw = envs.RawEnv(lambda k: (jnp.zeros(2), jnp.zeros(2)), lambda k, s, a: (a, a, 0.0, False), (2,), spec)
    env = envs.with_clipped_actions(envs.with_time_limit("echo", raw, 10))
    obs, state = env.reset(jax.random.PRNGKey(0))
    np.testing.assert_allclose(env.step(jax.random.PRNGKey(1), state, jnp.array([-5.0, 7.0])).final_obs, [-1.0, 3.0])
    np.testing.assert_allclose(env.step(jax.random.PRNGKey(1), state, jnp.array([0.5, 0.5])).final_obs, [0.5, 0.5])
    assert envs.make("Pendulum-v1").action_spec.high[0] == 2.0


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)) for n in (5, 17, 1, 40)]
    rms = envs.rms_init((3,))
    for b in batches:
        rms = envs.rms_update(rms, jnp.asarray(b))
    allx = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, allx.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, allx.var(0), rtol=1e-3)
    z = envs.normalize_obs(rms, jnp.asarray(allx))
    np.testing.assert_allclose(np.asarray(z).mean(0), 0.0, atol=1e-3)


def test_reward_scaler_tracks_discounted_returns():
    rng = np.random.default_rng(1)
    rewards, dones = rng.normal(size=(30, 2)), rng.random((30, 2)) < 0.2
    scaler, g, expected = envs.reward_scaler_init(2), np.zeros(2), []
    for r, d in zip(rewards, dones):
        scaler, out = envs.track_returns(scaler, jnp.asarray(r), jnp.asarray(d), 0.9)
        g = r + 0.9 * g
        expected.append(g.copy())
        np.testing.assert_allclose(out, g, rtol=1e-5)
        g = np.where(d, 0.0, g)
    rms = envs.rms_update(scaler.rms, jnp.asarray(np.array(expected)))
    assert np.isclose(envs.scale_reward(scaler._replace(rms=rms), 2.0), 2.0 / np.sqrt(np.var(expected) + 1e-8), rtol=1e-3)
