"""--torso and --torso-shared (torsos.py): shapes through every torso, discrete and continuous,
shared and separate; which gradients reach a shared torso; image observations stored as uint8 in
BPO's replay buffer; bad input is one line before anything compiles. The rest of the suite runs
with `--torso mlp`, the default (that it gives the numbers of the code before it is in docs/tests.md)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpo
import envs
import ppo
import torsos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINATAR_SHAPE, NATURE_SHAPE = (10, 10, 4), (36, 36, 2)  # the smallest images nature-cnn reads


def image_env(shape, discrete: bool) -> envs.Env:
    """Random images in [0, 1) and reward 1 every step; an episode ends with probability 0.1 or at 20 steps."""
    if discrete:
        spec = envs.ActionSpec(True, 3)
    else:
        spec = envs.ActionSpec(False, 2, np.full(2, -1.0, np.float32), np.ones(2, np.float32))

    def reset(key):
        obs = jax.random.uniform(key, shape)
        return obs, obs

    def step(key, state, action):
        obs = jax.random.uniform(key, shape)
        return obs, obs, jnp.float32(1.0), jax.random.uniform(jax.random.fold_in(key, 1)) < 0.1

    return envs.with_time_limit("images", envs.RawEnv(reset, step, shape, spec), 20)


TINY = dict(num_envs=2, num_steps=8, minibatch_size=8, num_epochs=1, total_timesteps=64, eval_every=16)
BPO_TINY = dict(TINY, replay_size=32, fqe_minibatch_size=16, mu_minibatch_size=16, fqe_epochs=1, mu_epochs=1)
KINDS = [("mlp", True), ("minatar-cnn", True), ("minatar-cnn", False), ("nature-cnn", True), ("nature-cnn", False)]


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
@pytest.mark.parametrize("kind,shared", KINDS, ids=[f"{k}-{'shared' if s else 'separate'}" for k, s in KINDS])
def test_network_shapes_through_every_torso(kind, shared, discrete):
    """pi, mu, V, Q and q_hat of bpo.py (and ppo.py's pi and V) at a batch of 5 images: logits or
    (mean, log_std) [5, n], V [5], Q and q_hat [5, n] or [5]; one CNN in params["torso"] when shared,
    one in every network's parameters otherwise, none for mlp."""
    shape = NATURE_SHAPE if kind == "nature-cnn" else MINATAR_SHAPE
    env = image_env(shape, discrete)
    n = env.action_spec.n
    trainer = bpo.make_train(bpo.Args(torso=kind, torso_shared=shared, **BPO_TINY), env)
    params = jax.eval_shape(trainer.init, jax.random.PRNGKey(0)).params
    assert ("torso" in params) == (kind != "mlp" and shared)
    for net in ("pi", "mu", "v", "q", "q_hat", "q_target"):
        assert ("torso" in params[net]["params"]) == (kind != "mlp" and not shared)
    obs = jnp.zeros((5, *shape))
    x = lambda p: trainer.torso.features(p, obs)  # noqa: E731
    feature_size = {"mlp": int(np.prod(shape)), "minatar-cnn": 8 * 8 * 16, "nature-cnn": 64}[kind]
    assert jax.eval_shape(x, params).shape == ((5, feature_size) if kind == "mlp" or shared else (5, *shape))
    apply = lambda net, key, *a: jax.eval_shape(lambda p: net.apply(p[key], x(p), *a), params)  # noqa: E731
    for key in ("pi", "mu"):
        dist = apply(trainer.actor, key)
        assert dist.shape == (5, n) if discrete else (dist[0].shape, dist[1].shape) == ((5, n), (5, n))
    assert apply(trainer.critic, "v").shape == (5,)
    action = None if discrete else jnp.zeros((5, n))
    for net, key in ((trainer.q_net, "q"), (trainer.q_hat_net, "q_hat")):
        assert apply(net, key, action).shape == ((5, n) if discrete else (5,))
    p = ppo.make_train(ppo.Args(torso=kind, torso_shared=shared, **TINY), env)
    ppo_params = jax.eval_shape(p.init, jax.random.PRNGKey(0)).params
    assert set(ppo_params) == {"pi", "v"} | ({"torso"} if "torso" in params else set())
    value = jax.eval_shape(lambda q: p.critic.apply(q["v"], p.torso.features(q, obs)), ppo_params)
    assert value.shape == (5,)


ITERATION_CASES = [("minatar-cnn", True, True), ("minatar-cnn", False, False), ("nature-cnn", True, False)]


@pytest.mark.parametrize("kind,shared,discrete", ITERATION_CASES)
def test_iteration_traces_with_a_torso(kind, shared, discrete):
    """A whole iteration of bpo.py (rollout, V-trace, PPO, FQE of Q and q_hat, mu) and of ppo.py
    traces with a CNN torso (jax.eval_shape: shapes only, nothing compiled), the state keeping its
    shapes."""
    env = image_env(NATURE_SHAPE if kind == "nature-cnn" else MINATAR_SHAPE, discrete)
    for module, settings in ((bpo, BPO_TINY), (ppo, TINY)):
        trainer = module.make_train(module.Args(torso=kind, torso_shared=shared, **settings), env)
        state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
        after, stats = jax.eval_shape(trainer.iteration, state)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), after) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
        assert all(v.shape == () for v in stats.values())


