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
        # Both branches are computed (under vmap a cond is a select anyway).
        reset_obs, reset_inner = raw.reset(key_reset)
        keep = lambda new, old: jnp.where(done, new, old)
        next_state = WrapperState(
            jax.tree.map(keep, reset_inner, inner),
            jnp.where(done, 0, t),
            jnp.where(done, 0.0, episode_return),
        )
        return Timestep(
            obs=keep(reset_obs, obs),
            state=next_state,
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=obs,
            episode_return=episode_return,
            episode_length=t,
        )

    return Env(env_id, reset, step, raw.obs_shape, raw.action_spec, int(max_episode_steps))


def with_clipped_actions(env: Env) -> Env:
    """Clip continuous actions to the action bounds before they reach the environment. The agent
    keeps the unclipped action (its log-probability is that of the unclipped sample)."""
    spec = env.action_spec
    if spec.discrete:
        return env
    low, high = jnp.asarray(spec.low), jnp.asarray(spec.high)
    return env._replace(step=lambda key, state, action: env.step(key, state, jnp.clip(action, low, high)))
