"""The jax exact quantities (envs/tabular/exact_jax.py) against the numpy solver (envs/tabular/exact.py),
compiled (jit) and vmapped over a batch of two policies, in float32; the probe's exact columns; the
observation tables; and the numpy V-trace variance with a given (non-exact) V against Monte Carlo.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs.tabular import make_mdp, observe, tabular_mdp
from envs.tabular.exact import behaviour_star, is_variance, solve, uniform_policy, visitation, vtrace_variance
from envs.tabular.exact_jax import (
    Q_HAT_FLOOR,
    all_observations,
    behaviour_star_jax,
    is_variance_jax,
    policy_tables,
    probe_exact,
    solve_jax,
    visitation_jax,
    vtrace_variance_jax,
)

RTOL = 1e-4  # float32 against float64


def small_mdp():
    """Stochastic P and d0, termination, Gaussian rewards; 3 states, 2 actions, H = 4."""
    rng = np.random.default_rng(7)
    S, A = 3, 2
    return tabular_mdp(
        rng.dirichlet(np.ones(S), (S, A)),
        rng.normal(size=(S, A)),
        [0.5, 0.3, 0.2],
        4,
        term=rng.uniform(0, 0.3, (S, A)),
        reward_noise="gaussian",
        reward_std=rng.uniform(0.5, 1.5, (S, A)),
    )


MDPS = {
    "tabular-sparse": (lambda: make_mdp("tabular-sparse"), 0.9),
    "tabular-bandit": (lambda: make_mdp("tabular-bandit"), 0.99),
    "tabular-deepsea-5": (lambda: make_mdp("tabular-deepsea-5"), 0.99),
    "small": (small_mdp, 0.9),
}


def tables(mdp, seed):
    """pi = (uniform, random), mu = two random full-support tables, V = two random (non-exact) tables."""
    rng = np.random.default_rng(seed)
    H, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    pi = np.stack([uniform_policy(mdp), rng.dirichlet(np.ones(A), (H, S))])
    mu = 0.5 * rng.dirichlet(np.ones(A), (2, H, S)) + 0.5 / A
    return pi, mu, rng.normal(size=(2, H, S))


def assert_close(actual, expected, label):
    expected = np.asarray(expected, np.float64)
    atol = RTOL * max(np.abs(expected).max(), 1e-12)  # near-zero entries: relative to the table's scale
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=RTOL, atol=atol, err_msg=label)


@pytest.mark.parametrize("name", list(MDPS))
def test_matches_numpy_under_jit_and_vmap(name):
    """Q, V, q_hat, J, var_pi, visitation, IS and V-trace variances (exact V and a given V): one compiled
    program, vmapped over (pi, mu, V) batches of 2, against exact.py entry by entry."""
    build, gamma = MDPS[name]
    mdp = build()

    def everything(pi, mu, V):
        exact = solve_jax(mdp, pi, gamma)
        return dict(
            Q=exact.Q,
            V=exact.V,
            q_hat=exact.q_hat,
            J=exact.J,
            var=exact.var,
            d=visitation_jax(mdp, pi),
            is_var=is_variance_jax(mdp, pi, mu, gamma),
            vtrace=vtrace_variance_jax(mdp, pi, mu, gamma),
            vtrace_v=vtrace_variance_jax(mdp, pi, mu, gamma, V),
        )

    pis, mus, Vs = tables(mdp, seed=len(name))
    out = jax.jit(jax.vmap(everything))(pis, mus, Vs)
    assert out["var"].dtype == jnp.float32 and out["Q"].shape == (2, mdp.horizon, mdp.num_states, mdp.num_actions)
    for i, (pi, mu, V) in enumerate(zip(pis, mus, Vs)):
        exact = solve(mdp, pi, gamma)
        expected = dict(
            Q=exact.Q,
            V=exact.V,
            q_hat=exact.q_hat,
            J=exact.J,
            var=exact.var,
            d=visitation(mdp, pi),
            is_var=is_variance(mdp, pi, mu, gamma),
            vtrace=vtrace_variance(mdp, pi, mu, gamma),
            vtrace_v=vtrace_variance(mdp, pi, mu, gamma, V),
        )
        for key, value in expected.items():
            assert_close(out[key][i], value, f"{name}, policy {i}: {key}")
        assert not np.isclose(expected["vtrace_v"], expected["vtrace"], rtol=1e-3)  # V matters


def test_zero_behaviour_probability_conventions():
    """mu = 0 < pi: inf where the missed action matters, as numpy; mu*'s zeros (q_hat = 0) cost IS nothing
    but V-trace with V != 0 everything; mu* on tabular-sparse (6 zeros at t = H - 1) as numpy."""
    bandit = make_mdp("tabular-bandit")
    zero_arm = bandit._replace(r=np.array([[0.0, 0.3, 0.9]]))
    pi = uniform_policy(bandit)

    @jax.jit
    def bandit_figures(one_missing):
        mu = behaviour_star_jax(pi, solve_jax(zero_arm, pi, 0.99).q_hat)
        return (
            is_variance_jax(bandit, pi, one_missing, 0.99),
            vtrace_variance_jax(bandit, pi, one_missing, 0.99),
            mu,
            is_variance_jax(zero_arm, pi, mu, 0.99),
            vtrace_variance_jax(zero_arm, pi, mu, 0.99),
            vtrace_variance_jax(zero_arm, pi, mu, 0.99, V=jnp.zeros((1, 1))),  # V = 0: IS again
        )

    is_missing, vtrace_missing, mu, is_zero_arm, vtrace_zero_arm, vtrace_zero_v = bandit_figures(
        np.array([[[0.0, 0.5, 0.5]]])
    )
    assert is_missing == np.inf and vtrace_missing == np.inf
    assert mu[0, 0, 0] == 0 and np.isfinite(is_zero_arm)
    assert_close(is_zero_arm, is_variance(zero_arm, pi, np.asarray(mu, float), 0.99), "IS, zero arm")
    assert vtrace_zero_arm == np.inf and vtrace_zero_v == pytest.approx(float(is_zero_arm), rel=RTOL)

    sparse = make_mdp("tabular-sparse")
    pi = uniform_policy(sparse)
    exact = solve(sparse, pi, 0.9)

    @jax.jit
    def sparse_figures():
        mu_star = behaviour_star_jax(pi, solve_jax(sparse, pi, 0.9).q_hat)
        return mu_star, is_variance_jax(sparse, pi, mu_star, 0.9), vtrace_variance_jax(sparse, pi, mu_star, 0.9)

    mu_star, is_star, vtrace_star = sparse_figures()
    np.testing.assert_array_equal(np.asarray(mu_star) == 0, exact.mu_star == 0)
    assert_close(is_star, is_variance(sparse, pi, exact.mu_star, 0.9), "IS, mu*")
    assert vtrace_star == np.inf


def test_probe_exact():
    """tabular-sparse, a random pi, compiled and vmapped over mu in (pi, mu*, floored mu*, a random mu):
    mu = pi gives ratios 1; mu = mu* gives ratio = ratio_opt; the floored mu* is the KL's reference
    (KL 0) and V-trace's opt column; the KL and the q_hat error against numpy."""
    mdp, gamma = make_mdp("tabular-sparse"), 0.9
    H, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    rng = np.random.default_rng(3)
    pi = rng.dirichlet(np.ones(A), (H, S))
    exact = solve(mdp, pi, gamma)
    floored = behaviour_star(pi, np.maximum(exact.q_hat, Q_HAT_FLOOR))
    mu_random = 0.5 * rng.dirichlet(np.ones(A), (H, S)) + 0.5 / A
    mus = np.stack([pi, exact.mu_star, floored, mu_random])
    q_hat_learned = exact.q_hat * rng.uniform(0.5, 1.5, exact.q_hat.shape)
    V = exact.V + rng.normal(size=exact.V.shape)
    out = jax.jit(jax.vmap(lambda mu: probe_exact(mdp, pi, mu, q_hat_learned, gamma, V)))(mus)
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}

    assert all(v.dtype == np.float64 and v.shape == (4,) for v in out.values())
    assert_close(out["probe_exact_J"], np.full(4, exact.J), "J")
    assert_close(out["probe_exact_var_pi"], np.full(4, exact.var), "var_pi")
    for key in ("probe_exact_ratio", "probe_exact_vtrace_ratio", "probe_exact_vtrace_ratio_v"):
        assert out[key][0] == pytest.approx(1, rel=RTOL), key  # mu = pi: pi's return itself
    assert out["probe_exact_ratio"][1] == pytest.approx(out["probe_exact_ratio_opt"][1], rel=RTOL)
    assert_close(out["probe_exact_ratio_opt"], np.full(4, is_variance(mdp, pi, exact.mu_star, gamma) / exact.var), "")
    assert out["probe_exact_ratio_opt"][0] < 0.9  # mu* does gain here
    assert out["probe_exact_vtrace_ratio"][1] == np.inf  # mu*'s zeros, V = V_pi != 0
    assert out["probe_exact_vtrace_ratio"][2] == pytest.approx(out["probe_exact_vtrace_ratio_opt"][2], rel=RTOL)
    assert_close(out["probe_exact_vtrace_ratio_opt"][0], vtrace_variance(mdp, pi, floored, gamma) / exact.var, "")
    for i in (1, 3):
        assert_close(out["probe_exact_ratio"][i], is_variance(mdp, pi, mus[i], gamma) / exact.var, f"ratio {i}")
    assert_close(out["probe_exact_vtrace_ratio_v"][3], vtrace_variance(mdp, pi, mu_random, gamma, V) / exact.var, "")

    d = visitation(mdp, pi)
    weight = d[..., None] * pi
    assert_close(
        out["q_hat_rel_error"],
        np.full(4, (weight * np.abs(q_hat_learned - exact.q_hat)).sum() / (weight * exact.q_hat).sum()),
        "q_hat_rel_error",
    )
    kl = np.where(mus > 0, mus * np.log(np.where(mus > 0, mus, 1) / floored), 0).sum(-1)  # 0 log 0 = 0
    expected_kl = (d * kl).sum((1, 2)) / d.sum()
    np.testing.assert_allclose(out["kl_mu_opt"], expected_kl, rtol=1e-3, atol=1e-6)
    assert out["kl_mu_opt"][2] < 1e-6 and out["kl_mu_opt"][0] > 0.01 and out["kl_mu_opt"][1] > 0

    same = probe_exact(mdp, pi, pi, exact.q_hat, gamma)
    assert same["q_hat_rel_error"] < 1e-5 and "probe_exact_vtrace_ratio_v" not in same