def forwarded(fn, state, names):
    """For each of params' entries `names`: whether fn(state)'s state holds it unchanged, read from
    fn's trace (its output is the input itself, no operation between): nothing compiled."""
    closed = jax.make_jaxpr(fn)(state)
    leaves_in = jax.tree_util.tree_leaves_with_path(state)
    leaves_out = jax.tree_util.tree_leaves_with_path(jax.eval_shape(fn, state)[0])
    var_in = {path: v for (path, _), v in zip(leaves_in, closed.jaxpr.invars)}
    var_out = {path: v for (path, _), v in zip(leaves_out, closed.jaxpr.outvars)}

    def unchanged(name):
        paths = [path for path in var_in if path[0].name == "params" and path[1].key == name]
        return all(var_out[path] is var_in[path] for path in paths)

    return {name: unchanged(name) for name in names}


def test_only_the_ppo_update_trains_a_shared_torso():
    """bpo.py with one shared minatar-cnn: with --freeze-pi (no PPO update) an iteration fits Q,
    q_hat and mu and returns the torso, pi and V as they were (FQE and mu's loss read the torso's
    features as fixed inputs); with the PPO update, the torso is trained with pi and V."""
    env = image_env(MINATAR_SHAPE, True)
    names = ("torso", "pi", "v", "q", "q_hat", "mu")
    for freeze in (True, False):
        trainer = bpo.make_train(bpo.Args(torso="minatar-cnn", freeze_pi=freeze, **BPO_TINY), env)
        state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
        assert forwarded(trainer.iteration, state, names) == dict(
            torso=freeze, pi=freeze, v=freeze, q=False, q_hat=False, mu=False
        )


def test_minatar_is_stored_as_uint8_and_read_back_exactly():
    """The replay buffer holds a rollout's MinAtar grids (0s and 1s) as uint8; replay_obs reads
    them back as the float32 the rollout saw."""
    args = bpo.Args(env_id="Breakout-MinAtar", **BPO_TINY)
    trainer = bpo.make_train(args, envs.make("Breakout-MinAtar"))
    state = trainer.init(jax.random.PRNGKey(0))
    after, traj, _ = jax.jit(trainer.rollout)(state)
    rb = after.replay
    assert rb.obs.dtype == rb.next_obs.dtype == jnp.uint8 and int(rb.size) == 16
    for stored, seen in ((rb.obs, traj.obs), (rb.next_obs, traj.final_obs)):
        read = np.asarray(bpo.replay_obs(stored[:16]))
        assert read.dtype == np.float32 and read.max() == 1.0
        np.testing.assert_array_equal(read, np.asarray(seen).reshape(16, *MINATAR_SHAPE))


def test_ppo_loss_trains_a_shared_torso_through_both_heads():
    """The gradient of ppo.py's loss reaches params["torso"] from pi's surrogate and from V's
    regression: each alone gives the torso a nonzero gradient."""
    env = image_env(MINATAR_SHAPE, True)
    trainer = ppo.make_train(ppo.Args(torso="minatar-cnn", **TINY), env)
    params = trainer.init(jax.random.PRNGKey(0)).params
    obs = jax.random.uniform(jax.random.PRNGKey(1), (6, *MINATAR_SHAPE))
    x = lambda p: trainer.torso.features(p, obs)  # noqa: E731
    pi_part = lambda p: jnp.sum(jax.nn.log_softmax(trainer.actor.apply(p["pi"], x(p)))[:, 0])  # noqa: E731
    v_part = lambda p: jnp.sum(trainer.critic.apply(p["v"], x(p)) ** 2)  # noqa: E731
    for part in (pi_part, v_part):
        grads = jax.grad(part)(params)["torso"]
        assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_auto_chooses_by_observation():
    assert torsos.resolve("auto", (4,)) == "mlp"
    assert torsos.resolve("auto", MINATAR_SHAPE) == "minatar-cnn"
    assert torsos.resolve("auto", (84, 84, 4)) == "nature-cnn"
    assert torsos.check("auto", "Breakout-MinAtar", MINATAR_SHAPE) == (
        "Breakout-MinAtar has image observations (10 x 10 x 4): --torso auto uses minatar-cnn"
    )
    assert torsos.check("auto", "CartPole-v1", (4,)) is None
    assert torsos.check("minatar-cnn", "Breakout-MinAtar", MINATAR_SHAPE) is None


@pytest.mark.parametrize(
    "script,flags,expected",
    [
        (
            "ppo.py",
            ["--torso", "minatar-cnn"],
            "--torso minatar-cnn needs image observations [height, width, channels]",
        ),
        ("bpo.py", ["--env-id", "Breakout-MinAtar", "--torso", "nature-cnn"], "--torso nature-cnn needs images of at"),
    ],
)
def test_bad_torso_is_one_line_before_compiling(script, flags, expected, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *flags, "--output-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr and "compiling" not in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and expected in lines[0], r.stderr
    assert not out.exists()
