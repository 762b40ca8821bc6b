"""bpo_traj.py's estimator against a plain double loop written from docs/algorithm.md, and the
pieces that make it a standalone copy of bpo.py."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from test_bpo_estimators import random_rollout

import bpo_traj
import ppo


def reference_trajectory_clipped(r, V, d, last, ratio, gamma, lam, clip_rho, clip_c):
    """vs_t = V_t + rho_t sum_{k=t}^{K} (gamma lambda)^(k-t) min(clip_c, prod_{j=t+1}^{k} ratio_j) delta_k,
    adv_t = the sum alone; K = the last step of t's episode (inclusive) or of the rollout."""
    T, E = r.shape
    v_next = np.concatenate([V[1:], last[None]], 0)
    adv = np.zeros((T, E))
    for e in range(E):
        for t in range(T):
            total = 0.0
            for k in range(t, T):
                prod = np.prod(ratio[t + 1 : k + 1, e])
                delta = r[k, e] + gamma * (1 - d[k, e]) * v_next[k, e] - V[k, e]
                total += (gamma * lam) ** (k - t) * min(clip_c, prod) * delta
                if d[k, e]:
                    break  # the episode's last step is included, nothing after it
            adv[t, e] = total
    return V + np.minimum(ratio, clip_rho) * adv, adv


@pytest.mark.parametrize("clip_rho,clip_c", [(1.5, 1.5), (1.0, 1.0), (1.0, 0.6), (2.0, 3.0)])
def test_trajectory_clipping_matches_definition(clip_rho, clip_c):
    for seed, (gamma, lam) in enumerate([(0.99, 0.95), (0.9, 0.0), (0.98, 1.0)]):
        r, V, d, last, log_pi, log_mu = random_rollout(seed + 10)
        ratio = np.exp(log_pi - log_mu)
        vs, adv, rho, diag = bpo_traj.trajectory_clipped_returns(
            *map(jnp.asarray, (r, V, d, last, log_pi, log_mu)), gamma, lam, clip_rho, clip_c
        )
        ref_vs, ref_adv = reference_trajectory_clipped(r, V, d, last, ratio, gamma, lam, clip_rho, clip_c)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(vs, ref_vs, rtol=1e-4, atol=1e-4)
        assert 0.0 <= float(diag["c_clip_frac"]) <= 1.0 and float(diag["effective_horizon"]) > 0


def test_a_return_stops_at_its_episode_end_and_includes_the_terminal_delta():
    """The reference's loop masks episode ends one step late; here a huge delta just after an
    episode end must not leak into the episode before, and the end step's own delta counts."""
    T = 6
    r, V = np.zeros((T, 1)), np.zeros((T, 1))
    d = np.zeros((T, 1))
    d[2, 0] = 1.0  # episode ends at step 2
    r[2, 0], r[3, 0] = 1.0, 1e6  # the terminal reward, and a huge one in the next episode
    zeros = np.zeros((T, 1))
    vs, adv, _, _ = bpo_traj.trajectory_clipped_returns(
        *map(jnp.asarray, (r, V, d, np.zeros(1), zeros, zeros)), 0.9, 0.8, 1.0, 1.0
    )
    np.testing.assert_allclose(np.asarray(adv)[:3, 0], [0.72**2, 0.72, 1.0], rtol=1e-6)  # (gamma lambda)^(2-t)
    assert np.asarray(adv)[3, 0] == pytest.approx(1e6, rel=1e-6)


def test_pi_equal_mu_is_ppo_gae():
    r, V, d, last, log_pi, _ = random_rollout(4)
    args = [jnp.asarray(x, jnp.float32) for x in (r, V, d, last)]
    log_pi = jnp.asarray(log_pi, jnp.float32)
    for clip_c in (1.0, 1.5):
        vs, adv, rho, diag = bpo_traj.trajectory_clipped_returns(*args, log_pi, log_pi, 0.98, 0.8, 1.5, clip_c)
        gae_adv, lambda_returns = ppo.gae(*args, 0.98, 0.8)
        np.testing.assert_allclose(adv, gae_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(vs, lambda_returns, rtol=1e-5, atol=1e-5)
        assert float(diag["c_clip_frac"]) == 0.0


def test_bpo_traj_differs_from_bpo_only_in_the_estimator():
    """The two files are standalone copies: the same Args fields (plus nothing), the same phases."""
    import bpo

    assert [f.name for f in dataclasses.fields(bpo.Args)] == [f.name for f in dataclasses.fields(bpo_traj.Args)]
    assert set(bpo.PRESETS) | {"ppo_bpo_zero1.0_traj", "ppo_bpo_zero1.5_traj"} == set(bpo_traj.PRESETS)
    assert bpo_traj.parse_args(["--preset", "ppo_bpo_zero1.5_traj"]).clip_c == 1.5
    assert bpo_traj.parse_args(["--preset", "cartpole_ppo", "ppo_bpo_zero1.0_traj"]).clip_rho == 1.0
    assert set(bpo_traj.METRIC_COLUMNS) - set(bpo.METRIC_COLUMNS) == {"effective_horizon"}