def test_probe_exact_floor_and_normalisation():
    """Returns of order 1e-3 (q_hat near the 1e-6 floor) with early ends: ratio_opt uses the unfloored
    mu* (the floored one's variance differs here), the KL the floored one, averaged over the decisions
    pi's episodes make (sum_t sum_s d_t(s) < H)."""
    mdp, gamma = small_mdp(), 0.9
    mdp = mdp._replace(r=1e-3 * mdp.r, reward_noise="none", reward_std=None)
    H, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    pi = np.random.default_rng(5).dirichlet(np.ones(A), (H, S))
    exact = solve(mdp, pi, gamma)
    floored = behaviour_star(pi, np.maximum(exact.q_hat, Q_HAT_FLOOR))
    is_star, is_floored = is_variance(mdp, pi, exact.mu_star, gamma), is_variance(mdp, pi, floored, gamma)
    assert abs(is_floored / is_star - 1) > 0.01  # the floor matters
    mus = np.stack([pi, exact.mu_star])
    out = jax.jit(jax.vmap(lambda mu: probe_exact(mdp, pi, mu, exact.q_hat, gamma)))(mus)
    assert_close(out["probe_exact_ratio_opt"], np.full(2, is_star / exact.var), "ratio_opt")
    assert_close(out["probe_exact_ratio"], [1, is_star / exact.var], "ratio")
    d = visitation(mdp, pi)
    assert d.sum() < 0.9 * H
    kl = np.where(mus > 0, mus * np.log(np.where(mus > 0, mus, 1) / floored), 0).sum(-1)
    np.testing.assert_allclose(out["kl_mu_opt"], (d * kl).sum((1, 2)) / d.sum(), rtol=1e-3)


