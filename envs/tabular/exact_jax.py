"""The exact quantities of envs/tabular/exact.py in jax: pure jax.numpy functions of policy tables, for
use inside a compiled training program (jit, vmap over seeds; float32).

The MDP's numpy arrays become constants of the program and H = mdp.horizon is a static Python int
(one lax.scan over t). Policies are tables pi[t, s, a] ([H, S, A], rows summing to 1; a stationary
[S, A] table is broadcast over t); c = 0 if the episode ends after (s, a), 1 otherwise, so
E[c | s, a] = 1 - term[s, a]; E_{s'} is sum_{s'} P[s, a, s'].

One backward recursion serves every variance (exact.py's recursions, rewritten in central moments,
which float32 needs: a second moment less a squared mean loses the variance to rounding wherever the
returns are large against their spread). For a behaviour mu and a value table V (V_H = 0) the
lambda = 1 V-trace target

    vs_t = V_t(s_t) + rho_t (R_t + gamma c_t vs_{t+1} - V_t(s_t)),   rho_t = pi_t(a_t|s_t) / mu_t(a_t|s_t),

(vs after the end is 0) has mean V_pi,t(s) given s_t = s whatever V is. Write X = R_t + gamma c_t vs_{t+1},
whose mean given (s, a) is Q_t(s, a), and C_t(s) = Var(vs_t | s_t = s):

    Var(X | s,a) = Var(R) + gamma^2 [(1 - term) E_{s'} C_{t+1}(s')
                                     + (1 - term) Var_{s'}(V_pi,t+1(s')) + term (1 - term) (E_{s'} V_pi,t+1(s'))^2]
    C_t(s)       = sum_a pi^2/mu (Var(X | s,a) + A^2) + 2 D sum_a pi (pi - mu)/mu A + D^2 sum_a (pi - mu)^2/mu
                 = sum_a pi^2/mu [Var(X | s,a) + (Q_t(s,a) - V_t(s))^2] - D^2,

with A = Q_t(s,a) - V_pi,t(s), D = V_pi,t(s) - V_t(s) (the second line is the first summed up; the first
is the one computed), and Var(vs_0) = E_{s0~d0} C_0(s0) + Var_{s0~d0}(V_pi,0(s0)). Special cases:

    V = V_pi        the V-trace target of exact.vtrace_variance (D = 0)
    V = 0           the per-decision importance-sampling estimate of exact.is_variance (vs_t = rho_t X)
    mu = pi         pi's return G (every V): C = on-policy Var(G_t | s), q_hat = Var(X | s,a) + Q^2

An action with mu = 0 < pi counts as the limit mu -> 0, as in exact.py: nothing where its bracket
Var(X | s,a) + (Q - V)^2 is 0 (the estimate never needs it: e.g. mu*'s zeros in IS), inf otherwise.
An action with mu > 0 = pi adds D^2 mu (the target stops at V_t(s) there). A variance beyond float32's
range (3.4e38: e.g. a random mu over H = 100 steps) is inf.

The exact figures are of the whole episode (H steps); bpo.py's sampled probe cuts segments at
gamma^t < 0.01 when that comes first (it does not on the registered tabular presets).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from envs.tabular import TabularMDP, observe, reward_variance

Q_HAT_FLOOR = 1e-6  # bpo.py's floor of q_hat in mu's target (mu_target_discrete, docs/algorithm.md eq. 14)


class ExactJax(NamedTuple):
    Q: jax.Array  # [H, S, A] Q_t(s, a) of pi
    V: jax.Array  # [H, S] V_t(s) of pi
    q_hat: jax.Array  # [H, S, A] E[G_t^2 | s, a] under pi
    W: jax.Array  # [H, S, A] Var(G_t | s, a) under pi (exact.vtrace_tilt's W)
    J: jax.Array  # E_{s0~d0} V_0(s0)
    var: jax.Array  # Var(G) of pi's return from s0 ~ d0 (on-policy)


def _constants(mdp: TabularMDP):
    """The MDP's arrays as float32 constants: P [S, A, S'], r, Var(R), term [S, A], d0 [S]."""
    f = lambda x: jnp.asarray(np.asarray(x, np.float32))  # noqa: E731
    return f(mdp.P), f(mdp.r), f(reward_variance(mdp)), f(mdp.term), f(mdp.d0)


def _table(mdp: TabularMDP, policy) -> jax.Array:
    """A policy (or any [H, S, A] quantity) as [H, S, A] float32; an [S, A] table is broadcast over t."""
    return jnp.broadcast_to(jnp.asarray(policy, jnp.float32), (mdp.horizon, mdp.num_states, mdp.num_actions))


def _next(P, term, x_next):
    """(1 - term[s, a]) E_{s' ~ P[s, a]} x_next(s') [S, A]; a successor that cannot occur (P = 0, or
    term = 1) adds 0 even where x_next is inf."""
    expected = jnp.where(P > 0, P * x_next, 0.0).sum(-1)
    return jnp.where(term < 1, (1 - term) * expected, 0.0)


def _start(d0, x):
    """E_{s0~d0} x(s0); a state that is never a start adds 0 even where x is inf."""
    return jnp.where(d0 > 0, d0 * x, 0.0).sum()


def _backward(mdp: TabularMDP, pi, mu, V, gamma):
    """The recursion of the module docstring, t = H-1..0 (lax.scan). V: [H, S] or None (V = V_pi).
    Returns Q [H, S, A], V_pi [H, S], Var(X | s,a) [H, S, A] and C [H, S] (Var(vs_t | s_t = s))."""
    P, r, var_r, term, _ = _constants(mdp)
    S = mdp.num_states
    exact_v = V is None
    V = (
        jnp.zeros((mdp.horizon, S), jnp.float32)
        if exact_v
        else jnp.broadcast_to(jnp.asarray(V, jnp.float32), (mdp.horizon, S))
    )

    def step(carry, x):
        v_next, c_next = carry  # V_pi,t+1 and C_{t+1} [S], 0 at t + 1 = H
        pi_t, mu_t, v_t = x
        mean_next = (P * v_next).sum(-1)  # E_{s'} V_pi,t+1(s') [S, A]
        spread_next = (P * (v_next - mean_next[..., None]) ** 2).sum(-1)  # Var_{s'} V_pi,t+1(s')
        var_x = var_r + gamma**2 * (
            _next(P, term, c_next) + (1 - term) * spread_next + term * (1 - term) * mean_next**2
        )
        q = r + gamma * (1 - term) * mean_next
        v_pi = (pi_t * q).sum(-1)
        v_t = v_pi if exact_v else v_t
        adv, dev = q - v_pi[:, None], (v_pi - v_t)[:, None]  # A = Q - V_pi, D = V_pi - V
        safe_mu = jnp.where(mu_t > 0, mu_t, 1.0)
        on_pi = jnp.where(
            pi_t > 0, pi_t**2 / safe_mu * (var_x + adv**2) + 2 * dev * pi_t * (pi_t - mu_t) / safe_mu * adv, 0.0
        )
        taken = on_pi + dev**2 * (pi_t - mu_t) ** 2 / safe_mu
        bracket = var_x + (q - v_t[:, None]) ** 2  # E[(X - V_t(s))^2 | s, a]
        never = jnp.where((pi_t > 0) & (bracket > 0), jnp.inf, 0.0)  # mu = 0: the limit mu -> 0
        c_t = jnp.where(mu_t > 0, taken, never).sum(-1)
        return (v_pi, c_t), (q, v_pi, var_x, c_t)

    zeros = jnp.zeros(S, jnp.float32)
    _, (Q, V_pi, var_x, C) = jax.lax.scan(step, (zeros, zeros), (pi, mu, V), reverse=True)
    return Q, V_pi, var_x, C


def _target_variance(mdp: TabularMDP, V_pi, C):
    """Var(vs_0) = E_{s0~d0} C_0(s0) + Var_{s0~d0}(V_pi,0(s0)), and J = E_{s0~d0} V_pi,0(s0)."""
    d0 = jnp.asarray(np.asarray(mdp.d0, np.float32))
    J = (d0 * V_pi[0]).sum()
    return _start(d0, C[0]) + (d0 * (V_pi[0] - J) ** 2).sum(), J


def solve_jax(mdp: TabularMDP, pi, gamma) -> ExactJax:
    """Q_t, V_t, q_hat_t, W_t = Var(G_t | s, a) of pi, J and the on-policy Var(G), as exact.solve and
    exact.vtrace_tilt (module docstring with mu = pi: W = Var(X | s,a), q_hat = W + Q^2,
    Var(G) = E_{s0~d0} C_0 + Var_{s0~d0}(V_0))."""
    pi = _table(mdp, pi)
    Q, V, var_x, C = _backward(mdp, pi, pi, None, gamma)
    var, J = _target_variance(mdp, V, C)
    return ExactJax(Q, V, var_x + Q**2, var_x, J, var)


def behaviour_star_jax(pi, q_hat, floor: float = 0.0):
    """mu* ∝ pi sqrt(max(q_hat, floor)) (docs/algorithm.md eq. (1)), normalised over actions; pi itself
    where pi sqrt(.) is 0 for every action. floor = 0 is exact.behaviour_star (mu* is 0 where q_hat is
    0); floor = Q_HAT_FLOOR is bpo.py's target for mu (mu_target_discrete)."""
    return behaviour_jax(pi, q_hat, floor=floor)


