"""Exact values, second moments and estimator variances of a tabular MDP (numpy, float64).

Notation (envs/tabular/__init__.py): steps t = 0..H-1, policies as tables pi[t, s, a] (a stationary
[S, A] table is broadcast over t), c = 0 if the episode ends after (s, a) and 1 otherwise, so
E[c | s, a] = 1 - term[s, a]. Every recursion runs backwards from t = H, where everything is 0;
E_{s'} is sum_{s'} P[s, a, s'], and a continuation always carries the factor (1 - term[s, a]):

    Q_t(s,a)     = r + gamma (1 - term) E_{s'} V_{t+1}(s')                                     (value)
    V_t(s)       = sum_a pi_t(a|s) Q_t(s,a)
    q_hat_t(s,a) = E[R^2] + 2 gamma (1 - term) r E_{s'} V_{t+1}(s')
                   + gamma^2 (1 - term) E_{s'} sum_a' pi_{t+1}(a'|s') q_hat_{t+1}(s',a')         (second moment)

q_hat_t(s,a) = E[G_t^2 | s_t = s, a_t = a] for pi's discounted return G_t = R_t + gamma c G_{t+1}:
expand the square, with R independent of (c, s') given (s, a), E[R^2] = r^2 + Var(R), and
E[G_{t+1} | s'] = V_{t+1}(s'). (docs/algorithm.md eq. (2)-(3): bpo.py's r_hat = R^2 + 2 gamma R V(s')
has this expectation; the reference's 2 r Q - r^2, eq. (2b), equals it only where Var(R) = 0.)
The behaviour policy of docs/algorithm.md eq. (1),

    mu*_t(a|s) = pi_t(a|s) sqrt(q_hat_t(s,a)) / sum_b pi_t(b|s) sqrt(q_hat_t(s,b))     (behaviour_star)

(pi where the sum is 0), and the variances under a behaviour table mu of two estimates of J = E_{s0~d0} V_0(s0), with
rho_t = pi_t(a_t|s_t) / mu_t(a_t|s_t), a_t ~ mu:

    per-decision importance sampling:  G^IS = sum_t gamma^t (prod_{j<=t} rho_j) R_t              (is_variance)
    unclipped V-trace, lambda = 1, V = V_pi (or any table V):
        vs_0 = V_0(s_0) + sum_t gamma^t (prod_{j<t} rho_j) rho_t delta_t,
        delta_t = R_t + gamma c_t V_{t+1}(s_{t+1}) - V_t(s_t)                                   (vtrace_variance)

(the sums stop at the episode's end; with mu = pi both are pi's return G, so they share var_pi).

The behaviour that suits the V-trace target (docs/algorithm.md eq. (21)-(23)) tilts pi by the second
moment of the return about the baseline V_pi(s) instead of about 0,

    U_t(s,a) = E[(G_t - V_t(s))^2 | s_t = s, a_t = a] = (Q_t(s,a) - V_t(s))^2 + W_t(s,a),          (vtrace_tilt)
    W_t(s,a) = Var(G_t | s, a) = E[(R + gamma c Q_{t+1}(s', a') - Q_t(s,a))^2 | s, a]
               + gamma^2 (1 - term) E_{s'} sum_a' pi_{t+1}(a'|s') W_{t+1}(s',a'),   a' ~ pi_{t+1}(.|s'),

W's recursion being the variance Bellman equation (discount gamma^2, the squared TD error of a sampled
next action as its reward). `behaviour(pi, tilt, beta, mix)` is the general behaviour of
docs/algorithm.md eq. (18)-(19): (1 - mix) pi + mix pi tilt^(beta/2) / Z, mu* = behaviour(pi, q_hat).
envs/tabular/exact_jax.py computes the same in jax (float32, inside compiled programs).
`python -m envs.tabular ENV_ID [--gamma G]` prints the figures of a registered id for the uniform pi.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NamedTuple

import numpy as np

from envs.tabular import PRESETS, TABULAR_IDS, TabularMDP, make_mdp, reward_variance


class Exact(NamedTuple):
    Q: np.ndarray  # [H, S, A] Q_t(s, a)
    V: np.ndarray  # [H, S] V_t(s)
    q_hat: np.ndarray  # [H, S, A] E[G_t^2 | s, a] under pi
    mu_star: np.ndarray  # [H, S, A] mu*_t ∝ pi_t sqrt(q_hat_t)
    J: float  # E_{s0~d0} V_0(s0): pi's expected discounted H-step return
    var: float  # Var(G) of pi's return G from s0 ~ d0 (on-policy sampling)


def uniform_policy(mdp: TabularMDP) -> np.ndarray:
    """pi[t, s, a] = 1 / A."""
    return np.full((mdp.horizon, mdp.num_states, mdp.num_actions), 1.0 / mdp.num_actions)


def _table(mdp: TabularMDP, policy) -> np.ndarray:
    """A policy as [H, S, A] float64 (a stationary [S, A] table broadcast over t), rows summing to 1."""
    policy = np.broadcast_to(np.asarray(policy, np.float64), (mdp.horizon, mdp.num_states, mdp.num_actions))
    if policy.min() < 0 or not np.allclose(policy.sum(-1), 1):
        raise ValueError("a policy table's rows must be probability distributions")
    return policy


def _next(mdp: TabularMDP, x_next: np.ndarray) -> np.ndarray:
    """(1 - term[s, a]) E_{s' ~ P[s, a]} x_next(s') [S, A]: the expected continuation of x. A successor
    that cannot occur (P = 0, or term = 1) adds 0 even where x_next is inf."""
    with np.errstate(invalid="ignore"):
        expected = np.where(mdp.P > 0, mdp.P * x_next, 0.0).sum(-1)
        return np.where(mdp.term < 1, (1 - mdp.term) * expected, 0.0)


def _start(mdp: TabularMDP, x: np.ndarray) -> float:
    """E_{s0~d0} x(s0); a state that is never a start adds 0 even where x is inf."""
    with np.errstate(invalid="ignore"):
        return float(np.where(mdp.d0 > 0, mdp.d0 * x, 0.0).sum())


def _rho2(pi: np.ndarray, mu: np.ndarray, f: np.ndarray) -> np.ndarray:
    """E_{a~mu}[rho^2 f(a)] = sum_a pi^2 / mu f(a) [S], f >= 0. An action with pi = 0 adds 0; one with
    mu = 0 < pi adds the limit as mu -> 0: 0 if f = 0 there (it is never needed), inf otherwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(mu > 0, pi**2 / mu * f, np.where(f == 0, 0.0, np.inf))
    return np.where(pi > 0, terms, 0.0).sum(-1)


