"""gymnax environments as raw environments (see core.py). Observations are flattened to vectors
(MinAtar and bsuite grids included) so every script can use an MLP."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from envs.core import ActionSpec, RawEnv

# Every registered gymnax id except MNISTBandit-bsuite (downloads MNIST at construction) and
# FrozenLake-misc (its observation is a bare integer, not a vector).
GYMNAX_IDS = (
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "Pendulum-v1",
    "MountainCarContinuous-v0",
    "Asterix-MinAtar",
    "Breakout-MinAtar",
    "Freeway-MinAtar",
    "Seaquest-MinAtar",
    "SpaceInvaders-MinAtar",
    "Catch-bsuite",
    "DeepSea-bsuite",
    "MemoryChain-bsuite",
    "UmbrellaChain-bsuite",
    "DiscountingChain-bsuite",
    "SimpleBandit-bsuite",
    "FourRooms-misc",
    "MetaMaze-misc",
    "PointRobot-misc",
    "BernoulliBandit-misc",
    "GaussianBandit-misc",
    "Reacher-misc",
    "Swimmer-misc",
    "Pong-misc",
)


def make_gymnax(env_id: str) -> tuple[RawEnv, int]:
    """The raw environment and gymnax's own episode limit."""
    import gymnax
    from gymnax.environments import spaces

    env, params = gymnax.make(env_id)
    limit = int(params.max_steps_in_episode)
    obs_shape = (int(np.prod(env.observation_space(params).shape)),)
    space = env.action_space(params)
    if isinstance(space, spaces.Discrete):
        spec = ActionSpec(discrete=True, n=int(space.n))
    else:
        shape = tuple(space.shape)
        spec = ActionSpec(
            discrete=False,
            n=int(np.prod(shape)),
            low=np.broadcast_to(np.asarray(space.low, np.float32), shape).copy(),
            high=np.broadcast_to(np.asarray(space.high, np.float32), shape).copy(),
        )

    flat = lambda obs: jnp.asarray(obs, jnp.float32).reshape(-1)

    def reset(key):
        obs, state = env.reset_env(key, params)
        return flat(obs), state

    def step(key, state, action):
        # gymnax's step_env has no time limit and no reset: its `done` is the natural termination.
        obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
        return flat(obs), state, reward, terminated

    return RawEnv(reset, step, obs_shape, spec), limit