def _is(x, value) -> bool:
    """x is the Python number `value` (not a traced array): a branch the program can take statically."""
    return isinstance(x, (int, float)) and x == value


def behaviour_jax(pi, tilt, beta=1.0, mix=1.0, floor: float = 0.0):
    """exact.behaviour: (1 - mix) pi + mix mu_beta, mu_beta ∝ pi max(tilt, floor)^(beta/2) (pi where that
    is 0 for every action); docs/algorithm.md eq. (18)-(19). beta and mix may be traced."""
    tilt = jnp.maximum(tilt, floor)
    w = pi * (jnp.sqrt(tilt) if _is(beta, 1) else tilt ** (beta / 2))  # 0^0 = 1: beta = 0 is pi
    z = w.sum(-1, keepdims=True)
    tempered = jnp.where(z > 0, w / jnp.where(z > 0, z, 1.0), pi)
    return (1 - mix) * pi + mix * tempered


def visitation_jax(mdp: TabularMDP, pi) -> jax.Array:
    """d[t, s] = P(the episode is still running at step t and s_t = s) under pi, as exact.visitation:
    d_0 = d0,  d_{t+1}(s') = sum_{s,a} d_t(s) pi_t(a|s) (1 - term[s, a]) P[s, a, s']."""
    P, _, _, term, d0 = _constants(mdp)
    pi = _table(mdp, pi)

    def step(d, pi_t):
        return jnp.einsum("s,sa,sap->p", d, pi_t * (1 - term), P), d

    return jax.lax.scan(step, d0, pi)[1]