def solve(mdp: TabularMDP, pi, gamma: float) -> Exact:
    """Q_t, V_t, q_hat_t, mu*_t of pi (module docstring), J and the on-policy variance
    Var(G) = E_{s0~d0} sum_a pi_0 q_hat_0(s0, a) - J^2."""
    pi = _table(mdp, pi)
    H, S, A = pi.shape
    r, r2 = mdp.r, mdp.r**2 + reward_variance(mdp)  # E[R], E[R^2]
    Q, V, q_hat = np.zeros((H, S, A)), np.zeros((H + 1, S)), np.zeros((H, S, A))
    m_next = np.zeros(S)  # sum_a pi_{t+1} q_hat_{t+1}(s, a), 0 at t + 1 = H
    for t in reversed(range(H)):
        Q[t] = r + gamma * _next(mdp, V[t + 1])
        V[t] = (pi[t] * Q[t]).sum(-1)
        q_hat[t] = r2 + 2 * gamma * r * _next(mdp, V[t + 1]) + gamma**2 * _next(mdp, m_next)
        m_next = (pi[t] * q_hat[t]).sum(-1)
    J = _start(mdp, V[0])
    return Exact(Q, V[:H], q_hat, behaviour_star(pi, q_hat), J, _start(mdp, m_next) - J**2)


