"""A tiny deterministic environment whose episode ends are known from its observations.

obs = [count, horizon]: each reset draws a horizon in {2, 3, 9}; every step adds 1 to count and
gives reward 1 + count / 10; the episode terminates when count reaches the horizon. With a time
limit of 5, horizon-9 episodes are truncated at count 5, and the others terminate, so a rollout
holds terminations and truncations in its middle."""

import jax
import jax.numpy as jnp

import envs

HORIZONS = jnp.array([2.0, 3.0, 9.0])
TIME_LIMIT = 5


def raw_counter_env() -> envs.RawEnv:
    def reset(key):
        horizon = HORIZONS[jax.random.randint(key, (), 0, 3)]
        return jnp.array([0.0, horizon]), jnp.array([0.0, horizon])

    def step(key, state, action):
        count = state[0] + 1.0
        state = jnp.array([count, state[1]])
        return state, state, 1.0 + count / 10.0, count >= state[1]

    return envs.RawEnv(reset, step, (2,), envs.ActionSpec(discrete=True, n=2))


def counter_env() -> envs.Env:
    return envs.with_time_limit("counter", raw_counter_env(), TIME_LIMIT)