def is_variance_jax(mdp: TabularMDP, pi, mu, gamma) -> jax.Array:
    """Var of the per-decision importance-sampling estimate G^IS = sum_t gamma^t (prod_{j<=t} rho_j) R_t
    of J, a_t ~ mu, as exact.is_variance: the target of the module docstring with V = 0. inf where
    mu = 0 < pi on an action whose return is not surely 0 (q_hat under mu's continuation > 0)."""
    pi, mu = _table(mdp, pi), _table(mdp, mu)
    _, V_pi, _, C = _backward(mdp, pi, mu, jnp.zeros((mdp.horizon, mdp.num_states)), gamma)
    return _target_variance(mdp, V_pi, C)[0]


def vtrace_variance_jax(mdp: TabularMDP, pi, mu, gamma, V=None) -> jax.Array:
    """Var of the unclipped V-trace target with lambda = 1, vs_0 = V_0(s_0) + sum_t gamma^t
    (prod_{j<t} rho_j) rho_t delta_t, delta_t = R_t + gamma c_t V_{t+1}(s_{t+1}) - V_t(s_t), a_t ~ mu,
    as exact.vtrace_variance: V [H, S] a given table (a learned critic; the target stays unbiased
    for J), or None for the exact V = V_pi. inf where mu = 0 < pi on an action whose bracket
    Var(X | s,a) + (Q - V)^2 is > 0."""
    pi, mu = _table(mdp, pi), _table(mdp, mu)
    _, V_pi, _, C = _backward(mdp, pi, mu, V, gamma)
    return _target_variance(mdp, V_pi, C)[0]


