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
    step(key, state, action) -> (obs, state, reward, terminated). No time limit, no reset."""

    reset: Callable
    step: Callable
    obs_shape: tuple[int, ...]
    action_spec: ActionSpec


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


class WrapperState(NamedTuple):
    inner: Any
    t: jax.Array  # steps taken in the current episode
    episode_return: jax.Array


def with_time_limit(env_id: str, raw: RawEnv, max_episode_steps: int) -> Env:
    """Time limit, automatic reset and completed-episode statistics for any raw environment."""
    reset_where = _reset_where(raw.reset)

    def reset(key):
        obs, inner = raw.reset(key)
        return obs, WrapperState(inner, jnp.int32(0), jnp.float32(0.0))

    def step(key, state, action):
        key_step, key_reset = jax.random.split(key)
        obs, inner, reward, terminated = raw.step(key_step, state.inner, action)
        reward = jnp.asarray(reward, jnp.float32)
        terminated = jnp.asarray(terminated, bool)
        t = state.t + 1
        episode_return = state.episode_return + reward
        truncated = (t >= max_episode_steps) & ~terminated
        done = terminated | truncated
        # raw.reset(key_reset) where done; computed only for the environments that are done, also
        # under vmap (see _reset_where).
        next_obs, next_inner = reset_where(done, key_reset, obs, inner)
        next_state = WrapperState(next_inner, jnp.where(done, 0, t), jnp.where(done, 0.0, episode_return))
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

    return Env(env_id, reset, step, raw.obs_shape, raw.action_spec, int(max_episode_steps))


# A batch of n environments resets its done environments RESET_CHUNK_DIVISOR-th of the batch at a
# time (ceil(n / RESET_CHUNK_DIVISOR) environments per chunk, as many chunks as needed).
RESET_CHUNK_DIVISOR = 8


def reset_chunk(n: int) -> int:
    """How many environments of a batch of n one chunk of resets covers."""
    return max(1, -(-n // RESET_CHUNK_DIVISOR))


def _reset_where(raw_reset: Callable) -> Callable:
    """reset_where(done, key, obs, inner) -> raw_reset(key) where done, else (obs, inner).

    The plain way, `jnp.where(done, raw_reset(key), (obs, inner))`, computes a reset for every
    environment at every step: for MJX a full forward pass (on CPU, Brax ant's reset alone takes
    about a quarter of the time of its step). A per-environment lax.cond does not help: the
    scripts vmap the step over environments
    (and seeds), and vmap turns a cond with a batched predicate into a select of both branches.
    So the function's batching is customised (jax.custom_batching.custom_vmap): on a batch of n
    environments it resets only those that are done, in chunks of reset_chunk(n) environments
    gathered by index (a while loop of ceil(done / chunk) iterations: none on most steps, one
    when a few episodes end, `RESET_CHUNK_DIVISOR` when all end together at the time limit).
    The batched function is itself custom-vmapped, so a further vmap (over seeds, or of a scan
    whose body steps a vmapped batch) flattens its batch axes into one batch instead of turning
    the loop into a select. Environment i is reset with its own key, as the plain way does, so
    the results are the same: bitwise for gymnax (tests/test_envs.py). For MJX, XLA may round a
    reset of a batch of `chunk` environments differently from one of n in the last bit, in
    forward-pass fields that the next step recomputes (qacc, contact positions; observations,
    rewards and episode ends came out bitwise the same on ant). Not differentiable (nothing
    differentiates an environment step).
    """

    @jax.custom_batching.custom_vmap
    def one(done, key, obs, inner):
        # In the state's dtypes, as jnp.where(done, new, old) would give them.
        reset = lambda: jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), raw_reset(key), (obs, inner))
        return jax.lax.cond(done, reset, lambda: (obs, inner))

    @jax.custom_batching.custom_vmap
    def batch(done, key, obs, inner):  # a leading batch axis on every leaf
        n = done.shape[0]
        chunk = reset_chunk(n)
        num_chunks = -(-n // chunk)
        # The done environments' indices first, then n (out of range: dropped by the scatter).
        idx = jnp.nonzero(done, size=num_chunks * chunk, fill_value=n)[0]
        num_done = jnp.sum(done, dtype=jnp.int32)

        def reset_chunk_i(carry):
            i, obs, inner = carry
            rows = jax.lax.dynamic_slice_in_dim(idx, i * chunk, chunk)
            new_obs, new_inner = jax.vmap(raw_reset)(key[jnp.minimum(rows, n - 1)])
            put = lambda old, new: old.at[rows].set(new.astype(old.dtype), mode="drop")
            return i + 1, put(obs, new_obs), jax.tree.map(put, inner, new_inner)

        _, obs, inner = jax.lax.while_loop(
            lambda carry: carry[0] * chunk < num_done, reset_chunk_i, (jnp.int32(0), obs, inner)
        )
        return obs, inner

    def broadcast(axis_size, in_batched, args):
        return jax.tree.map(
            lambda b, x: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))), tuple(in_batched), args
        )

    @one.def_vmap
    def one_rule(axis_size, in_batched, *args):
        out = batch(*broadcast(axis_size, in_batched, args))
        return out, jax.tree.map(lambda _: True, out)

    @batch.def_vmap
    def batch_rule(axis_size, in_batched, *args):
        # [axis_size, n, ...] -> [axis_size * n, ...] and back.
        args = broadcast(axis_size, in_batched, args)
        n = jnp.shape(args[0])[1]  # explicit sizes: MJX states have leaves of size 0
        flat = jax.tree.map(lambda x: x.reshape(axis_size * n, *x.shape[2:]), args)
        out = batch(*flat)
        out = jax.tree.map(lambda x: x.reshape(axis_size, n, *x.shape[1:]), out)
        return out, jax.tree.map(lambda _: True, out)

    return one


def with_clipped_actions(env: Env) -> Env:
    """Clip continuous actions to the action bounds before they reach the environment. The agent
    keeps the unclipped action (its log-probability is that of the unclipped sample)."""
    spec = env.action_spec
    if spec.discrete:
        return env
    low, high = jnp.asarray(spec.low), jnp.asarray(spec.high)
    return env._replace(step=lambda key, state, action: env.step(key, state, jnp.clip(action, low, high)))