def test_policy_tables():
    """Every (s, t) observation, in (t, s) order, through a network once; reshaped to [H, S, A]."""
    mdp = make_mdp("tabular-deepsea-5")
    H, S, A = mdp.horizon, mdp.num_states, mdp.num_actions
    W = jax.random.normal(jax.random.PRNGKey(0), (S + H, A))
    net = lambda obs: jax.nn.softmax(jnp.tanh(obs) @ W)  # noqa: E731
    obs = np.asarray(all_observations(mdp))
    assert obs.shape == (H * S, S + H) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:, :S].argmax(-1), np.tile(np.arange(S), H))
    np.testing.assert_array_equal(obs[:, S:].argmax(-1), np.repeat(np.arange(H), S))
    table = jax.jit(lambda: policy_tables(net, mdp))()
    assert table.shape == (H, S, A)
    ts = ((0, 0), (2, 7), (H - 1, S - 1))
    one_by_one = jax.jit(lambda: [net(observe(s, t, S, H)[None])[0] for t, s in ts])()
    for (t, s), expected in zip(ts, one_by_one):
        np.testing.assert_allclose(table[t, s], expected, rtol=1e-6)
    pair = policy_tables(lambda obs: (net(obs), obs.sum(-1)), mdp)  # pytree outputs: every leaf
    assert pair[0].shape == (H, S, A) and pair[1].shape == (H, S)


