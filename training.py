"""The compiled pieces the three scripts share that are not their algorithm.

Each script's `make_train` builds one seed's training out of its own algorithm and these:

- `permutation`: the minibatch shuffle of the PPO update (and of BPO's replay buffer);
- `evaluate`: episodes of a deterministic policy, the `eval_return` column;
- `skip_iteration` and `interval_metrics`: the evaluation interval, a `lax.scan` of iterations in
  which only the first `num_active` run, reduced to one row of metrics;
- `--verbose`: `at_verbosity` (what an iteration reports at level 0), and level 2's
  `step_statistics` and `histogram`.

All of it is traced into the scripts' programs: pure functions of their inputs, vmapped over seeds.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

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

# --verbose (runner.RunArgs). Level 1 is every script's own statistics (its METRIC_COLUMNS); level 0
# keeps only these of an iteration's: the returns (from the episode sums) and the losses the divergence
# guard watches (runner.DIVERGENCE_METRICS). Level 2 adds STEP_STATISTICS and histograms.
VERBOSE_0_STATS = ("pg_loss", "v_loss", *EPISODE_SUMS)
STEP_STATISTICS = ("reward", "value", "return", "advantage")  # level 2: mean, std, min, max of each
HISTOGRAM_BUCKETS = 30  # level 2's histograms (TensorBoard's own default bucket count)


def at_verbosity(stats: dict, verbose: int) -> dict:
    """An iteration's statistics at --verbose `verbose`: all of them at 1 and 2, at 0 only
    VERBOSE_0_STATS. A static choice: what level 0 drops is traced but no output depends on it, so
    jax's dead-code elimination leaves it out of the compiled program (tests/test_verbose.py)."""
    return stats if verbose else {k: stats[k] for k in VERBOSE_0_STATS}


def step_statistics(rewards, values, returns, advantages) -> dict:
    """--verbose 2: the rollout's per-step rewards (as the estimator reads them), values V(s) as of
    collection, returns (the value targets) and advantages (as the loss reads them, before any
    per-minibatch normalisation), each as <name>_mean, <name>_var, <name>_min and <name>_max;
    interval_metrics pools them over the interval into mean, std, min and max."""
    stats = {}
    for name, x in zip(STEP_STATISTICS, (rewards, values, returns, advantages)):
        stats.update({f"{name}_mean": x.mean(), f"{name}_var": x.var(), f"{name}_min": x.min(), f"{name}_max": x.max()})
    return stats


class Histogram(NamedTuple):
    """TensorBoard's HistogramProto, as arrays (runner.TensorBoardEvents writes it): HISTOGRAM_BUCKETS
    buckets between min and max, each up to its `limits` entry (the last is max)."""

    min: jax.Array
    max: jax.Array
    num: jax.Array
    sum: jax.Array
    sum_squares: jax.Array
    limits: jax.Array
    counts: jax.Array


def histogram(x, log: bool = False) -> Histogram:
    """--verbose 2: a histogram of the values x in HISTOGRAM_BUCKETS equal buckets between their min
    and max (as TensorBoard bins a histogram), a bounded record whatever the size of x. With `log`,
    x holds logarithms (log pi/mu) and the histogram is of exp(x) in buckets equal in x: even in log
    ratio, so ratios near 1 and a heavy tail both show."""
    x = x.ravel()
    lo, hi = x.min(), x.max()
    width = (hi - lo) / HISTOGRAM_BUCKETS
    bucket = jnp.floor((x - lo) / jnp.where(width > 0, width, 1.0)).astype(jnp.int32)
    counts = jnp.zeros(HISTOGRAM_BUCKETS).at[jnp.clip(bucket, 0, HISTOGRAM_BUCKETS - 1)].add(1.0)
    limits = (lo + width * jnp.arange(1, HISTOGRAM_BUCKETS + 1)).at[-1].set(hi)
    values = jnp.exp(x) if log else x
    if log:
        lo, hi, limits = jnp.exp(lo), jnp.exp(hi), jnp.exp(limits)
    return Histogram(lo, hi, jnp.float32(x.size), values.sum(), jnp.sum(values**2), limits, counts)


def interval_metrics(stats: dict, num_active, last_value: tuple[str, ...] = ()) -> dict:
    """One row of metrics from the stacked statistics of an interval's iterations: the mean over
    the first num_active iterations of each, except the keys in `last_value` (those of the last
    iteration that ran) and the episode sums (EPISODE_SUMS), which become train_return and
    train_length, the means over every episode that ended in the interval (nan if none did).
    With --verbose 2, the step statistics become <name>_mean, _std (pooled: the mean of the
    rollouts' variances plus the variance of their means), _min and _max over every step of the
    interval's rollouts, and the histograms (hist_<name>) are the last iteration's."""
    active = jnp.arange(stats["episodes"].shape[0]) < num_active
    hists = [k for k in stats if k.startswith("hist_")]
    steps = [f"{q}_{s}" for q in STEP_STATISTICS for s in ("mean", "var", "min", "max") if f"{q}_mean" in stats]
    averaged = [k for k in stats if k not in EPISODE_SUMS + last_value + tuple(hists) + tuple(steps)]
    metrics = {k: jnp.sum(stats[k] * active) / num_active for k in averaged}
    metrics.update({k: stats[k][num_active - 1] for k in last_value if k in stats})
    metrics.update({k: jax.tree.map(lambda x: x[num_active - 1], stats[k]) for k in hists})
    for q in STEP_STATISTICS if steps else ():
        mean = jnp.sum(stats[f"{q}_mean"] * active) / num_active
        spread = jnp.sum((stats[f"{q}_var"] + (stats[f"{q}_mean"] - mean) ** 2) * active) / num_active
        metrics.update(
            {
                f"{q}_mean": mean,
                f"{q}_std": jnp.sqrt(spread),
                f"{q}_min": jnp.min(jnp.where(active, stats[f"{q}_min"], jnp.inf)),
                f"{q}_max": jnp.max(jnp.where(active, stats[f"{q}_max"], -jnp.inf)),
            }
        )
    episodes = stats["episodes"].sum()
    metrics["train_return"] = jnp.where(episodes > 0, stats["return_sum"].sum() / episodes, jnp.nan)
    metrics["train_length"] = jnp.where(episodes > 0, stats["length_sum"].sum() / episodes, jnp.nan)
    return metrics
