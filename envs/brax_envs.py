"""Brax environments (MJX backend by default) as raw environments (see core.py). We take the bare
Brax environment, without Brax's EpisodeWrapper / AutoResetWrapper: its auto-reset discards the
final observation that a truncated episode must be bootstrapped from."""

from __future__ import annotations

import jax
import numpy as np

from envs.core import ActionSpec, RawEnv

BRAX_IDS = (
    "ant",
    "halfcheetah",
    "hopper",
    "walker2d",
    "humanoid",
    "humanoidstandup",
    "inverted_pendulum",
    "inverted_double_pendulum",
    "pusher",
    "reacher",
)
BRAX_BACKENDS = ("mjx", "generalized", "positional", "spring")
BRAX_EPISODE_STEPS = 1000


def make_brax(env_id: str, backend: str = "mjx") -> RawEnv:
    import warnings

    with warnings.catch_warnings():  # Brax warns on import that it is in maintenance mode.
        warnings.simplefilter("ignore")
        from brax import envs as brax_envs

        env = brax_envs.get_environment(env_id, backend=backend)
    n = int(env.action_size)
    spec = ActionSpec(discrete=False, n=n, low=-np.ones(n, np.float32), high=np.ones(n, np.float32))

    def reset(key):
        state = env.reset(key)
        return state.obs, state

    def step(key, state, action):
        del key  # Brax dynamics are deterministic
        state = env.step(state, action)
        return state.obs, state, state.reward, state.done > 0.5

    # The shape of reset's observation, as Brax's observation_size, but traced only: that property
    # runs a reset op by op, some 500 small compilations (20 s on a 2-core CPU) per process.
    obs_shape = tuple(jax.eval_shape(reset, jax.random.PRNGKey(0))[0].shape)
    return RawEnv(reset, step, obs_shape, spec)
