"""The compiled pieces the three scripts share that are not their algorithm.

Each script's `make_train` builds one seed's training out of its own algorithm and these:

- `permutation`: the minibatch shuffle of the PPO update (and of BPO's replay buffer);
- `evaluate`: episodes of a deterministic policy, the `eval_return` column;
- `skip_iteration` and `interval_metrics`: the evaluation interval, a `lax.scan` of iterations in
  which only the first `num_active` run, reduced to one row of metrics.

All of it is traced into the scripts' programs: pure functions of their inputs, vmapped over seeds.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

import envs


def permutation(key, n: int, first=None) -> jax.Array:
    """A random permutation of range(n) (int32), as jax.random.permutation draws one, for the
    scripts' minibatch shuffles, about 3x faster on a CPU. XLA's CPU sort is fast on one array of
    uint32 and slow on keys with values (a comparator call per comparison), so each element is packed
    into one word, (random bits, index), and the words are sorted. Beside a ceil(log2 n)-bit index a
    word holds fewer than 32 random bits, so the sort is repeated with fresh bits on the previous
    order, until ties (broken by position) are as unlikely as in jax.random.permutation: n^3 <=
    2^(random bits x rounds), one round for n <= 256, two up to 2^12. With `first` (bool [n]), the
    elements where it is True come first (each group in random order; the word's top bit)."""
    index_bits = max(1, (n - 1).bit_length())
    random_bits = 32 - index_bits - (first is not None)
    if random_bits < 4:
        raise ValueError(f"permutation: n = {n} is too large to pack with its index into 32 bits")
    rounds = -(-3 * index_bits // random_bits)
    position = jnp.arange(n, dtype=jnp.uint32)
    order = position
    for k in jax.random.split(key, rounds):
        word = (jax.random.bits(k, (n,), jnp.uint32) >> (32 - random_bits)) << index_bits | position
        if first is not None:
            word = word | jnp.where(first[order], jnp.uint32(0), jnp.uint32(1 << 31))
        order = order[jnp.sort(word) & ((1 << index_bits) - 1)]
    return order.astype(jnp.int32)


def evaluate(env: envs.Env, act: Callable, num_episodes: int, key, stochastic: bool = False) -> jax.Array:
    """The undiscounted returns of `num_episodes` full episodes, one per separate environment, of
    the deterministic policy `act` (observation -> action; the scripts pass the mode of pi, never
    mu, with the training's observation statistics frozen). An environment whose episode has ended
    adds nothing more; the loop ends when every episode has. Episode i draws with the i-th of each
    split of the key, whatever num_episodes is, so the first n episodes of a longer evaluation are
    those of an evaluation of n (jax's threefry splits do not depend on how many keys they make).
    With `stochastic` (evaluate.py), act(observation, key) samples, with keys of its own."""
    k_reset, k_step = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))
    zeros = jnp.zeros(num_episodes)

    def body(carry):
        obs, env_state, done, ret, key = carry
        key, k = jax.random.split(key)
        action = act(obs, jax.random.fold_in(k, 1)) if stochastic else act(obs)
        ts = jax.vmap(env.step)(jax.random.split(k, num_episodes), env_state, action)
        ret = ret + jnp.where(done, 0.0, ts.reward)
        return ts.obs, ts.state, done | ts.terminated | ts.truncated, ret, key

    carry = (obs, env_state, zeros.astype(bool), zeros, k_step)
    return jax.lax.while_loop(lambda c: ~jnp.all(c[2]), body, carry)[3]


def skip_iteration(iteration: Callable, state) -> Callable:
    """An iteration that does not run: the state unchanged and statistics of zeros shaped as
    `iteration`'s, for the iterations of an interval past `num_active` (the last interval of a run
    may be shorter, with no recompilation)."""
    stats_shape = jax.eval_shape(iteration, state)[1]
    return lambda s: (s, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), stats_shape))


EPISODE_SUMS = ("episodes", "return_sum", "length_sum")  # an iteration's completed episodes, summed


def interval_metrics(stats: dict, num_active, last_value: tuple[str, ...] = ()) -> dict:
    """One row of metrics from the stacked statistics of an interval's iterations: the mean over
    the first num_active iterations of each, except the keys in `last_value` (those of the last
    iteration that ran) and the episode sums (EPISODE_SUMS), which become train_return and
    train_length, the means over every episode that ended in the interval (nan if none did)."""
    active = jnp.arange(next(iter(stats.values())).shape[0]) < num_active
    metrics = {k: jnp.sum(v * active) / num_active for k, v in stats.items() if k not in EPISODE_SUMS + last_value}
    metrics.update({k: stats[k][num_active - 1] for k in last_value})
    episodes = stats["episodes"].sum()
    metrics["train_return"] = jnp.where(episodes > 0, stats["return_sum"].sum() / episodes, jnp.nan)
    metrics["train_length"] = jnp.where(episodes > 0, stats["length_sum"].sum() / episodes, jnp.nan)
    return metrics
