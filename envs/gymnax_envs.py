"""gymnax environments as raw environments (see core.py). Image observations [height, width,
channels] (MinAtar's 10 x 10 x C grids, Pong-misc's) keep their shape, for a convolutional torso
(torsos.py; `--torso mlp` flattens them to exactly the vector this module gave before); every other
observation (bsuite's grids included) is flattened to a vector."""

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


MINATAR_IDS = tuple(env_id for env_id in GYMNAX_IDS if env_id.endswith("-MinAtar"))
# Images of 0s and 1s (gymnax draws every channel of MinAtar's grids and of Pong-misc's screen as
# booleans or ones): uint8 holds them exactly, in a quarter of float32's memory.
BINARY_IMAGE_IDS = (*MINATAR_IDS, "Pong-misc")


def make_gymnax(env_id: str) -> tuple[RawEnv, int]:
    """The raw environment and gymnax's own episode limit."""
    import gymnax
    from gymnax.environments import spaces

    env, params = gymnax.make(env_id)
    limit = int(params.max_steps_in_episode)
    shape = tuple(int(n) for n in env.observation_space(params).shape)
    obs_shape = shape if len(shape) == 3 else (int(np.prod(shape)),)  # an image keeps its shape
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

    flat = lambda obs: jnp.asarray(obs, jnp.float32).reshape(obs_shape)

    def reset(key):
        obs, state = env.reset_env(key, params)
        return flat(obs), state

    def step(key, state, action):
        # gymnax's step_env has no time limit and no reset: its `done` is the natural termination.
        obs, state, reward, terminated, _ = env.step_env(key, state, action, params)
        return flat(obs), state, reward, terminated

    return RawEnv(reset, step, obs_shape, spec, jnp.uint8 if env_id in BINARY_IMAGE_IDS else None), limit
