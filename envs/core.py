"""The one environment interface every script uses, and the wrappers that build it.

A backend (gymnax, Brax) only supplies a *raw* environment: reset and step of one environment,
no time limit, no automatic reset. `with_time_limit` turns any raw environment into an `Env`:

    obs, state = env.reset(key)
    ts = env.step(key, state, action)     # -> Timestep

Both act on ONE environment and are pure functions of their inputs, so they jit and vmap
(the scripts vmap over environments, then over seeds). `step` resets automatically when an
episode ends, and returns the true final observation of the episode that ended, so a truncated
episode can be bootstrapped from V(final observation), never from the reset state.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class ActionSpec(NamedTuple):
    """Discrete actions are integers in [0, n); continuous actions are float vectors of size n
    with bounds low and high (numpy arrays, static)."""

    discrete: bool
    n: int
    low: np.ndarray | None = None
    high: np.ndarray | None = None


class RawEnv(NamedTuple):
    """What a backend supplies. reset(key) -> (obs, state);
    step(key, state, action) -> (obs, state, reward, terminated). No time limit, no reset.
    Observations are float32 of obs_shape: a vector, or an image [height, width, channels] with
    values in [0, 1] (MinAtar's grids). obs_dtype: a narrower dtype that holds every observation
    exactly (uint8 for MinAtar's 0/1 grids), in which a replay buffer may store them; None if none."""

    reset: Callable
    step: Callable
    obs_shape: tuple[int, ...]
    action_spec: ActionSpec
    obs_dtype: Any = None


class Timestep(NamedTuple):
    obs: jax.Array  # first observation of the next step (after an automatic reset when done)
    state: Any
    reward: jax.Array  # float32
    terminated: jax.Array  # bool: the episode reached a terminal state
    truncated: jax.Array  # bool: the time limit ended the episode (never both)
    final_obs: jax.Array  # the observation this step produced, before any reset
    episode_return: jax.Array  # undiscounted return of the episode so far, this step included
    episode_length: jax.Array  # its length so far; where done, the completed episode's figures


class Env(NamedTuple):
    id: str
    reset: Callable  # key -> (obs, state)
    step: Callable  # (key, state, action) -> Timestep
    obs_shape: tuple[int, ...]
    action_spec: ActionSpec
    max_episode_steps: int
    obs_dtype: Any = None  # the raw environment's (RawEnv)


class WrapperState(NamedTuple):
    inner: Any
    t: jax.Array  # steps taken in the current episode
    episode_return: jax.Array
    # reset_pool > 1: (spare start observations, spare start states, each [reset_pool - 1, ...];
    # how many spares are left, the next one at index reset_pool - 1 - left). reset_pool = 1: ().
    pool: Any = ()


# How an episode end gets its new start (with_time_limit's reset_mode):
# - "chunked": starts are drawn only for the environments that are done (a lax.cond and a while loop
#   of data-dependent trip count per step, _reset_where). Measured faster on a CPU
#   (docs/performance.md), where control flow costs nothing.
# - "select": no control flow in the step: a start is drawn for every environment at every step and
#   selected where done (PureJaxRL's way). On a GPU or TPU every lax.cond and every iteration of a
#   data-dependent loop is decided on the host, so "chunked" would make every environment step wait
#   for the device about twice (benchmarks/gpu_syncs.py counts them).
# "auto" (the default): "chunked" on a CPU, "select" elsewhere. BPO_ENV_RESET=chunked|select forces
# one (config.json records which, under versions.env_reset).
RESET_MODES = ("chunked", "select")


def default_reset_mode() -> str:
    """BPO_ENV_RESET if set to a mode, else "chunked" on a CPU and "select" on a GPU or TPU."""
    mode = os.environ.get("BPO_ENV_RESET", "auto") or "auto"
    if mode == "auto":
        return "chunked" if jax.default_backend() == "cpu" else "select"
    if mode not in RESET_MODES:
        raise ValueError(f"BPO_ENV_RESET={mode!r}: choose auto, {' or '.join(RESET_MODES)}")
    return mode


def with_time_limit(
    env_id: str, raw: RawEnv, max_episode_steps: int, reset_pool: int = 1, reset_mode: str = "chunked"
) -> Env:
    """Time limit, automatic reset and completed-episode statistics for any raw environment.

    reset_mode "chunked" resets only the environments that are done (_reset_where, with a pool of
    reset_pool starts); "select" draws a start for every environment at every step, raw.reset of its
    reset key, and keeps it where done: no control flow inside the step, for GPUs and TPUs (the pool
    is not used). Both give fresh random starts and the true final observation; with reset_pool = 1
    they give the same numbers (bitwise for gymnax, tests/test_envs.py).

    reset_pool = k > 1 draws starts k at a time: an episode end with no spare start left draws k
    new random starts (raw.reset of its reset key split in k), starts the next episode from the
    first and keeps the other k - 1 as spares, which the environment's next k - 1 episode ends
    start from, in order, computing nothing. Every start is a fresh draw, used once, from the
    same distribution as raw.reset; only which key draws which start differs from k = 1. For
    backends whose reset costs about a step (MJX) and whose batches are small, drawing k starts
    at once costs little more than drawing one (see _reset_where)."""
    if reset_pool < 1:
        raise ValueError(f"reset_pool must be >= 1, got {reset_pool}")
    if reset_mode not in RESET_MODES:
        raise ValueError(f"reset_mode must be one of {', '.join(RESET_MODES)}, got {reset_mode!r}")
    if reset_mode == "select":
        reset_pool = 1
        reset_where = _reset_select(raw.reset)
    else:
        reset_where = _reset_where(raw.reset, reset_pool)

    def reset(key):
        obs, inner = raw.reset(key)
        pool = ()
        if reset_pool > 1:  # no spare yet: the first episode end draws them
            spares = jax.tree.map(
                lambda x: jnp.zeros((reset_pool - 1, *jnp.shape(x)), jnp.result_type(x)), (obs, inner)
            )
            pool = (*spares, jnp.int32(0))
        return obs, WrapperState(inner, jnp.int32(0), jnp.float32(0.0), pool)

    def step(key, state, action):
        key_step, key_reset = jax.random.split(key)
        obs, inner, reward, terminated = raw.step(key_step, state.inner, action)
        reward = jnp.asarray(reward, jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        t = state.t + 1
        episode_return = state.episode_return + reward
        truncated = (t >= max_episode_steps) & ~terminated
        done = terminated | truncated
        # a new start where done (a spare, or drawn with key_reset); computed only for the
        # environments that are done, also under vmap (see _reset_where).
        next_obs, next_inner, pool = reset_where(done, key_reset, obs, inner, state.pool)
        next_state = WrapperState(next_inner, jnp.where(done, 0, t), jnp.where(done, 0.0, episode_return), pool)
        return Timestep(
            obs=next_obs,
            state=next_state,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=obs,
            episode_return=episode_return,
            episode_length=t,
        )

    return Env(env_id, reset, step, raw.obs_shape, raw.action_spec, int(max_episode_steps), raw.obs_dtype)


def _reset_select(raw_reset: Callable) -> Callable:
    """reset_where(done, key, obs, inner, pool) the plain way: raw_reset(key) computed for every
    environment, selected where done. The step stays free of control flow under any vmap."""

    def reset_where(done, key, obs, inner, pool):
        keep = lambda new, old: jnp.where(done, jnp.asarray(new, jnp.result_type(old)), old)
        new_obs, new_inner = raw_reset(key)
        return keep(new_obs, obs), jax.tree.map(keep, new_inner, inner), pool

    return reset_where


# A batch of n environments resets its done environments RESET_CHUNK_DIVISOR-th of the batch at a
# time (ceil(n / RESET_CHUNK_DIVISOR) environments per chunk, as many chunks as needed).
RESET_CHUNK_DIVISOR = 8


def reset_chunk(n: int) -> int:
    """How many environments of a batch of n one chunk of resets covers."""
    return max(1, -(-n // RESET_CHUNK_DIVISOR))


def _reset_where(raw_reset: Callable, pool_size: int = 1) -> Callable:
    """reset_where(done, key, obs, inner, pool) -> (obs, inner, pool) with a new start where done:
    the next spare of the pool if one is left, else the first of pool_size starts drawn with key
    (key itself when pool_size = 1, as raw_reset(key)), the others becoming the spares.

    The plain way, `jnp.where(done, raw_reset(key), (obs, inner))`, computes a reset for every
    environment at every step: for MJX a full forward pass (on CPU, Brax ant's reset alone takes
    about a quarter of the time of its step). A per-environment lax.cond does not help: the
    scripts vmap the step over environments
    (and seeds), and vmap turns a cond with a batched predicate into a select of both branches.
    So the batched function is customised (jax.custom_batching.custom_vmap): on a batch of n
    environments it draws starts only for those that are done and have no spare left, in chunks
    of reset_chunk(n) environments gathered by index (a while loop of ceil(draws / chunk)
    iterations: none on most steps, one when a few episodes end, `RESET_CHUNK_DIVISOR` when all
    end together at the time limit), and takes the spares of the others with one select (skipped
    when no environment takes one). It is custom-vmapped, so a further vmap (over seeds, or of a
    scan whose body steps a vmapped batch) gives it one more leading batch axis instead of
    turning the loop into a select; one environment alone is a batch of one. Environment i draws
    with its own key, as the plain way does, so with pool_size = 1 the results are the same:
    bitwise for gymnax (tests/test_envs.py). For MJX, XLA may round a reset of a batch of `chunk`
    environments differently from one of n in the last bit, in forward-pass fields that the next
    step recomputes (qacc, contact positions; observations, rewards and episode ends came out
    bitwise the same on ant). A call of MJX's reset on CPU costs about as much for a few
    environments as for one, so pool_size k > 1 makes an environment pay one call per k episode
    ends. Not differentiable (nothing differentiates an environment step).
    """
    spares = pool_size - 1

    def draw(key):  # [pool_size, ...]: the next start, then the spares
        if pool_size == 1:
            return jax.tree.map(lambda x: jnp.asarray(x)[None], raw_reset(key))
        return jax.vmap(raw_reset)(jax.random.split(key, pool_size))

    @jax.custom_batching.custom_vmap
    def batch(done, key, obs, inner, pool):  # every leaf has the leading batch axes of done
        shape = done.shape  # environments [...]; vmapped: [seeds, environments] (never reshaped:
        n = done.size  # a reshape of the carried state costs XLA a copy of every leaf per step)
        if spares:  # the environments with a spare left start from it
            left = pool[2]
            take = done & (left > 0)
            done = done & ~take

            def take_spares(state):
                obs, inner, left = state
                j = jnp.clip(spares - left, 0, spares - 1)[..., None]  # the next spare's index
                axes = lambda x, ndim: x.reshape(x.shape + (1,) * (ndim - x.ndim))
                pick = lambda spare, old: jnp.where(
                    axes(take, old.ndim),
                    jnp.take_along_axis(spare, axes(j, spare.ndim), len(shape)).squeeze(len(shape)).astype(old.dtype),
                    old,
                )
                return pick(pool[0], obs), jax.tree.map(pick, pool[1], inner), left - take

            obs, inner, left = jax.lax.cond(jnp.any(take), take_spares, lambda state: state, (obs, inner, left))
            pool = (pool[0], pool[1], left)
        chunk = reset_chunk(n)
        num_chunks = -(-n // chunk)
        # The indices of the environments that draw first, then n (out of range: dropped by the scatter).
        idx = jnp.nonzero(done.reshape(-1), size=num_chunks * chunk, fill_value=n)[0]
        num_draws = jnp.sum(done, dtype=jnp.int32)

        def draw_chunk_i(carry):
            i, obs, inner, pool = carry
            flat = jax.lax.dynamic_slice_in_dim(idx, i * chunk, chunk)
            safe = jnp.unravel_index(jnp.minimum(flat, n - 1), shape)  # a valid index for every entry
            rows = (jnp.where(flat < n, safe[0], shape[0]), *safe[1:])  # the fill entries past the end: dropped
            new_obs, new_inner = jax.vmap(draw)(key[safe])
            put = lambda old, new: old.at[rows].set(new.astype(old.dtype), mode="drop")  # new: [chunk, ...]
            obs, inner = put(obs, new_obs[:, 0]), jax.tree.map(lambda o, x: put(o, x[:, 0]), inner, new_inner)
            if spares:
                pool = (
                    put(pool[0], new_obs[:, 1:]),
                    jax.tree.map(lambda o, x: put(o, x[:, 1:]), pool[1], new_inner),
                    pool[2].at[rows].set(spares, mode="drop"),
                )
            return i + 1, obs, inner, pool

        _, obs, inner, pool = jax.lax.while_loop(
            lambda carry: carry[0] * chunk < num_draws, draw_chunk_i, (jnp.int32(0), obs, inner, pool)
        )
        return obs, inner, pool

    def batched(axis_size, in_batched, *args):  # a new leading batch axis on every leaf
        args = jax.tree.map(
            lambda b, x: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))), tuple(in_batched), args
        )
        out = batch(*args)
        return out, jax.tree.map(lambda _: True, out)

    batch.def_vmap(batched)

    @jax.custom_batching.custom_vmap
    def one(*args):  # one environment: a batch of one
        return jax.tree.map(lambda x: x[0], batch(*jax.tree.map(lambda x: jnp.asarray(x)[None], args)))

    one.def_vmap(batched)

    return one


def with_clipped_actions(env: Env) -> Env:
    """Clip continuous actions to the action bounds before they reach the environment. The agent
    keeps the unclipped action (its log-probability is that of the unclipped sample)."""
    spec = env.action_spec
    if spec.discrete:
        return env
    low, high = jnp.asarray(spec.low), jnp.asarray(spec.high)
    return env._replace(step=lambda key, state, action: env.step(key, state, jnp.clip(action, low, high)))
