"""bpo_traj.trajectory_clipped_returns builds its T x T x E weights in blocks of rows; the blocked
result against the formula built at once (the estimator as it was before it was blocked)."""

import jax.numpy as jnp
import numpy as np
import pytest
from test_bpo_estimators import random_rollout

import bpo_traj


def unchunked(rewards, values, dones, last_value, log_pi, log_mu, gamma, lam, clip_rho, clip_c):
    """Every (t, k, env) weight at once, as trajectory_clipped_returns computed it before."""
    T = rewards.shape[0]
    log_ratio = log_pi - log_mu
    rho = jnp.minimum(jnp.exp(log_ratio), clip_rho)
    next_values = jnp.concatenate([values[1:], last_value[None]], 0)
    deltas = rewards + gamma * (1.0 - dones) * next_values - values
    L = jnp.cumsum(log_ratio, 0)
    episode = jnp.cumsum(dones, 0) - dones
    t, k = jnp.arange(T)[:, None, None], jnp.arange(T)[None, :, None]
    same = (k >= t) & (episode[:, None, :] == episode[None, :, :])
    log_prod = L[None, :, :] - L[:, None, :]
    discount = (gamma * lam) ** jnp.where(k >= t, k - t, 0)
    weight = jnp.where(same, discount * jnp.exp(jnp.minimum(log_prod, jnp.log(clip_c))), 0.0)
    adv = jnp.einsum("tke,ke->te", weight, deltas)
    clipped = dict(
        rho_clip_frac=jnp.mean(jnp.exp(log_ratio) > clip_rho),
        c_clip_frac=jnp.sum(same & (log_prod > jnp.log(clip_c))) / jnp.sum(same),
        effective_horizon=jnp.sum(weight) / (T * rewards.shape[1]),
    )
    return values + rho * adv, adv, rho, clipped


# (T, E, rows per block = 2**16 // (T E), clipped to [1, T]): 71 blocks of 21 rows and one of 9,
# 22 of 31 and one of 18, one row each (T E above 2**16), one block of all 40 rows.
@pytest.mark.parametrize("T,E,chunk", [(1500, 2, 21), (700, 3, 31), (33, 2048, 1), (40, 16, 40)])
@pytest.mark.parametrize("clip_rho,clip_c", [(1.0, 1.0), (2.0, 1.5)])
def test_blocks_equal_the_whole(T, E, chunk, clip_rho, clip_c):
    assert max(1, min(T, 2**16 // (T * E))) == chunk
    r, V, d, last, log_pi, log_mu = map(jnp.asarray, random_rollout(T + E, T, E))
    assert 0 < float(d[:-1].mean()) < 0.5  # episodes end mid-rollout
    args = (r, V, d, last, log_pi, log_mu, 0.99, 0.95, clip_rho, clip_c)
    vs, adv, rho, diag = bpo_traj.trajectory_clipped_returns(*args)
    ref_vs, ref_adv, ref_rho, ref_diag = unchunked(*args)
    scale = float(jnp.abs(ref_adv).max())
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-6 * scale)  # float rounding
    np.testing.assert_allclose(vs, ref_vs, rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_array_equal(rho, ref_rho)
    # The clipping fractions are ratios of the same integer counts: identical.
    assert float(diag["rho_clip_frac"]) == float(ref_diag["rho_clip_frac"])
    assert float(diag["c_clip_frac"]) == float(ref_diag["c_clip_frac"]) and 0 < float(diag["c_clip_frac"]) < 1
    # The same weights summed in another order: float32 sums of T x T x E terms differ in the last
    # bits, by how XLA orders them (a few eps)
    np.testing.assert_allclose(diag["effective_horizon"], ref_diag["effective_horizon"], rtol=1e-5)