def behaviour_star(pi: np.ndarray, q_hat: np.ndarray) -> np.ndarray:
    """mu* ∝ pi sqrt(q_hat) (docs/algorithm.md eq. (1)), normalised over actions; pi itself where
    pi sqrt(q_hat) is 0 for every action (nothing to estimate there)."""
    return behaviour(pi, q_hat)


def behaviour(pi, tilt, beta: float = 1.0, mix: float = 1.0, floor: float = 0.0) -> np.ndarray:
    """The behaviour policies of docs/algorithm.md eq. (18)-(19), as tables [..., A]:

        mu_beta ∝ pi max(tilt, floor)^(beta/2)      (tempered; pi itself where this is 0 for every action)
        mu      = (1 - mix) pi + mix mu_beta        (mixed with pi)

    tilt = q_hat gives mu* at beta = 1 (behaviour_star), tilt = vtrace_tilt's U the V-trace behaviour;
    beta = 0 or mix = 0 gives pi. floor = 1e-6 is bpo.py's floor of the tilt (eq. (14), (18))."""
    pi = np.asarray(pi, np.float64)
    tilt = np.maximum(np.asarray(tilt, np.float64), floor)
    w = pi * (np.sqrt(tilt) if beta == 1 else tilt ** (beta / 2))  # 0^0 = 1: beta = 0 is pi
    z = w.sum(-1, keepdims=True)
    tempered = np.where(z > 0, w / np.where(z > 0, z, 1.0), pi)
    return (1 - mix) * pi + mix * tempered


