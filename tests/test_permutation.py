"""training.permutation, the minibatch shuffle of the three scripts: a permutation of range(n) for
any n, uniformly random, with the `first` elements first (BPO's replay buffer: filled slots)."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import training


@pytest.mark.parametrize("n", [1, 2, 3, 5, 255, 256, 257, 512, 1000, 4097, 983_040])
def test_is_a_permutation(n):
    p = np.asarray(training.permutation(jax.random.PRNGKey(n), n))
    assert p.dtype == np.int32 and np.array_equal(np.sort(p), np.arange(n))


def test_uniform_over_all_permutations_of_four():
    """24 permutations, 4800 draws: a chi-square test of uniformity (and no permutation missing)."""
    keys = jax.random.split(jax.random.PRNGKey(1), 4800)
    draws = np.asarray(jax.vmap(lambda k: training.permutation(k, 4))(keys))
    counts = collections.Counter(map(tuple, draws.tolist()))
    assert set(counts) == set(itertools.permutations(range(4)))
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def test_positions_uniform_for_a_two_round_size():
    """n = 512 packs 23 random bits beside a 9-bit index, so it takes two sorting rounds: where each
    element lands is uniform (chi-square over 8 position bins, element by element, pooled)."""
    keys = jax.random.split(jax.random.PRNGKey(2), 400)
    perms = np.asarray(jax.vmap(lambda k: training.permutation(k, 512))(keys))
    position = np.argsort(perms, axis=1)  # position[d, i]: where element i went in draw d
    bins = np.stack([np.bincount(position[:, i] // 64, minlength=8) for i in range(0, 512, 8)])
    assert stats.chisquare(bins.ravel() + 0.0, np.full(bins.size, 400 / 8)).pvalue > 1e-3
    assert len({tuple(p[:8]) for p in perms.tolist()}) == 400  # no two draws alike


def test_first_elements_come_first_in_random_order():
    first = jnp.arange(1024) < 700
    a, b = (np.asarray(training.permutation(jax.random.PRNGKey(s), 1024, first)) for s in (0, 1))
    for p in (a, b):
        assert np.array_equal(np.sort(p[:700]), np.arange(700)) and np.array_equal(
            np.sort(p[700:]), np.arange(700, 1024)
        )
    assert not np.array_equal(a[:700], b[:700]) and not np.array_equal(a[:700], np.arange(700))


def test_too_large_is_a_clear_error():
    with pytest.raises(ValueError, match="too large"):
        training.permutation(jax.random.PRNGKey(0), 2**29)
