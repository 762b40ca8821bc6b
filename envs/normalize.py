"""Running observation normalisation and reward scaling, one set of statistics per seed.

These act on a batch (all environments of one seed) and live in the training state, so the
scripts decide when the statistics are updated (during training) and when they are frozen
(during an iteration's update, and in evaluation, which shares the training statistics)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class RunningMeanStd(NamedTuple):
    mean: jax.Array
    var: jax.Array
    count: jax.Array


def rms_init(shape=()) -> RunningMeanStd:
    return RunningMeanStd(jnp.zeros(shape), jnp.ones(shape), jnp.float32(1e-4))


def rms_update(rms: RunningMeanStd, batch: jax.Array) -> RunningMeanStd:
    """Merge the moments of `batch` (leading axes are samples) into rms: Chan et al.'s parallel
    algorithm, as in gymnasium's RunningMeanStd."""
    batch = batch.reshape((-1,) + rms.mean.shape)
    b_mean, b_var, b_count = batch.mean(0), batch.var(0), batch.shape[0]
    delta = b_mean - rms.mean
    count = rms.count + b_count
    mean = rms.mean + delta * b_count / count
    m2 = rms.var * rms.count + b_var * b_count + delta**2 * rms.count * b_count / count
    return RunningMeanStd(mean, m2 / count, count)


def normalize_obs(rms: RunningMeanStd, obs: jax.Array, clip: float = 10.0) -> jax.Array:
    return jnp.clip((obs - rms.mean) / jnp.sqrt(rms.var + 1e-8), -clip, clip)


class RewardScaler(NamedTuple):
    """Scales rewards by the running standard deviation of the discounted return, as gymnasium's
    NormalizeReward; `returns` is the running discounted return of each environment."""

    rms: RunningMeanStd
    returns: jax.Array


def reward_scaler_init(num_envs: int) -> RewardScaler:
    return RewardScaler(rms_init(), jnp.zeros(num_envs))


def scale_reward(scaler: RewardScaler, reward: jax.Array) -> jax.Array:
    return reward / jnp.sqrt(scaler.rms.var + 1e-8)


def track_returns(scaler: RewardScaler, reward: jax.Array, done: jax.Array, gamma: float):
    """Advance the running discounted returns by one step: G <- r + gamma * G, restarting at
    episode ends. Returns the new scaler (statistics unchanged) and G, for a later rms_update."""
    returns = reward + gamma * scaler.returns
    return scaler._replace(returns=jnp.where(done, 0.0, returns)), returns