def test_vtrace_variance_with_given_v_matches_monte_carlo():
    """numpy vtrace_variance(V=...) with a non-exact V: Monte Carlo V-trace targets have mean J (unbiased
    whatever V) and the computed variance, within 5 standard errors; V = 0 is the IS estimate."""
    mdp = small_mdp()
    gamma, n, H, S = 0.9, 200_000, mdp.horizon, mdp.num_states
    rng = np.random.default_rng(11)
    pi = rng.dirichlet(2 * np.ones(2), (H, S))
    mu = 0.5 * rng.dirichlet(np.ones(2), (H, S)) + 0.25
    exact = solve(mdp, pi, gamma)
    V = exact.V + rng.normal(0, 2, (H, S))
    draw = lambda p: np.minimum((rng.random((n, 1)) >= p.cumsum(-1)).sum(-1), p.shape[-1] - 1)  # noqa: E731
    V_ext = np.concatenate([V, np.zeros((1, S))])
    s = draw(np.broadcast_to(mdp.d0, (n, S)))
    running, weight, vs = np.ones(n, bool), np.ones(n), V_ext[0, s].copy()
    for t in range(H):
        a = draw(mu[t, s])
        rho = pi[t, s, a] / mu[t, s, a]
        R = mdp.r[s, a] + mdp.reward_std[s, a] * rng.standard_normal(n)
        s_next = draw(mdp.P[s, a])
        goes_on = running & (rng.random(n) >= mdp.term[s, a])
        vs += running * weight * rho * (R + gamma * goes_on * V_ext[t + 1, s_next] - V_ext[t, s])
        weight *= gamma * rho
        running, s = goes_on, s_next
    expected = vtrace_variance(mdp, pi, mu, gamma, V)
    assert not np.isclose(expected, vtrace_variance(mdp, pi, mu, gamma), rtol=0.05)  # V matters here
    c = vs - vs.mean()
    se_var = np.sqrt((np.mean(c**4) - np.mean(c**2) ** 2) / n)
    assert abs(vs.mean() - exact.J) <= 5 * vs.std() / np.sqrt(n)
    assert abs(c.var() - expected) <= 5 * se_var, (c.var(), expected, se_var)
    assert vtrace_variance(mdp, pi, mu, gamma, np.zeros((H, S))) == pytest.approx(is_variance(mdp, pi, mu, gamma))
    assert vtrace_variance(mdp, pi, mu, gamma, exact.V) == pytest.approx(vtrace_variance(mdp, pi, mu, gamma))
    assert vtrace_variance(mdp, pi, pi, gamma, V) == pytest.approx(exact.var)  # mu = pi: the return, every V
    with pytest.raises(ValueError, match="V must be"):
        vtrace_variance(mdp, pi, mu, gamma, V[:-1])
