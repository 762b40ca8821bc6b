"""MuJoCo Playground's DeepMind Control Suite (MJX) as raw environments (see core.py).

We take the bare Playground environment, without Playground's training wrappers
(`wrap_for_brax_training`: Brax's EpisodeWrapper plus an auto-reset that discards the final
observation a truncated episode must be bootstrapped from). One `step` here is one step of the
Playground environment. Playground applies a config's `action_repeat` only in that training
wrapper, never in the environment (every DM Control Suite config has action_repeat=1), and its
episode_length counts environment steps, so the time limit here is the config's episode_length.

Only the DM Control Suite is offered: the locomotion and manipulation suites fetch their robot
assets (MuJoCo Menagerie) from the network when they are built.
"""

from __future__ import annotations

import numpy as np

from envs.core import ActionSpec, RawEnv

# mujoco_playground.registry.dm_control_suite.ALL_ENVS (playground 0.2.0), in its order; a test
# checks that the two agree. A plain tuple, so checking an id imports nothing.
PLAYGROUND_IDS = (
    "AcrobotSwingup",
    "AcrobotSwingupSparse",
    "BallInCup",
    "CartpoleBalance",
    "CartpoleBalanceSparse",
    "CartpoleSwingup",
    "CartpoleSwingupSparse",
    "CheetahRun",
    "FingerSpin",
    "FingerTurnEasy",
    "FingerTurnHard",
    "FishSwim",
    "HopperHop",
    "HopperStand",
    "HumanoidStand",
    "HumanoidWalk",
    "HumanoidRun",
    "PendulumSwingup",
    "PointMass",
    "ReacherEasy",
    "ReacherHard",
    "SwimmerSwimmer6",
    "WalkerRun",
    "WalkerStand",
    "WalkerWalk",
)
# MJX's pure-JAX implementation (impl="jax"), on any device, as Brax's mjx backend. Playground's
# configs default to impl="warp" (MuJoCo Warp), but under vmap Warp leaks a tracer when a reset is
# traced inside the step, which is how with_time_limit resets (mujoco-mjx 3.17, warp-lang 1.19).
PLAYGROUND_BACKENDS = ("mjx",)
PLAYGROUND_INSTALL = "pip install -r requirements-playground.txt"


def _flatten(obs):
    """A structured (dict) observation as one float32 vector, leaves in sorted-key order."""
    import jax
    import jax.numpy as jnp

    return jnp.concatenate([jnp.asarray(x, jnp.float32).reshape(-1) for x in jax.tree.leaves(obs)])


def _strong(state):
    """The state with no weakly typed leaves. Some tasks' reset and step disagree on weak types
    (e.g. a Python-float reward), which would retrace a jitted step or a scan over steps."""
    import jax
    import jax.numpy as jnp

    def strong(x):
        x = jnp.asarray(x)
        return jnp.asarray(x, x.dtype)

    return jax.tree.map(strong, state)


def make_playground(env_id: str, backend: str = "mjx") -> tuple[RawEnv, int]:
    """The raw environment and Playground's own episode length (its config's episode_length)."""
    import importlib.util

    if importlib.util.find_spec("mujoco_playground") is None:
        raise ModuleNotFoundError(
            f"env {env_id!r} needs MuJoCo Playground, which is not installed: {PLAYGROUND_INSTALL}",
            name="mujoco_playground",
        )
    if backend not in PLAYGROUND_BACKENDS:
        raise ValueError(f"unknown Playground backend {backend!r}; choose one of {', '.join(PLAYGROUND_BACKENDS)}")
    import jax
    from mujoco_playground import registry

    config = registry.get_default_config(env_id)
    config.impl = "jax"
    env = registry.load(env_id, config=config)
    limit = int(config.episode_length)

    model = env.mj_model
    n = int(env.action_size)
    limited = np.asarray(model.actuator_ctrllimited, bool)[:n]
    ctrlrange = np.asarray(model.actuator_ctrlrange, np.float32)[:n]
    spec = ActionSpec(
        discrete=False,
        n=n,
        low=np.where(limited, ctrlrange[:, 0], -np.inf).astype(np.float32),
        high=np.where(limited, ctrlrange[:, 1], np.inf).astype(np.float32),
    )

    def reset(key):
        state = _strong(env.reset(key))
        return _flatten(state.obs), state

    def step(key, state, action):
        del key  # Playground keeps its own random key in state.info
        state = _strong(env.step(state, action))
        # DM Control Suite sets done only on a diverged (NaN) simulation: a real termination.
        return _flatten(state.obs), state, state.reward, state.done > 0.5

    obs_shape = tuple(jax.eval_shape(reset, jax.random.PRNGKey(0))[0].shape)
    return RawEnv(reset, step, obs_shape, spec), limit