def _ratio(x, var_pi):
    """x / var_pi; nan where var_pi = 0 (pi's return does not vary: no ratio)."""
    return jnp.where(var_pi > 0, x / jnp.where(var_pi > 0, var_pi, 1.0), jnp.nan)


def _kl(mu, target):
    """KL(mu_t(.|s) || target_t(.|s)) [H, S]; inf where mu > 0 = target."""
    safe = lambda x: jnp.where(x > 0, x, 1.0)  # noqa: E731
    kl = jnp.where(mu > 0, mu * (jnp.log(safe(mu)) - jnp.log(safe(target))), 0.0).sum(-1)
    return jnp.where((mu > 0) & (target == 0), jnp.inf, 0.0).sum(-1) + kl


def probe_exact(
    mdp: TabularMDP,
    pi,
    mu,
    q_hat_learned,
    gamma,
    V=None,
    target: str = "second-moment",
    beta=1.0,
    mix=1.0,
    floor=Q_HAT_FLOOR,
) -> dict:
    """The variance probe's exact columns (float32 scalars) for the tables pi, mu, q_hat_learned [H, S, A]
    (the learned q_hat head in the environment's raw reward units, squared: the second moment q_hat, or
    W = Var(G | s, a) with target "vtrace") and optionally a learned critic V [H, S]; target, beta and
    mix are the run's --mu-target, --mu-temper and --mu-mix, floor its --q-hat-floor in raw reward units
    (beta, mix and floor may be traced).
    All are about the whole episode (H steps); var_pi = pi's on-policy Var(G), mu* ∝ pi sqrt(q_hat)
    with pi's exact q_hat, mu_V ∝ pi sqrt(U) with pi's exact U = (Q - V_pi)^2 + W (exact.vtrace_tilt,
    the behaviour that suits the V-trace target), the run's exact target mu_target = (1 - mix) pi +
    mix pi tilt^(beta/2) / Z with the exact tilt of `target` (q_hat or U) floored at `floor` (the run's
    --q-hat-floor, 1e-6 by default: what the run's mu would be with the exact tilt: exact.behaviour),
    d = pi's visitation (visitation_jax), and a ratio is nan where var_pi = 0:

      probe_exact_ratio             is_variance(pi, mu) / var_pi: the learned mu against on-policy sampling
      probe_exact_ratio_opt         is_variance(pi, mu*) / var_pi, mu* with no floor (exact.behaviour_star:
                                    0 where q_hat = 0, which the IS estimate never needs)
      q_hat_rel_error               sum_{t,s,a} d_t(s) pi_t(a|s) |q_hat_learned - x| / sum d pi x, x the exact
                                    quantity the head fits: q_hat, or W with target "vtrace"
      kl_mu_opt                     sum_{t,s} d_t(s) KL(mu_t(.|s) || mu*_t(.|s)) / sum_{t,s} d_t(s): the KL
                                    per decision, averaged over the decisions pi's episodes make (/H when
                                    no episode ends early); mu* here is bpo.py's target for mu, q_hat
                                    floored at Q_HAT_FLOOR = 1e-6 (finite KL where q_hat = 0)
      probe_exact_vtrace_ratio      vtrace_variance(pi, mu, V_pi) / var_pi  (= .. / vtrace_variance(pi, pi, V))
      probe_exact_vtrace_ratio_opt  vtrace_variance(pi, mu*, V_pi) / var_pi, mu* floored at 1e-6 (without
                                    the floor it is inf wherever mu* drops an action with V_t(s) != 0)
      probe_exact_vtrace_ratio_v    (only with V) vtrace_variance(pi, mu, V) / var_pi, the learned critic's
      probe_exact_ratio_target      is_variance(pi, mu_target) / var_pi
      probe_exact_vtrace_ratio_target  vtrace_variance(pi, mu_target, V_pi) / var_pi
      kl_mu_target_exact            as kl_mu_opt, KL(mu || mu_target): how far the learned mu is from
                                    what its configuration aims at (the tilt's error and, with
                                    --mu-form network, the fit's)
      probe_exact_ratio_vopt        is_variance(pi, mu_V) / var_pi (no floor)
      probe_exact_vtrace_ratio_vopt vtrace_variance(pi, mu_V, V_pi) / var_pi (no floor: mu_V is 0 only where
                                    the V-trace target never needs the action); at most 1

    and probe_exact_var_pi = var_pi, probe_exact_J = J. With the defaults (second moment, beta = mix = 1)
    mu_target is mu* floored and the _target columns repeat kl_mu_opt and probe_exact_vtrace_ratio_opt
    (probe_exact_ratio_target is probe_exact_ratio_opt with the floor). A learned mu with mu = 0 < pi
    on an action that matters (float32 softmax underflow) makes its ratios inf."""
    pi, mu, q_hat_learned = _table(mdp, pi), _table(mdp, mu), _table(mdp, q_hat_learned)
    exact = solve_jax(mdp, pi, gamma)
    u = exact.W + (exact.Q - exact.V[..., None]) ** 2
    fitted, tilt = (exact.W, u) if target == "vtrace" else (exact.q_hat, exact.q_hat)
    mu_star = behaviour_star_jax(pi, exact.q_hat)
    mu_star_floor = behaviour_star_jax(pi, exact.q_hat, Q_HAT_FLOOR)
    mu_target = behaviour_jax(pi, tilt, beta, mix, floor)
    mu_v = behaviour_jax(pi, u)
    d = visitation_jax(mdp, pi)
    weight = d[..., None] * pi
    is_ratio = lambda b: _ratio(is_variance_jax(mdp, pi, b, gamma), exact.var)  # noqa: E731
    vtrace_ratio = lambda b: _ratio(vtrace_variance_jax(mdp, pi, b, gamma), exact.var)  # noqa: E731
    out = dict(
        probe_exact_J=exact.J,
        probe_exact_var_pi=exact.var,
        probe_exact_ratio=is_ratio(mu),
        probe_exact_ratio_opt=is_ratio(mu_star),
        q_hat_rel_error=(weight * jnp.abs(q_hat_learned - fitted)).sum() / (weight * fitted).sum(),
        kl_mu_opt=(d * _kl(mu, mu_star_floor)).sum() / d.sum(),
        probe_exact_vtrace_ratio=vtrace_ratio(mu),
        probe_exact_vtrace_ratio_opt=vtrace_ratio(mu_star_floor),
        probe_exact_ratio_target=is_ratio(mu_target),
        probe_exact_vtrace_ratio_target=vtrace_ratio(mu_target),
        kl_mu_target_exact=(d * _kl(mu, mu_target)).sum() / d.sum(),
        probe_exact_ratio_vopt=is_ratio(mu_v),
        probe_exact_vtrace_ratio_vopt=vtrace_ratio(mu_v),
    )
    if V is not None:
        out["probe_exact_vtrace_ratio_v"] = _ratio(vtrace_variance_jax(mdp, pi, mu, gamma, V), exact.var)
    return out


def all_observations(mdp: TabularMDP) -> jax.Array:
    """The observation of every (s, t), t < H, in (t, s) order: row t * S + s is observe(s, t, S, H);
    [H * S, S + H] float32."""
    S, H = mdp.num_states, mdp.horizon
    s, t = jnp.tile(jnp.arange(S), H), jnp.repeat(jnp.arange(H), S)
    return jax.vmap(lambda s, t: observe(s, t, S, H))(s, t)


def policy_tables(apply_fn, mdp: TabularMDP):
    """apply_fn (a network on a batch of observations, [H * S, S + H] -> [H * S, ...], e.g. pi's
    probabilities or q_hat's values per action) on every observation (all_observations), reshaped to
    [H, S, ...]: the tables the functions above take. Every leaf of a pytree output is reshaped. The
    caller applies its observation normalisation inside apply_fn."""
    H, S = mdp.horizon, mdp.num_states
    return jax.tree.map(lambda x: x.reshape((H, S) + x.shape[1:]), apply_fn(all_observations(mdp)))
