"""The tabular MDPs (envs/tabular) and their exact solver (envs/tabular/exact.py).

The solver is checked against Monte Carlo: episodes sampled in numpy from the same MDP arrays, with
the estimators written out step by step (`sample`). Margins are 5 standard errors (estimated from
the samples) and the seeds are fixed. The environment is checked against the MDP arrays with one
compiled rollout of envs.make("tabular-constant").
"""

import dataclasses
import json

import numpy as np
import pytest

import envs
from envs.tabular import BPO_PRESETS, PRESETS, TABULAR_IDS, deep_sea_mdp, make_mdp, tabular_mdp
from envs.tabular.exact import (
    behaviour_star,
    is_variance,
    main,
    solve,
    uniform_policy,
    variance_figures,
    visitation,
    vtrace_variance,
)

Z = 5.0  # margin of every Monte Carlo comparison, in standard errors


# ----------------------------------------------------------------------------------------------
# Monte Carlo in numpy
# ----------------------------------------------------------------------------------------------
def draw(p, rng):
    """One index per row of p [n, K] (inverse CDF)."""
    return np.minimum((rng.random((len(p), 1)) >= p.cumsum(-1)).sum(-1), p.shape[-1] - 1)


def sample_reward(mdp, s, a, rng):
    if mdp.reward_noise == "bernoulli":
        return (rng.random(len(s)) < mdp.r[s, a]).astype(float)
    if mdp.reward_noise == "gaussian":
        return mdp.r[s, a] + mdp.reward_std[s, a] * rng.standard_normal(len(s))
    return mdp.r[s, a]


def sample(mdp, pi, mu, gamma, n, seed, t0=0, s0=None, a0=None):
    """n episodes from step t0 with a_t ~ mu (s_t0 ~ d0 unless s0 [n] is given; a first action a0 [n]
    instead of one drawn). Returns the per-decision IS estimate sum_t gamma^(t-t0) (prod_{j<=t} rho_j) R_t
    (pi's return when mu = pi), the V-trace target V(s_t0) + sum_t gamma^(t-t0) (prod_{j<=t} rho_j) delta_t
    with the exact V, and visits[t, s], the fraction of episodes running at step t in state s."""
    rng = np.random.default_rng(seed)
    H, S = mdp.horizon, mdp.num_states
    V = np.concatenate([solve(mdp, pi, gamma).V, np.zeros((1, S))])
    s = draw(np.broadcast_to(mdp.d0, (n, S)), rng) if s0 is None else np.asarray(s0)
    running, weight = np.ones(n, bool), np.ones(n)  # weight: gamma^(t-t0) prod_{j<t} rho_j
    G, vs, visits = np.zeros(n), V[t0, s].copy(), np.zeros((H, S))
    for t in range(t0, H):
        visits[t] = np.bincount(s[running], minlength=S) / n
        a = draw(mu[t, s], rng) if (t > t0 or a0 is None) else np.asarray(a0)
        rho = pi[t, s, a] / mu[t, s, a]
        R = sample_reward(mdp, s, a, rng)
        s_next = draw(mdp.P[s, a], rng)
        goes_on = running & (rng.random(n) >= mdp.term[s, a])
        delta = R + gamma * goes_on * V[t + 1, s_next] - V[t, s]
        G += running * weight * rho * R
        vs += running * weight * rho * delta
        weight *= gamma * rho
        running, s = goes_on, s_next
    return G, vs, visits


def assert_mean(x, expected, label=""):
    se = x.std() / np.sqrt(len(x))
    assert abs(x.mean() - expected) <= Z * se + 1e-12, f"{label}: mean {x.mean()} vs exact {expected} (se {se})"


def assert_var(x, expected, label=""):
    c = x - x.mean()
    se = np.sqrt(max(np.mean(c**4) - np.mean(c**2) ** 2, 0.0) / len(x))
    assert abs(c.var() - expected) <= Z * se + 1e-12, f"{label}: variance {c.var()} vs exact {expected} (se {se})"


def small_mdp():
    """Every feature at once: stochastic P, d0, termination, Gaussian rewards; 3 states, 2 actions, H = 4.
    Also a time-dependent pi and a mu, both positive everywhere."""
    rng = np.random.default_rng(7)
    S, A, H = 3, 2, 4
    mdp = tabular_mdp(
        rng.dirichlet(np.ones(S), (S, A)),
        rng.normal(size=(S, A)),
        [0.5, 0.3, 0.2],
        H,
        term=rng.uniform(0, 0.3, (S, A)),
        reward_noise="gaussian",
        reward_std=rng.uniform(0.5, 1.5, (S, A)),
    )
    pi = rng.dirichlet(2 * np.ones(A), (H, S))
    mu = 0.5 * rng.dirichlet(np.ones(A), (H, S)) + 0.5 / A
    return mdp, pi, mu


