"""MuJoCo Playground's DM Control Suite behind envs/ (optional: the tests that build an environment
skip when `playground` is not installed). One small task, a short time limit, few jitted steps."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK, LIMIT, N_ENVS = "CartpoleSwingup", 20, 2


@pytest.fixture(scope="module")
def playground():
    return pytest.importorskip("mujoco_playground")


def test_ids_are_registered_without_importing_playground():
    assert envs.canonical_id("CheetahRun") == "CheetahRun"
    assert envs.is_playground("WalkerWalk") and not envs.is_playground("walker2d")
    assert not envs.is_brax("CheetahRun") and len(envs.PLAYGROUND_IDS) == len(set(envs.PLAYGROUND_IDS))
    assert not set(envs.PLAYGROUND_IDS) & set(envs.GYMNAX_IDS + envs.BRAX_IDS)
    with pytest.raises(envs.UnknownEnvError) as e:
        envs.canonical_id("CheetahWalk")
    assert "HumanoidRun" in str(e.value) and "ant" in str(e.value)
    code = (
        "import sys, envs; envs.canonical_id('CheetahRun'); envs.is_playground('HopperHop'); "
        "sys.exit('mujoco_playground' in sys.modules or 'mujoco' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_missing_playground_is_a_one_line_install_hint(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mujoco_playground" else find_spec(name, *a)
    )
    with pytest.raises(ImportError) as e:
        envs.make("CheetahRun")
    assert "CheetahRun" in str(e.value) and "pip install" in str(e.value) and "\n" not in str(e.value)


def test_static_ids_equal_the_registry(playground):
    from mujoco_playground import registry

    assert envs.PLAYGROUND_IDS == tuple(registry.dm_control_suite.ALL_ENVS)


def test_unknown_backend(playground):
    with pytest.raises(ValueError, match="mjx"):
        envs.make(TASK, backend="spring")


def test_wrapper_contract(playground):
    """Time limit, auto-reset, the true final observation, episode statistics, specs."""
    assert envs.make(TASK).max_episode_steps == 1000  # Playground's own episode_length
    env = envs.make(TASK, max_episode_steps=LIMIT)
    assert env.id == TASK and env.obs_shape == (5,) and env.max_episode_steps == LIMIT
    spec = env.action_spec
    assert not spec.discrete and spec.n == 1
    np.testing.assert_array_equal(spec.low, [-1.0])
    np.testing.assert_array_equal(spec.high, [1.0])
    assert spec.low.dtype == spec.high.dtype == np.float32

    keys = jax.random.split(jax.random.PRNGKey(0), N_ENVS)
    obs, state = jax.jit(jax.vmap(env.reset))(keys)
    assert obs.shape == (N_ENVS, *env.obs_shape) and obs.dtype == jnp.float32
    step = jax.jit(jax.vmap(env.step))
    actions = jnp.array([[1.0], [-1.0]])  # push the carts hard: the state moves away from reset
    rewards, n_done = [], 0
    prev_obs = None  # the observation before each step
    for t in range(1, 2 * LIMIT + 3):
        ts = step(jax.random.split(jax.random.PRNGKey(t), N_ENVS), state, actions)
        assert ts.obs.shape == ts.final_obs.shape == (N_ENVS, *env.obs_shape)
        assert not ts.terminated.any()  # DM Control ends an episode only on a diverged simulation
        rewards.append(np.asarray(ts.reward))
        length = (t - 1) % LIMIT + 1
        assert (ts.episode_length == length).all()
        np.testing.assert_allclose(ts.episode_return, np.sum(rewards[-length:], axis=0), rtol=1e-5)
        if length == LIMIT:
            n_done += 1
            assert ts.truncated.all()
            # The next observation is a fresh reset; final_obs is where the episode really ended.
            assert (np.abs(ts.final_obs - ts.obs).max(axis=1) > 1.0).all()
            np.testing.assert_allclose(ts.final_obs, prev_obs, atol=0.3)  # one step (0.01 s) on
            assert (np.abs(ts.obs[:, 0]) < 0.1).all() and (ts.obs[:, 1] < -0.99).all()  # cart centred, pole down
            assert (ts.state.t == 0).all() and (ts.state.episode_return == 0).all()
        else:
            assert not ts.truncated.any()
            np.testing.assert_array_equal(ts.obs, ts.final_obs)
        prev_obs, state = ts.obs, ts.state
    assert n_done == 2 and np.abs(np.array(rewards)).sum() > 0


def test_bpo_on_a_playground_task_end_to_end(playground, tmp_path):
    """bpo.py on CartpoleSwingup, a tiny budget (compilation dominates, as in the MJX smoke test)."""
    import bpo

    args = bpo.Args(
        env_id=TASK,
        num_seeds=2,
        total_timesteps=512,
        num_envs=4,
        num_steps=64,
        minibatch_size=128,
        num_epochs=1,
        replay_size=256,
        fqe_epochs=1,
        mu_epochs=1,
        eval_every=256,
        eval_episodes=2,
        max_episode_steps=50,
        output_dir=str(tmp_path),
    )
    summary = bpo.run(args)
    assert summary["completed"] and summary["env_steps"] == 512
    assert np.all(np.isfinite(summary["final_eval_return"]))
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "params.msgpack").exists()
