"""Environments behind one functional interface (see envs/core.py).

    env = envs.make("CartPole-v1")          # gymnax
    env = envs.make("Breakout-MinAtar")     # gymnax's MinAtar: image observations, 10 x 10 x 4
    env = envs.make("ant")                  # Brax on MJX, 1000-step episodes
    env = envs.make("CheetahRun")           # MuJoCo Playground's DM Control Suite on MJX (optional)
    env = envs.make("tabular-deepsea-8")    # a finite MDP whose variances are known exactly (envs/tabular)
    obs, state = env.reset(key)
    ts = env.step(key, state, action)       # obs, state, reward, terminated, truncated, final_obs, ...

Each id is one of ENV_IDS (or an alias); `make` adds the time limit, automatic reset and action clipping.
"""

from __future__ import annotations

from envs.brax_envs import BRAX_BACKENDS, BRAX_EPISODE_STEPS, BRAX_IDS
from envs.core import (
    RESET_MODES,
    ActionSpec,
    Env,
    RawEnv,
    Timestep,
    default_reset_mode,
    with_clipped_actions,
    with_time_limit,
)
from envs.gymnax_envs import GYMNAX_IDS, MINATAR_IDS
from envs.normalize import (
    RewardScaler,
    RunningMeanStd,
    normalize_obs,
    reward_scaler_init,
    rms_init,
    rms_update,
    scale_reward,
    track_returns,
)
from envs.playground_envs import PLAYGROUND_BACKENDS, PLAYGROUND_IDS
from envs.tabular import TABULAR_IDS

# Names used by the BPO reference code.
ALIASES = {"cartpole": "CartPole-v1", "half_cheetah": "halfcheetah", "walker_2d": "walker2d"}
ENV_IDS = GYMNAX_IDS + BRAX_IDS + PLAYGROUND_IDS + TABULAR_IDS
# Starts drawn at a time by Brax and Playground environments (with_time_limit's reset_pool): a
# reset of these physics backends costs about as much as a step, and about as much for a few
# environments as for one on a CPU; gymnax and tabular resets are cheap, so they draw one at a time.
PHYSICS_RESET_POOL = 16


class UnknownEnvError(ValueError):
    pass


def canonical_id(env_id: str) -> str:
    """The registered id for env_id (aliases resolved); raises UnknownEnvError listing valid ids.
    Imports nothing heavy, so scripts can check their input before anything is built."""
    env_id = ALIASES.get(env_id, env_id)
    if env_id not in ENV_IDS:
        aliases = ", ".join(f"{a} -> {b}" for a, b in ALIASES.items())
        raise UnknownEnvError(f"unknown env id {env_id!r}. Valid ids: {', '.join(ENV_IDS)} (aliases: {aliases})")
    return env_id


def is_brax(env_id: str) -> bool:
    return canonical_id(env_id) in BRAX_IDS


def is_playground(env_id: str) -> bool:
    """A MuJoCo Playground (DM Control Suite) id; making one needs the optional `playground`."""
    return canonical_id(env_id) in PLAYGROUND_IDS


def is_minatar(env_id: str) -> bool:
    """One of gymnax's MinAtar games (10 x 10 x C image observations of 0s and 1s)."""
    return canonical_id(env_id) in MINATAR_IDS


def is_tabular(env_id: str) -> bool:
    """A finite MDP of envs/tabular, whose values and estimator variances envs/tabular/exact.py computes."""
    return canonical_id(env_id) in TABULAR_IDS


def make(
    env_id: str,
    backend: str = "mjx",
    max_episode_steps: int | None = None,
    clip_actions: bool = True,
    reset_mode: str | None = None,
) -> Env:
    """One environment with time limit, automatic reset, episode statistics and (continuous
    actions, if clip_actions) action clipping. max_episode_steps defaults to gymnax's own limit,
    1000 for Brax, the Playground config's episode_length (1000), or a tabular MDP's horizon H
    (its episodes always terminate at H, so a limit below H, which would truncate them, is an
    error). `backend` is the Brax physics backend; Playground ids run on MJX only ("mjx").
    reset_mode: "chunked" or "select" (envs/core.py); None: default_reset_mode(), "chunked" on a
    CPU and "select" on a GPU or TPU unless BPO_ENV_RESET says otherwise."""
    env_id = canonical_id(env_id)
    if env_id in BRAX_IDS:
        if backend not in BRAX_BACKENDS:
            raise ValueError(f"unknown Brax backend {backend!r}; choose one of {', '.join(BRAX_BACKENDS)}")
        from envs.brax_envs import make_brax

        raw, limit = make_brax(env_id, backend), BRAX_EPISODE_STEPS
    elif env_id in PLAYGROUND_IDS:
        from envs.playground_envs import make_playground

        raw, limit = make_playground(env_id, backend)
    elif env_id in TABULAR_IDS:
        from envs.tabular import make_tabular

        raw, limit = make_tabular(env_id)
        if max_episode_steps and max_episode_steps < limit:
            raise ValueError(
                f"{env_id}: episodes terminate after H = {limit} steps; a time limit of "
                f"{max_episode_steps} would truncate them"
            )
    else:
        from envs.gymnax_envs import make_gymnax

        raw, limit = make_gymnax(env_id)
    pool = 1 if env_id in GYMNAX_IDS + TABULAR_IDS else PHYSICS_RESET_POOL
    mode = reset_mode or default_reset_mode()
    env = with_time_limit(env_id, raw, max_episode_steps or limit, reset_pool=pool, reset_mode=mode)
    return with_clipped_actions(env) if clip_actions else env


__all__ = [
    "ALIASES",
    "BRAX_BACKENDS",
    "PHYSICS_RESET_POOL",
    "BRAX_IDS",
    "ENV_IDS",
    "GYMNAX_IDS",
    "MINATAR_IDS",
    "PLAYGROUND_BACKENDS",
    "PLAYGROUND_IDS",
    "RESET_MODES",
    "TABULAR_IDS",
    "ActionSpec",
    "Env",
    "RawEnv",
    "RewardScaler",
    "RunningMeanStd",
    "Timestep",
    "UnknownEnvError",
    "canonical_id",
    "default_reset_mode",
    "is_brax",
    "is_minatar",
    "is_playground",
    "is_tabular",
    "make",
    "normalize_obs",
    "reward_scaler_init",
    "rms_init",
    "rms_update",
    "scale_reward",
    "track_returns",
    "with_clipped_actions",
    "with_time_limit",
]