def vtrace_tilt(mdp: TabularMDP, pi, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(U, W) [H, S, A] of pi (module docstring): W_t(s,a) = Var(G_t | s, a) by the variance Bellman
    equation, run backwards from W_H = 0 with

        E[(R + gamma c Q_{t+1}(s',a') - Q_t(s,a))^2 | s,a] = Var(R) + gamma^2 Var(c V_{t+1}(s') | s,a)
                                                            + gamma^2 (1 - term) E_{s'} Var_{a'~pi} Q_{t+1}(s',a')

    (the TD error has mean 0: its square's mean is the variance of R + gamma c Q_{t+1}(s', a')), and
    U_t(s,a) = (Q_t(s,a) - V_t(s))^2 + W_t(s,a), the tilt of the V-trace behaviour (eq. (21)-(23))."""
    pi = _table(mdp, pi)
    exact = solve(mdp, pi, gamma)
    H, S, A = pi.shape
    Q = np.concatenate([exact.Q, np.zeros((1, S, A))])
    V = np.concatenate([exact.V, np.zeros((1, S))])
    pi_next = np.concatenate([pi, np.full((1, S, A), 1.0 / A)])  # pi_H plays no part: Q_H = W_H = 0
    W = np.zeros((H + 1, S, A))
    for t in reversed(range(H)):
        spread = (pi_next[t + 1] * (Q[t + 1] - V[t + 1][:, None]) ** 2).sum(-1)  # Var_{a'~pi} Q_{t+1}(s', a')
        var_next = _next(mdp, V[t + 1] ** 2) - _next(mdp, V[t + 1]) ** 2  # Var(c V_{t+1}(s') | s, a)
        td2 = reward_variance(mdp) + gamma**2 * (var_next + _next(mdp, spread))
        W[t] = td2 + gamma**2 * _next(mdp, (pi_next[t + 1] * W[t + 1]).sum(-1))
    return (exact.Q - exact.V[..., None]) ** 2 + W[:H], W[:H]


def visitation(mdp: TabularMDP, pi) -> np.ndarray:
    """d[t, s] = P(the episode is still running at step t and s_t = s) under pi:
    d_0 = d0,  d_{t+1}(s') = sum_{s,a} d_t(s) pi_t(a|s) (1 - term[s, a]) P[s, a, s'].
    sum_s d_t(s) < 1 once episodes can end before H."""
    pi = _table(mdp, pi)
    d = np.zeros((mdp.horizon, mdp.num_states))
    d[0] = mdp.d0
    for t in range(mdp.horizon - 1):
        d[t + 1] = np.einsum("s,sa,sap->p", d[t], pi[t] * (1 - mdp.term), mdp.P)
    return d


def is_variance(mdp: TabularMDP, pi, mu, gamma: float) -> float:
    """Var of the per-decision importance-sampling estimate G^IS = sum_t gamma^t (prod_{j<=t} rho_j) R_t
    of J, actions a_t ~ mu, s0 ~ d0. With G^IS_t = rho_t (R_t + gamma c_t G^IS_{t+1}) (0 after the end),
    E[G^IS_t | s] = V_t(s) and its second moment W_t(s) = E[(G^IS_t)^2 | s_t = s] follows

        U_t(s,a) = E[R^2] + 2 gamma (1 - term) r E_{s'} V_{t+1}(s') + gamma^2 (1 - term) E_{s'} W_{t+1}(s')
        W_t(s)   = sum_a pi_t(a|s)^2 / mu_t(a|s) U_t(s,a),        W_H = 0,

    (U = q_hat and W_t = sum_a pi q_hat for mu = pi), and Var = E_{s0~d0} W_0(s0) - J^2. An action
    with mu = 0 < pi counts as the limit mu -> 0: nothing where U = 0 (its return is surely 0, as for
    mu*'s zeros), inf otherwise."""
    pi, mu = _table(mdp, pi), _table(mdp, mu)
    exact = solve(mdp, pi, gamma)
    V = np.concatenate([exact.V, np.zeros((1, mdp.num_states))])
    r, r2 = mdp.r, mdp.r**2 + reward_variance(mdp)
    W = np.zeros(mdp.num_states)
    for t in reversed(range(mdp.horizon)):
        U = r2 + 2 * gamma * r * _next(mdp, V[t + 1]) + gamma**2 * _next(mdp, W)
        W = _rho2(pi[t], mu[t], U)
    return _start(mdp, W) - exact.J**2


def vtrace_variance(mdp: TabularMDP, pi, mu, gamma: float, V=None) -> float:
    """Var of the unclipped V-trace target with lambda = 1 and a value table V [H, S] (default: the
    exact V = V_pi), vs_0 = V_0(s_0) + Y_0, Y_t = rho_t (delta_t + gamma c_t Y_{t+1}) (0 after the end),
    delta_t = R_t + gamma c_t V_{t+1}(s_{t+1}) - V_t(s_t) (V_H = 0), a_t ~ mu. vs_0 is unbiased for J
    whatever V is: m_t(s) = E[Y_t | s_t = s] = V_pi,t(s) - V_t(s) (E_mu[rho x] = E_pi[x], and the sum
    telescopes), 0 for V = V_pi. Z_t(s) = E[Y_t^2 | s_t = s] follows

        Q^V_t(s,a)       = r + gamma (1 - term) E_{s'} V_{t+1}(s')          (Q_t for V = V_pi)
        E[delta^2 | s,a] = Var(R) + gamma^2 [(1 - term) E_{s'} V_{t+1}^2 - ((1 - term) E_{s'} V_{t+1})^2]
                           + (Q^V_t(s,a) - V_t(s))^2
        E[delta c Y_{t+1} | s,a] = (1 - term) E_{s'} (r - V_t(s) + gamma V_{t+1}(s')) m_{t+1}(s')
        Z_t(s)           = sum_a pi_t(a|s)^2 / mu_t(a|s) (E[delta^2 | s,a] + 2 gamma E[delta c Y_{t+1} | s,a]
                                                          + gamma^2 (1 - term) E_{s'} Z_{t+1}(s')),

    Z_H = 0 (delta = R + gamma c V_{t+1}(s') - V_t(s), R independent of (c, s'), mean Q^V - V; the
    cross term is 0 for V = V_pi). Var(vs_0) = E_{s0~d0} [V_0^2 + 2 V_0 m_0 + Z_0](s0) - J^2
    (= Var_{s0~d0}(V_0(s0)) + E_{s0~d0} Z_0(s0) for V = V_pi). With mu = pi it is var_pi for every V
    (vs_0 telescopes to the return); with V = 0 it is the per-decision IS estimate (is_variance). An
    action with mu = 0 < pi counts as the limit mu -> 0: nothing where the bracket is 0, inf otherwise
    (e.g. mu*'s zeros where V_t(s) != 0)."""
    pi, mu = _table(mdp, pi), _table(mdp, mu)
    exact = solve(mdp, pi, gamma)
    H, S = mdp.horizon, mdp.num_states
    V_pi = np.concatenate([exact.V, np.zeros((1, S))])
    if V is None:
        V = V_pi
    else:
        V = np.asarray(V, np.float64)
        if V.shape != (H, S):
            raise ValueError(f"V must be a [H, S] = [{H}, {S}] table, got shape {V.shape}")
        V = np.concatenate([V, np.zeros((1, S))])
    m = V_pi - V  # E[Y_t | s_t = s], m_H = 0
    var_r, Z = reward_variance(mdp), np.zeros(S)
    for t in reversed(range(H)):
        var_next = _next(mdp, V[t + 1] ** 2) - _next(mdp, V[t + 1]) ** 2  # Var(c V_{t+1}(s') | s, a)
        q_v = mdp.r + gamma * _next(mdp, V[t + 1])
        delta2 = var_r + gamma**2 * var_next + (q_v - V[t][:, None]) ** 2
        cross = (mdp.r - V[t][:, None]) * _next(mdp, m[t + 1]) + gamma * _next(mdp, V[t + 1] * m[t + 1])
        bracket = delta2 + 2 * gamma * cross + gamma**2 * _next(mdp, Z)
        Z = _rho2(pi[t], mu[t], np.maximum(bracket, 0.0))  # E[(delta + gamma c Y')^2] >= 0: rounding only
    return _start(mdp, V[0] ** 2 + 2 * V[0] * m[0] + Z) - exact.J**2


def variance_figures(mdp: TabularMDP, gamma: float, pi=None) -> dict:
    """var_pi (on-policy Var(G)), ratio_mu_star = is_variance(mu*) / var_pi and
    ratio_vtrace_mu_star = vtrace_variance(mu*) / var_pi, for pi (default: uniform)."""
    pi = uniform_policy(mdp) if pi is None else _table(mdp, pi)
    exact = solve(mdp, pi, gamma)
    return dict(
        var_pi=exact.var,
        ratio_mu_star=is_variance(mdp, pi, exact.mu_star, gamma) / exact.var,
        ratio_vtrace_mu_star=vtrace_variance(mdp, pi, exact.mu_star, gamma) / exact.var,
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m envs.tabular ENV_ID [--gamma G]`: one JSON line of the uniform pi's figures
    (gamma defaults to the id's preset)."""
    parser = argparse.ArgumentParser(prog="python -m envs.tabular", description=main.__doc__)
    parser.add_argument("env_id", help=f"one of {', '.join(TABULAR_IDS)}")
    parser.add_argument("--gamma", type=float, default=None, help="discount (default: the id's preset gamma)")
    args = parser.parse_args(argv)
    if args.env_id not in TABULAR_IDS:
        print(
            f"{parser.prog}: error: unknown tabular env id {args.env_id!r}; choose one of {', '.join(TABULAR_IDS)}",
            file=sys.stderr,
        )
        return 2
    gamma = PRESETS[args.env_id]["gamma"] if args.gamma is None else args.gamma
    if not 0 <= gamma <= 1:
        print(f"{parser.prog}: error: --gamma must be in [0, 1], got {gamma}", file=sys.stderr)
        return 2
    mdp = make_mdp(args.env_id)
    print(json.dumps(dict(env_id=args.env_id, gamma=gamma, horizon=mdp.horizon, **variance_figures(mdp, gamma))))
    return 0
