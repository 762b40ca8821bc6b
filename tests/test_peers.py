"""benchmarks/peers.py: its gymnax adapter gives Rejax the pre-1.0 five-value step (without rejax),
and, where rejax is installed (benchmarks/requirements-peers.txt), Rejax's PPO trains through it with
ppo.py's settings."""

import copy
import importlib.util
import os
import sys

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("peers", os.path.join(ROOT, "benchmarks", "peers.py"))
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers  # dataclasses looks its module up while building Bench
_spec.loader.exec_module(peers)


@pytest.fixture(scope="module")
def cartpole():
    env, params = gymnax.make("CartPole-v1")
    return env, params, peers.FiveTupleStep(env)


def test_step_returns_five_values_done_is_terminated_or_truncated(cartpole):
    env, params, wrapped = cartpole
    key = jax.random.PRNGKey(0)
    _, state = wrapped.reset(key, params)
    limit = int(params.max_steps_in_episode)
    cases = {  # name: (state before the step, terminated, truncated) of gymnax's own step
        "running": (state, False, False),
        "truncated": (state.replace(time=limit - 1), False, True),
        "terminated": (state.replace(theta=jnp.float32(1.0)), True, False),
        "both": (state.replace(theta=jnp.float32(1.0), time=limit - 1), True, True),
    }
    for name, (s, term, trunc) in cases.items():
        six = env.step(key, s, 1, params)
        assert (bool(six[3]), bool(six[4])) == (term, trunc), name  # the cases are what they claim
        out = wrapped.step(key, s, 1, params)
        assert len(out) == 5, name
        obs, new_state, reward, done, info = out
        assert bool(done) == (term or trunc), name
        np.testing.assert_array_equal(obs, six[0])
        assert float(reward) == float(six[2])
        assert bool(info["terminated"]) == term and bool(info["truncated"]) == trunc
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), new_state, six[1]))


def test_adapter_forwards_the_rest_vmaps_and_deep_copies(cartpole):
    env, params, wrapped = cartpole
    assert wrapped.default_params == env.default_params
    assert wrapped.action_space(params).n == 2 and wrapped.observation_space(params).shape == (4,)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    obs, states = jax.vmap(wrapped.reset, in_axes=(0, None))(keys, params)
    out = jax.vmap(wrapped.step, in_axes=(0, 0, 0, None))(keys, states, jnp.array([0, 1, 0]), params)
    assert len(out) == 5 and out[3].shape == (3,) and out[3].dtype == jnp.bool_
    clone = copy.deepcopy(wrapped)  # Rejax deep-copies its config, environment included
    assert len(clone.step(keys[0], jax.tree.map(lambda x: x[0], states), 1, params)) == 5


def test_rejax_ppo_trains_through_the_adapter_with_ppo_settings():
    pytest.importorskip("rejax")
    import ppo

    bench = peers.Bench(num_seeds=2, total_timesteps=512, rejax_eval_freq=256, rejax_eval_episodes=2)
    args = ppo.parse_args(peers.ppo_argv(bench) + ["--num-steps", "64", "--minibatch-size", "64"])
    algo, derived = peers.make_rejax(args, bench)
    assert (algo.num_envs, algo.num_steps, algo.num_epochs, algo.num_minibatches) == (4, 64, 4, 4)
    assert algo.vf_coef == pytest.approx(0.5) and algo.ent_coef == pytest.approx(0.01)
    assert derived["iterations"] == 2 and derived["updates"] == 2 * 4 * 4
    rows = peers.config_rows(args, algo, derived, bench, 500)
    assert all(r["status"] in ("same", "equivalent", "differs") for r in rows)
    matched, m = peers.make_rejax(args, peers.Bench(num_seeds=2, total_timesteps=512, matched_eval=True))
    # ppo.py's interval: --eval-every 10,000 is more than the run, so one interval of both iterations.
    assert (m["eval_freq"], m["eval_episodes"], m["iterations"]) == (512, 10, 2)
    assert matched.skip_initial_evaluation
    r = peers.run_rejax(algo, [0, 1])
    assert r["env_steps_per_seed"] == 512
    assert (r["evaluations"], r["eval_episodes"]) == (3, 2)  # at step 0, then every 256 steps
    assert np.isfinite(r["final_eval_return_mean"]) and r["env_steps_per_second"] > 0
