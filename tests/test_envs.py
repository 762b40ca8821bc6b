import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy_env import TIME_LIMIT, raw_counter_env

import envs


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


@pytest.mark.parametrize("mode", envs.RESET_MODES)
def test_time_limit_auto_reset_and_episode_stats(mode):
    """Walk the counter env by hand and check every Timestep field against its known dynamics
    (both reset modes: chunked, the CPU's, and select, the GPU's)."""
    env = envs.with_time_limit("counter", raw_counter_env(), TIME_LIMIT, reset_mode=mode)
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


@pytest.mark.parametrize("mode", envs.RESET_MODES)
def test_gymnax_cartpole_truncation_keeps_final_obs(mode):
    env = envs.make("CartPole-v1", max_episode_steps=4, reset_mode=mode)
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
    assert np.isclose(
        envs.scale_reward(scaler._replace(rms=rms), 2.0), 2.0 / np.sqrt(np.var(expected) + 1e-8), rtol=1e-3
    )


# ---------------------------------------------------------------------------------------------
# Resets only where done (envs.core._reset_where) against the old always-reset step
# ---------------------------------------------------------------------------------------------
def always_reset_step(raw, max_episode_steps, pool=1):
    """The reference, the plain way: every step computes raw.reset for every environment and
    selects it where done (the step with_time_limit had before resets were computed only where
    done). With a pool of k > 1 starts, every step draws k starts (raw.reset of split(reset key,
    k)) and selects: where done, the next spare if one is left (in order), else the first drawn
    start, keeping the others as the spares."""

    def step(key, state, action):
        key_step, key_reset = jax.random.split(key)
        obs, inner, reward, terminated = raw.step(key_step, state.inner, action)
        reward = jnp.asarray(reward, jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        t = state.t + 1
        episode_return = state.episode_return + reward
        truncated = (t >= max_episode_steps) & ~terminated
        done = terminated | truncated
        if pool == 1:
            keep = lambda new, old: jnp.where(done, new, old)
            next_obs, next_inner = jax.tree.map(keep, raw.reset(key_reset), (obs, inner))
            spares = ()
        else:
            drawn = jax.vmap(raw.reset)(jax.random.split(key_reset, pool))
            spare_obs, spare_inner, left = state.pool
            take, draw = done & (left > 0), done & (left == 0)
            j = jnp.clip(pool - 1 - left, 0, pool - 2)
            pick = lambda spare, new, old: jnp.where(take, spare[j], jnp.where(draw, new[0], old)).astype(
                jnp.result_type(old)
            )
            next_obs, next_inner = pick(spare_obs, drawn[0], obs), jax.tree.map(pick, spare_inner, drawn[1], inner)
            keep = lambda spare, new: jnp.where(draw, new[1:], spare).astype(spare.dtype)
            spares = (*jax.tree.map(keep, (spare_obs, spare_inner), drawn), jnp.where(draw, pool - 1, left - take))
        next_state = envs.core.WrapperState(
            next_inner, jnp.where(done, 0, t), jnp.where(done, 0.0, episode_return), spares
        )
        return envs.Timestep(next_obs, next_state, reward, terminated, truncated, obs, episode_return, t)

    return step


def rollout(env_reset, env_step, spec, num_seeds, num_envs, num_steps):
    """Steps of num_envs environments vmapped inside num_seeds seeds (as the scripts and
    throughput.py nest them), in a scan under jit; every Timestep stacked [seeds, steps, envs]."""

    def one_seed(key):
        k_reset, key = jax.random.split(key)
        _, state = jax.vmap(env_reset)(jax.random.split(k_reset, num_envs))

        def body(carry, _):
            state, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            if spec.discrete:
                action = jax.random.randint(k_act, (num_envs,), 0, spec.n)
            else:
                action = jax.random.uniform(k_act, (num_envs, spec.n), minval=spec.low, maxval=spec.high)
            ts = jax.vmap(env_step)(jax.random.split(k_env, num_envs), state, action)
            return (ts.state, key), ts

        return jax.lax.scan(body, (state, key), None, length=num_steps)[1]

    keys = jax.random.split(jax.random.PRNGKey(42), num_seeds)
    return jax.jit(jax.vmap(one_seed))(keys)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", envs.RESET_MODES)
@pytest.mark.parametrize("which", ["counter", "cartpole"])
def test_reset_only_where_done_equals_always_reset(which, mode):
    """Nested vmap (5 environments in each of 3 seeds: 15, not a multiple of the reset chunk),
    scan, jit: every field, state included, equals the always-reset reference exactly, for the
    same keys. Episodes end mid-rollout, several at once and (CartPole, every episode truncated
    at step 4 by a time limit) all at once. The select mode (no control flow: a start drawn for
    every environment at every step) is that reference, so it gives the same numbers too."""
    if which == "counter":
        raw, limit = raw_counter_env(), TIME_LIMIT
    else:
        from envs.gymnax_envs import make_gymnax

        raw, limit = make_gymnax("CartPole-v1")[0], 4
    env = envs.with_time_limit(which, raw, limit, reset_mode=mode)
    num_seeds, num_envs, num_steps = 3, 5, 24
    ts = rollout(env.reset, env.step, raw.action_spec, num_seeds, num_envs, num_steps)
    ref = rollout(env.reset, always_reset_step(raw, limit), raw.action_spec, num_seeds, num_envs, num_steps)
    assert_trees_equal(ts, ref)
    done = np.asarray(ts.terminated | ts.truncated).transpose(1, 0, 2)  # [steps, seeds, envs]
    per_step = done.reshape(num_steps, -1).sum(1)  # the flattened batch's dones at each step
    assert (per_step > 0).sum() >= 4  # episodes end at several steps...
    assert (per_step > envs.core.reset_chunk(num_seeds * num_envs)).any()  # ...some steps need several chunks
    if which == "cartpole":
        assert (per_step == num_seeds * num_envs).sum() == num_steps // limit  # all at once, at the limit
    if which == "counter":
        assert ((per_step > 0) & (per_step < num_seeds * num_envs)).any() and (per_step == 0).any()


@pytest.mark.parametrize("mode", envs.RESET_MODES)
def test_reset_where_done_gives_fresh_starts_and_true_final_obs(mode):
    """Under nested vmap: where done, the next observation is raw.reset of this step's reset key
    (split(key)[1], as before), every start is a new random one, and final_obs is the raw step's
    observation; where not done, the state is the raw step's, untouched."""
    from envs.gymnax_envs import make_gymnax

    raw = make_gymnax("CartPole-v1")[0]
    env = envs.with_time_limit("CartPole-v1", raw, 6, reset_mode=mode)
    num_seeds, num_envs = 2, 3
    keys = jax.random.split(jax.random.PRNGKey(3), num_seeds * num_envs).reshape(num_seeds, num_envs, 2)
    nested = lambda f: jax.jit(jax.vmap(jax.vmap(f)))
    obs, state = nested(env.reset)(keys)
    step, raw_step, raw_reset = nested(env.step), nested(raw.step), nested(raw.reset)
    starts = [np.asarray(obs).reshape(-1, 4)]
    for t in range(20):
        keys = jax.random.split(jax.random.PRNGKey(100 + t), num_seeds * num_envs).reshape(num_seeds, num_envs, 2)
        action = jnp.full((num_seeds, num_envs), t % 2)
        ts = step(keys, state, action)
        k_step, k_reset = jnp.moveaxis(jax.vmap(jax.vmap(jax.random.split))(keys), 2, 0)
        final_obs, inner, _, _ = raw_step(k_step, state.inner, action)
        np.testing.assert_array_equal(ts.final_obs, final_obs)
        done = np.asarray(ts.terminated | ts.truncated)
        reset_obs = np.asarray(raw_reset(k_reset)[0])
        np.testing.assert_array_equal(np.asarray(ts.obs)[done], reset_obs[done])
        np.testing.assert_array_equal(np.asarray(ts.obs)[~done], np.asarray(final_obs)[~done])
        assert not np.isclose(np.asarray(ts.obs)[done], np.asarray(ts.final_obs)[done]).all(axis=-1).any()
        for a, b in zip(jax.tree.leaves(ts.state.inner), jax.tree.leaves(inner)):
            np.testing.assert_array_equal(np.asarray(a)[~done], np.asarray(b)[~done])
        starts.append(np.asarray(ts.obs)[done])
        state = ts.state
    starts = np.concatenate(starts)
    assert len(starts) >= 4 * num_seeds * num_envs  # the time limit alone ends 3 episodes each
    assert len(np.unique(starts, axis=0)) == len(starts)  # no start repeats another


def test_reset_where_done_resets_only_done_environments():
    """Under vmap the reset runs for the done environments' chunks only: a raw reset that counts
    its calls (a debug callback, called once per environment it resets) is called on no step
    where nothing is done, and on the done environments' chunks otherwise."""
    calls = []
    raw = raw_counter_env()

    def counting_reset(key):
        jax.debug.callback(lambda: calls.append(1))
        return raw.reset(key)

    env = envs.with_time_limit("counter", raw._replace(reset=counting_reset), TIME_LIMIT)
    num_envs = 7
    chunk = envs.core.reset_chunk(num_envs)
    keys = jax.random.split(jax.random.PRNGKey(0), num_envs)
    _, state = jax.vmap(raw.reset)(keys)
    state = envs.core.WrapperState(state, jnp.zeros(num_envs, jnp.int32), jnp.zeros(num_envs))
    step = jax.jit(jax.vmap(env.step))
    expected = 0
    for t in range(12):
        calls.clear()
        ts = step(jax.random.split(jax.random.PRNGKey(t), num_envs), state, jnp.zeros(num_envs, jnp.int32))
        jax.effects_barrier()
        num_done = int((ts.terminated | ts.truncated).sum())
        assert len(calls) == chunk * -(-num_done // chunk)
        expected += num_done > 0
        state = ts.state
    assert expected >= 3


@pytest.mark.parametrize("mode", envs.RESET_MODES)
def test_reset_where_done_with_unbatched_state(mode):
    """vmap over keys only (one state and action shared by every environment) still works."""
    env = envs.with_time_limit("counter", raw_counter_env(), TIME_LIMIT, reset_mode=mode)
    _, state = env.reset(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    for _ in range(4):  # the horizon is at most 5 (the time limit): this episode ends by then
        ts = jax.vmap(env.step, in_axes=(0, None, None))(keys, state, 0)
        if bool(ts.terminated[0] | ts.truncated[0]):
            break
        state = jax.tree.map(lambda x: x[0], ts.state)
    ref = jax.vmap(always_reset_step(raw_counter_env(), TIME_LIMIT), in_axes=(0, None, None))(keys, state, 0)
    assert_trees_equal(ts, ref)
    assert bool(ts.terminated[0] | ts.truncated[0])


# ---------------------------------------------------------------------------------------------
# A pool of starts (with_time_limit's reset_pool) against the plain always-draw reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["counter", "cartpole"])
def test_reset_pool_equals_always_draw_reference(which):
    """reset_pool=3 under nested vmap (5 environments in each of 3 seeds), scan, jit: every field,
    the pool included, equals the plain always-draw reference exactly, for the same keys; the
    rollout both takes spares and draws new starts, at several environments at once."""
    if which == "counter":
        raw, limit = raw_counter_env(), TIME_LIMIT
    else:
        from envs.gymnax_envs import make_gymnax

        raw, limit = make_gymnax("CartPole-v1")[0], 4
    env = envs.with_time_limit(which, raw, limit, reset_pool=3)
    num_seeds, num_envs, num_steps = 3, 5, 30
    ts = rollout(env.reset, env.step, raw.action_spec, num_seeds, num_envs, num_steps)
    ref = rollout(env.reset, always_reset_step(raw, limit, pool=3), raw.action_spec, num_seeds, num_envs, num_steps)
    assert_trees_equal(ts, ref)
    done = np.asarray(ts.terminated | ts.truncated)
    left = np.asarray(ts.state.pool[2])
    drew = done & (left == 2)  # after a draw two spares are left; after taking one, 1 or 0
    took = done & (left < 2)
    assert drew.sum() >= num_seeds * num_envs and took.sum() >= num_seeds * num_envs
    assert (drew.transpose(1, 0, 2).reshape(num_steps, -1).sum(1) > envs.core.reset_chunk(num_seeds * num_envs)).any()


def test_reset_pool_gives_fresh_starts_and_draws_once_per_pool():
    """reset_pool=4 on CartPole (every episode truncated at step 6): no start repeats another, and
    raw.reset runs (a debug callback counts its calls) only on steps where an environment with no
    spare left ends, for its chunk of environments, 4 starts each."""
    from envs.gymnax_envs import make_gymnax

    raw = make_gymnax("CartPole-v1")[0]
    calls = []

    def counting_reset(key):  # under vmap a call may receive a batch of keys: count the keys
        jax.debug.callback(lambda k: calls.append(np.asarray(k).size // 2), jax.random.key_data(key))
        return raw.reset(key)

    pool, num_envs = 4, 6
    env = envs.with_time_limit("CartPole-v1", raw._replace(reset=counting_reset), 6, reset_pool=pool)
    obs, state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), num_envs))
    step = jax.jit(jax.vmap(env.step))
    chunk = envs.core.reset_chunk(num_envs)
    starts, draws = [np.asarray(obs)], 0
    for t in range(60):
        calls.clear()
        ts = step(jax.random.split(jax.random.PRNGKey(100 + t), num_envs), state, jnp.full(num_envs, t % 2))
        jax.effects_barrier()
        done = np.asarray(ts.terminated | ts.truncated)
        drew = done & (np.asarray(state.pool[2]) == 0)
        assert sum(calls) == chunk * pool * -(-int(drew.sum()) // chunk)
        draws += drew.sum()
        starts.append(np.asarray(ts.obs)[done])
        state = ts.state
    starts = np.concatenate(starts)
    assert len(starts) >= 10 * num_envs
    assert draws * pool >= len(starts) - num_envs and draws < len(starts) / 2  # most starts were spares
    assert len(np.unique(starts, axis=0)) == len(starts)


def test_physics_backends_draw_a_pool_of_starts():
    """envs.make gives Brax (and Playground) environments a pool of PHYSICS_RESET_POOL starts and
    gymnax ones none (shapes only: nothing is compiled); in the select mode, none either."""
    brax_state = jax.eval_shape(envs.make("inverted_pendulum", reset_mode="chunked").reset, jax.random.PRNGKey(0))[1]
    assert brax_state.pool[0].shape[0] == envs.PHYSICS_RESET_POOL - 1 > 0
    assert jax.eval_shape(envs.make("CartPole-v1").reset, jax.random.PRNGKey(0))[1].pool == ()
    select = envs.make("inverted_pendulum", reset_mode="select")
    assert jax.eval_shape(select.reset, jax.random.PRNGKey(0))[1].pool == ()


def test_default_reset_mode(monkeypatch):
    """chunked on a CPU, select elsewhere; BPO_ENV_RESET forces either, and a bad value is a
    one-line error of the scripts."""
    import runner

    monkeypatch.delenv("BPO_ENV_RESET", raising=False)
    assert envs.default_reset_mode() == ("chunked" if jax.default_backend() == "cpu" else "select")
    for mode in envs.RESET_MODES:
        monkeypatch.setenv("BPO_ENV_RESET", mode)
        assert envs.default_reset_mode() == mode
        assert runner.versions()["env_reset"] == mode
    monkeypatch.setenv("BPO_ENV_RESET", "sometimes")
    with pytest.raises(runner.ConfigError, match="BPO_ENV_RESET"):
        runner.make_env(type("A", (), dict(env_id="CartPole-v1"))())


@pytest.mark.slow
def test_select_reset_mjx():
    """The select mode on Brax MJX (inverted_pendulum): every field equals the always-reset
    reference exactly (the same computation), episodes end and restart from fresh starts."""
    from envs.brax_envs import make_brax

    raw, limit = make_brax("inverted_pendulum"), 3
    env = envs.with_time_limit("inverted_pendulum", raw, limit, reset_mode="select")
    ts = rollout(env.reset, env.step, raw.action_spec, 2, 3, 7)
    ref = rollout(env.reset, always_reset_step(raw, limit), raw.action_spec, 2, 3, 7)
    assert_trees_equal(ts, ref)
    assert (np.asarray(ts.terminated | ts.truncated).sum(1) >= 2).all()


def test_reset_only_where_done_mjx():
    """Brax on MJX, the small inverted_pendulum (compilation dominates: about a minute on a 2-core
    CPU), with a pool of 2 starts as envs.make gives it one: observations, rewards and episode
    ends equal the always-draw reference bitwise; the physics state to float rounding (a reset of
    a chunk of environments may round differently in the last bit from one of the whole batch, in
    forward-pass fields such as qacc that the next step recomputes)."""
    from envs.brax_envs import make_brax

    raw, limit = make_brax("inverted_pendulum"), 3
    env = envs.with_time_limit("inverted_pendulum", raw, limit, reset_pool=2, reset_mode="chunked")
    ts = rollout(env.reset, env.step, raw.action_spec, 2, 3, 7)
    ref = rollout(env.reset, always_reset_step(raw, limit, pool=2), raw.action_spec, 2, 3, 7)
    for field in ("obs", "reward", "terminated", "truncated", "final_obs", "episode_return", "episode_length"):
        np.testing.assert_array_equal(getattr(ts, field), getattr(ref, field), err_msg=field)
    for x, y in zip(jax.tree.leaves(ts.state), jax.tree.leaves(ref.state), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-3)
    ends = np.asarray(ts.terminated | ts.truncated)  # [seeds, steps, envs]
    assert (ends.sum(1) >= 2).all()  # every environment reset at least twice (time limit 3, 7 steps)