# ----------------------------------------------------------------------------------------------
# The solver against Monte Carlo
# ----------------------------------------------------------------------------------------------
def test_q_and_q_hat_match_monte_carlo():
    """Q_t(s,a) and q_hat_t(s,a) = E[G_t^2 | s, a] from every (s, a) at two steps: pi's returns sampled
    from there. Gaussian rewards (E[R^2] = r^2 + std^2) and termination enter both. Also the bandit,
    whose Bernoulli q_hat = p differs from 2 r Q - r^2 = p^2."""
    mdp, pi, _ = small_mdp()
    exact = solve(mdp, pi, 0.9)
    S, A, n = mdp.num_states, mdp.num_actions, 20_000
    s0, a0 = np.repeat(np.arange(S * A) // A, n), np.repeat(np.arange(S * A) % A, n)
    for t0 in (0, mdp.horizon - 2):
        G = sample(mdp, pi, pi, 0.9, S * A * n, seed=t0, t0=t0, s0=s0, a0=a0)[0].reshape(S * A, n)
        for i in range(S * A):
            s, a = divmod(i, A)
            assert_mean(G[i], exact.Q[t0, s, a], f"Q_{t0}({s},{a})")
            assert_mean(G[i] ** 2, exact.q_hat[t0, s, a], f"q_hat_{t0}({s},{a})")
    bandit = make_mdp("tabular-bandit")
    np.testing.assert_allclose(solve(bandit, uniform_policy(bandit), 0.99).q_hat[0, 0], [0.1, 0.3, 0.9])


def test_variances_match_monte_carlo():
    """On-policy return, IS estimate and V-trace target: means J, variances var_pi, is_variance and
    vtrace_variance, under mu* and under another mu, on the small MDP."""
    mdp, pi, mu = small_mdp()
    gamma = 0.9
    exact = solve(mdp, pi, gamma)
    G, vs, _ = sample(mdp, pi, pi, gamma, 200_000, seed=1)
    np.testing.assert_allclose(vs, G, atol=1e-9)  # mu = pi: the V-trace target telescopes to the return
    assert_mean(G, exact.J, "on-policy return")
    assert_var(G, exact.var, "on-policy return")
    assert np.isclose(is_variance(mdp, pi, pi, gamma), exact.var)
    assert np.isclose(vtrace_variance(mdp, pi, pi, gamma), exact.var)
    for name, behaviour in (("mu*", exact.mu_star), ("mu", mu)):
        G, vs, _ = sample(mdp, pi, behaviour, gamma, 200_000, seed=2)
        assert_mean(G, exact.J, f"IS under {name}")
        assert_var(G, is_variance(mdp, pi, behaviour, gamma), f"IS under {name}")
        assert_mean(vs, exact.J, f"V-trace under {name}")
        assert_var(vs, vtrace_variance(mdp, pi, behaviour, gamma), f"V-trace under {name}")


def test_sparse_mdp_matches_monte_carlo():
    """tabular-sparse, uniform pi, gamma 0.9: the on-policy return and the IS estimate under mu*, which
    never takes the zero-reward actions at the last step (so V-trace's variance is inf there)."""
    mdp = make_mdp("tabular-sparse")
    pi, gamma = uniform_policy(mdp), 0.9
    exact = solve(mdp, pi, gamma)
    G, _, _ = sample(mdp, pi, pi, gamma, 50_000, seed=3)
    assert_mean(G, exact.J, "on-policy return")
    assert_var(G, exact.var, "on-policy return")
    G, _, _ = sample(mdp, pi, exact.mu_star, gamma, 50_000, seed=4)
    assert_mean(G, exact.J, "IS under mu*")
    assert_var(G, is_variance(mdp, pi, exact.mu_star, gamma), "IS under mu*")
    assert (exact.mu_star[-1] == 0).sum() == 6 and vtrace_variance(mdp, pi, exact.mu_star, gamma) == np.inf
    figures = variance_figures(mdp, gamma)
    assert figures["ratio_mu_star"] == pytest.approx(0.2424, abs=1e-4)


def test_visitation_matches_monte_carlo():
    mdp, pi, _ = small_mdp()
    d = visitation(mdp, pi)
    _, _, visits = sample(mdp, pi, pi, 0.9, 100_000, seed=5)
    np.testing.assert_allclose(d[0], mdp.d0)
    assert d[-1].sum() < d[0].sum()  # episodes end early
    se = np.sqrt(d * (1 - d) / 100_000)
    assert np.all(np.abs(visits - d) <= Z * se + 1e-12)


def test_zero_behaviour_probability():
    """mu = 0 where pi > 0: inf if the missed action matters, no harm where its return is always 0."""
    bandit = make_mdp("tabular-bandit")
    pi = uniform_policy(bandit)
    assert is_variance(bandit, pi, [[0.0, 0.5, 0.5]], 0.99) == np.inf
    assert vtrace_variance(bandit, pi, [[0.0, 0.5, 0.5]], 0.99) == np.inf
    zero_arm = bandit._replace(r=np.array([[0.0, 0.3, 0.9]]))  # arm 0 always pays 0: q_hat = 0
    mu = behaviour_star(pi, solve(zero_arm, pi, 0.99).q_hat)
    assert mu[0, 0, 0] == 0 and np.isfinite(is_variance(zero_arm, pi, mu, 0.99))
    assert vtrace_variance(zero_arm, pi, mu, 0.99) == np.inf  # delta = 0 - V != 0 on arm 0


# ----------------------------------------------------------------------------------------------
# The registered MDPs' figures
# ----------------------------------------------------------------------------------------------
def test_bandit_ratio():
    """mu* ∝ sqrt(p) for Bernoulli arms (q_hat = E[R^2] = p): Var = (mean sqrt p)^2 - J^2 against p - J^2."""
    p = np.array([0.1, 0.3, 0.9])
    J = p.mean()
    figures = variance_figures(make_mdp("tabular-bandit"), 0.99)
    assert figures["var_pi"] == pytest.approx(J - J**2)
    assert figures["ratio_mu_star"] == pytest.approx((np.sqrt(p).mean() ** 2 - J**2) / (J - J**2))
    assert round(figures["ratio_mu_star"], 2) == 0.72


def test_constant_mdp_is_a_negative_control():
    ratio = variance_figures(make_mdp("tabular-constant"), PRESETS["tabular-constant"]["gamma"])["ratio_mu_star"]
    assert abs(ratio - 1) < 1e-3 and ratio < 1


def test_deep_sea_figures_and_gymnax_dynamics():
    """The stored action mapping is gymnax's; the treasure path returns 1 - 0.01; the figures at gamma 0.99."""
    from gymnax.environments.bsuite.deep_sea import DeepSea

    for size, target in ((5, 0.017), (8, 0.039)):
        mdp = deep_sea_mdp(size)
        np.testing.assert_array_equal(
            np.asarray(DeepSea(size=size).action_mapping), envs.tabular.DEEP_SEA_ACTION_MAPPING[size]
        )
        right = (np.arange(2) == np.asarray(envs.tabular.DEEP_SEA_ACTION_MAPPING[size])[..., None]).reshape(-1, 2)
        s, total = 0, 0.0
        for _ in range(size):  # always right: the diagonal, then the treasure
            total += mdp.r[s, right[s].argmax()]
            s = mdp.P[s, right[s].argmax()].argmax()
        assert total == pytest.approx(0.99) and s == size * size - 1
        assert round(variance_figures(mdp, 0.99)["ratio_mu_star"], 3) == target


# ----------------------------------------------------------------------------------------------
# The environments
# ----------------------------------------------------------------------------------------------
def test_registered_ids_and_presets():
    import bpo
    import ppo

    assert set(TABULAR_IDS) <= set(envs.ENV_IDS) and all(envs.is_tabular(i) for i in TABULAR_IDS)
    assert not envs.is_tabular("DeepSea-bsuite")
    for env_id in TABULAR_IDS:
        mdp, env = make_mdp(env_id), envs.make(env_id)
        assert env.obs_shape == (mdp.num_states + mdp.horizon,) and env.max_episode_steps == mdp.horizon
        assert env.action_spec == envs.ActionSpec(True, mdp.num_actions)
        preset, bpo_preset = PRESETS[env_id], BPO_PRESETS[env_id]
        assert (
            set(preset)
            == {
                "env_id",
                "gamma",
                "total_timesteps",
                "num_envs",
                "num_steps",
                "minibatch_size",
                "num_epochs",
                "eval_every",
            }
            and preset["env_id"] == env_id
        )
        assert set(bpo_preset) == {"replay_size", "fqe_minibatch_size", "mu_minibatch_size", "fqe_epochs", "mu_epochs"}
        assert set(preset) <= {f.name for f in dataclasses.fields(ppo.Args)}
        assert set(preset) | set(bpo_preset) <= {f.name for f in dataclasses.fields(bpo.Args)}
        batch = preset["num_envs"] * preset["num_steps"]
        assert batch % preset["minibatch_size"] == 0 and preset["total_timesteps"] % batch == 0
        assert preset["eval_every"] % batch == 0 and 0 < preset["gamma"] <= 1
    with pytest.raises(ValueError, match="truncate"):
        envs.make("tabular-sparse", max_episode_steps=10)


def test_env_matches_mdp_arrays():
    """One compiled rollout of envs.make("tabular-constant") (random starts over states 1-3,
    stochastic moves, random termination, H = 100) with uniform actions, read back in numpy:
    observation layout, step count, termination (never truncation) at H, start, move and
    termination frequencies, rewards."""
    import jax

    env, mdp = envs.make("tabular-constant"), make_mdp("tabular-constant")
    S, H, n, T = mdp.num_states, mdp.horizon, 1000, 120

    def rollout(keys, actions):
        def one(keys, actions):
            def body(carry, x):
                ts = env.step(x[0], carry[1], x[1])
                return (ts.obs, ts.state), (carry[0], ts.reward, ts.terminated, ts.truncated, ts.final_obs)

            return jax.lax.scan(body, env.reset(keys[0]), (keys[1:], actions))[1]

        return jax.vmap(one)(keys, actions)

    keys = jax.random.split(jax.random.PRNGKey(0), n * (T + 1)).reshape(n, T + 1, -1)
    actions = np.random.default_rng(0).integers(0, 2, (n, T))
    obs, reward, terminated, truncated, final_obs = map(np.asarray, jax.jit(rollout)(keys, actions))

    # observation: one-hot(s) then one-hot(t); t counts the steps of the episode; the final observation's
    # time part is empty exactly where the episode reached H
    assert set(np.unique(obs)) <= {0.0, 1.0} and (obs[..., :S].sum(-1) == 1).all() and (obs[..., S:].sum(-1) == 1).all()
    s, t, s_next = obs[..., :S].argmax(-1), obs[..., S:].argmax(-1), final_obs[..., :S].argmax(-1)
    assert (final_obs[..., :S].sum(-1) == 1).all()
    assert (t[:, 0] == 0).all() and (t[:, 1:] == np.where(terminated[:, :-1], 0, t[:, :-1] + 1)).all()
    reached_h = t + 1 == H
    assert not truncated.any() and terminated[reached_h].all() and reached_h.sum() > 100
    np.testing.assert_array_equal(final_obs[..., S:].sum(-1), ~reached_h)
    assert (final_obs[..., S:].argmax(-1)[~reached_h] == t[~reached_h] + 1).all()
    assert (s[:, 1:] == np.where(terminated[:, :-1], s[:, 1:], s_next[:, :-1])).all()
    np.testing.assert_array_equal(reward, mdp.r[s, actions])

    def assert_frequencies(outcomes, p):  # outcomes [m] in 0..K-1 against probabilities p [K]
        freq, m = np.bincount(outcomes, minlength=len(p)) / len(outcomes), len(outcomes)
        assert np.all(np.abs(freq - p) <= Z * np.sqrt(p * (1 - p) / m) + 1e-12), (freq, p)

    starts = np.concatenate([s[:, 0], s[:, 1:][terminated[:, :-1]]])
    assert_frequencies(starts, mdp.d0)
    for i in range(S):
        for a in range(2):
            here = (s == i) & (actions == a)
            assert_frequencies(s_next[here], mdp.P[i, a])
            early = here & ~reached_h
            assert_frequencies(terminated[early].astype(int), np.array([1 - mdp.term[i, a], mdp.term[i, a]]))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def test_command_line(capsys):
    assert main(["tabular-bandit"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    line = json.loads(out)
    assert list(line) == ["env_id", "gamma", "horizon", "var_pi", "ratio_mu_star", "ratio_vtrace_mu_star"]
    assert line["env_id"] == "tabular-bandit" and line["gamma"] == 0.99 and line["horizon"] == 1
    assert round(line["ratio_mu_star"], 2) == 0.72
    assert main(["tabular-sparse", "--gamma", "0.99"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["gamma"] == 0.99 and line["var_pi"] == pytest.approx(
        solve(make_mdp("tabular-sparse"), uniform_policy(make_mdp("tabular-sparse")), 0.99).var
    )
    assert main(["CartPole-v1"]) != 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "tabular-sparse" in captured.err
