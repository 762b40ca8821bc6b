"""The behaviour policy's forms (docs/algorithm.md eq. 18-23): mu in closed form (--mu-form closed),
tempered (--mu-temper), mixed with pi (--mu-mix), and tilted for the V-trace target (--mu-target
vtrace), in bpo.py and bpo_traj.py, checked against the exact solver (envs/tabular/exact.py).

The exact solver's new pieces first (numpy: the V-trace tilt U = (Q - V)^2 + W by the variance
Bellman equation, the general behaviour), then the scripts' module-level functions, then the
trainer: what a closed-form mu leaves out of the state, one-line errors, swept beta and b, and two
short runs with pi frozen on tabular MDPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_tabular import assert_mean, sample, small_mdp

import bpo
import bpo_traj
import envs
import runner
from envs.tabular import PRESETS, make_mdp, reward_variance
from envs.tabular.exact import (
    _next,
    behaviour,
    behaviour_star,
    is_variance,
    solve,
    uniform_policy,
    visitation,
    vtrace_tilt,
    vtrace_variance,
)
from envs.tabular.exact_jax import all_observations, policy_tables, probe_exact

MODULES = [bpo, bpo_traj]


def ratios(mdp, pi, mu, gamma):
    """(IS, V-trace) variance ratios of the behaviour mu against on-policy sampling, exact V."""
    var = solve(mdp, pi, gamma).var
    return is_variance(mdp, pi, mu, gamma) / var, vtrace_variance(mdp, pi, mu, gamma) / var


# ----------------------------------------------------------------------------------------------
# The exact solver: U and W against their definitions, the general behaviour
# ----------------------------------------------------------------------------------------------
def test_vtrace_tilt_is_the_second_moment_about_v():
    """W_t(s,a) (the variance Bellman equation) is Var(G_t | s, a) = q_hat - Q^2, and U = (Q - V)^2 + W
    is E[(G_t - V_t(s))^2 | s, a] = q_hat - 2 V Q + V^2: against solve's moments (exactly) and
    against pi's returns sampled from every (s, a) at two steps of the small MDP (Gaussian rewards,
    termination, a time-dependent pi)."""
    mdp, pi, _ = small_mdp()
    gamma = 0.9
    exact = solve(mdp, pi, gamma)
    U, W = vtrace_tilt(mdp, pi, gamma)
    V = exact.V[..., None]
    np.testing.assert_allclose(W, exact.q_hat - exact.Q**2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(U, exact.q_hat - 2 * V * exact.Q + V**2, rtol=1e-10, atol=1e-12)
    assert W.min() > 0 and np.ptp(U[0], -1).min() > 0.01  # something to tilt by
    S, A, n = mdp.num_states, mdp.num_actions, 20_000
    s0, a0 = np.repeat(np.arange(S * A) // A, n), np.repeat(np.arange(S * A) % A, n)
    for t0 in (0, mdp.horizon - 2):
        G = sample(mdp, pi, pi, gamma, S * A * n, seed=10 + t0, t0=t0, s0=s0, a0=a0)[0].reshape(S * A, n)
        for i in range(S * A):
            s, a = divmod(i, A)
            assert_mean((G[i] - exact.V[t0, s]) ** 2, U[t0, s, a], f"U_{t0}({s},{a})")


def test_behaviour_tempering_and_mixture():
    """exact.behaviour: mu* at beta = mix = 1, pi at beta = 0 and at mix = 0, the mixture in between."""
    mdp, pi, _ = small_mdp()
    q_hat = solve(mdp, pi, 0.9).q_hat
    np.testing.assert_array_equal(behaviour(pi, q_hat), behaviour_star(pi, q_hat))
    np.testing.assert_allclose(behaviour(pi, q_hat, beta=0.0), pi, rtol=1e-12)
    np.testing.assert_array_equal(behaviour(pi, q_hat, mix=0.0), pi)
    tempered = pi * q_hat**0.25 / (pi * q_hat**0.25).sum(-1, keepdims=True)
    np.testing.assert_allclose(behaviour(pi, q_hat, beta=0.5), tempered, rtol=1e-12)
    np.testing.assert_allclose(behaviour(pi, q_hat, 0.5, 0.3), 0.7 * pi + 0.3 * tempered, rtol=1e-12)


# The exact V-trace variance ratios (unclipped, lambda = 1, V = V_pi, uniform pi, preset gamma):
# mu ∝ pi sqrt(U) | mu* ∝ pi sqrt(q_hat) (floored at 1e-6 as mu's target floors it)
VTRACE_RATIOS = {
    "tabular-bandit": (0.9918, 1.1288),
    "tabular-sparse": (0.9600, 9.1504),
    "tabular-deepsea-5": (0.3523, 15.519),
    "tabular-deepsea-8": (0.1050, 2.6395),
}


@pytest.mark.parametrize("env_id", list(VTRACE_RATIOS))
def test_the_vtrace_target_lowers_the_vtrace_variance_where_mu_star_raises_it(env_id):
    """On the exact solver's V-trace estimator, mu ∝ pi sqrt(U) has ratio <= 1 where mu* ∝ pi
    sqrt(q_hat) has ratio > 1 (bandit: 1.13; sparse and deepsea: inf, and 2.6-15.5 floored). W
    without the spread of the later actions' values (the gamma^2-value of (R + gamma V(s') - Q)^2
    alone) is not enough: on sparse it raises the variance (1.024), on deepsea it gains nothing."""
    mdp, gamma = make_mdp(env_id), PRESETS[env_id]["gamma"]
    pi = uniform_policy(mdp)
    exact = solve(mdp, pi, gamma)
    U, _ = vtrace_tilt(mdp, pi, gamma)
    expected_v, expected_star = VTRACE_RATIOS[env_id]
    _, vtrace_v = ratios(mdp, pi, behaviour(pi, U), gamma)
    _, vtrace_star = ratios(mdp, pi, behaviour(pi, exact.q_hat, floor=1e-6), gamma)
    assert vtrace_v <= 1 < vtrace_star
    assert vtrace_v == pytest.approx(expected_v, abs=1e-4) and vtrace_star == pytest.approx(expected_star, rel=1e-4)
    assert ratios(mdp, pi, behaviour(pi, exact.q_hat), gamma)[1] >= vtrace_star  # unfloored: inf or the same
    # the W of the literal reading: no Var_{a'~pi} Q(s', a') in its reward
    H, S = mdp.horizon, mdp.num_states
    V = np.concatenate([exact.V, np.zeros((1, S))])
    W = np.zeros((H + 1,) + pi.shape[1:])
    for t in reversed(range(H)):
        td2 = reward_variance(mdp) + gamma**2 * (_next(mdp, V[t + 1] ** 2) - _next(mdp, V[t + 1]) ** 2)
        W[t] = td2 + gamma**2 * _next(mdp, (pi[min(t + 1, H - 1)] * W[t + 1]).sum(-1))
    literal = ratios(mdp, pi, behaviour(pi, (exact.Q - exact.V[..., None]) ** 2 + W[:H]), gamma)[1]
    if env_id == "tabular-sparse":
        assert literal > 1.02
    elif env_id.startswith("tabular-deepsea"):
        assert literal > 0.999


def test_the_vtrace_behaviour_is_optimal_for_one_decision_and_never_worse_than_pi():
    """Random MDPs and policies: pi sqrt(U) applied at every decision never raises the V-trace target's
    variance (backward induction, eq. 23); at one (t, s), the rest on-policy, it is the minimum: any
    other behaviour there does no better."""
    rng = np.random.default_rng(25)
    worse_than_pi = 0
    for k in range(20):
        mdp, pi, _ = small_mdp()
        S, A, H = mdp.num_states, mdp.num_actions, mdp.horizon
        mdp = mdp._replace(
            P=rng.dirichlet(np.full(S, 0.5), (S, A)), r=rng.normal(size=(S, A)) * (rng.random((S, A)) < 0.5)
        )
        pi = rng.dirichlet(np.ones(A), (H, S))
        gamma = 0.95
        exact = solve(mdp, pi, gamma)
        U, _ = vtrace_tilt(mdp, pi, gamma)
        assert ratios(mdp, pi, behaviour(pi, U), gamma)[1] <= 1 + 1e-12
        worse_than_pi += ratios(mdp, pi, behaviour(pi, exact.q_hat), gamma)[1] > 1
        t, s = k % H, k % S
        one = pi.copy()
        one[t, s] = behaviour(pi[t, s], U[t, s])
        best = vtrace_variance(mdp, pi, one, gamma)
        for other in rng.dirichlet(np.ones(A), 5):
            one[t, s] = 0.5 * other + 0.5 * behaviour(pi[t, s], U[t, s])
            assert vtrace_variance(mdp, pi, one, gamma) >= best - 1e-12
    assert worse_than_pi > 0  # and mu* does raise it in some of them


def test_the_probe_exact_columns_of_the_behaviours():
    """envs/tabular/exact_jax.py's probe_exact (compiled, float32) against the numpy solver for the new
    columns: the run's exact target (here --mu-target vtrace, beta 0.5, b 0.7, a floor), the KL to it, the V-trace
    optimum pi sqrt(U), and the head's error against W; with the defaults the target columns repeat
    the mu* columns (the floored mu*)."""
    mdp, gamma = make_mdp("tabular-sparse"), 0.9
    rng = np.random.default_rng(4)
    pi = rng.dirichlet(np.ones(mdp.num_actions), (mdp.horizon, mdp.num_states))
    mu = 0.5 * rng.dirichlet(np.ones(mdp.num_actions), pi.shape[:2]) + 0.5 * pi
    exact = solve(mdp, pi, gamma)
    U, W = vtrace_tilt(mdp, pi, gamma)
    head = W * rng.uniform(0.8, 1.2, W.shape)
    floor = float(np.median(U))  # --q-hat-floor: a tilt below it is read as it
    out = jax.jit(lambda: probe_exact(mdp, pi, mu, head, gamma, None, "vtrace", 0.5, 0.7, floor))()
    out = {k: float(v) for k, v in out.items()}
    target = behaviour(pi, U, 0.5, 0.7, floor=floor)
    assert np.abs(target - behaviour(pi, U, 0.5, 0.7, floor=1e-6)).max() > 1e-3  # the floor matters here
    is_t, vtrace_t = ratios(mdp, pi, target, gamma)
    is_v, vtrace_v = ratios(mdp, pi, behaviour(pi, U), gamma)
    assert out["probe_exact_ratio_target"] == pytest.approx(is_t, rel=1e-3)
    assert out["probe_exact_vtrace_ratio_target"] == pytest.approx(vtrace_t, rel=1e-3)
    assert out["probe_exact_ratio_vopt"] == pytest.approx(is_v, rel=1e-3)
    assert out["probe_exact_vtrace_ratio_vopt"] == pytest.approx(vtrace_v, rel=1e-3) and vtrace_v < 1
    d = visitation(mdp, pi)
    kl = (d * (mu * np.log(mu / target)).sum(-1)).sum() / d.sum()
    assert out["kl_mu_target_exact"] == pytest.approx(kl, rel=1e-3)
    weight = d[..., None] * pi
    assert out["q_hat_rel_error"] == pytest.approx((weight * np.abs(head - W)).sum() / (weight * W).sum(), rel=1e-3)
    default = {k: float(v) for k, v in jax.jit(lambda: probe_exact(mdp, pi, mu, exact.q_hat, gamma))().items()}
    assert default["kl_mu_target_exact"] == default["kl_mu_opt"]
    assert default["probe_exact_vtrace_ratio_target"] == default["probe_exact_vtrace_ratio_opt"]
    floored = behaviour(pi, exact.q_hat, floor=1e-6)
    assert default["probe_exact_ratio_target"] == pytest.approx(ratios(mdp, pi, floored, gamma)[0], rel=1e-3)


def test_tempering_and_mixing_hedge_a_noisy_q_hat():
    """q_hat with 10% multiplicative noise (q_hat exp(0.1 z), z ~ N(0, 1) per (t, s, a); the mean IS
    ratio over 20 draws), uniform pi: where mu* gains almost nothing (tabular-constant, 0.9996) the
    noisy tilt costs 13% at beta = 1, 0.7% at beta = 0.25 and 3% mixed half with pi (b = 0.5); where
    it gains (tabular-sparse, mu* 0.24, noisy 0.26), beta = 0.5 keeps 0.49."""
    rng = np.random.default_rng(0)

    def noisy_ratio(env_id, gamma, beta, mix=1.0):
        mdp = make_mdp(env_id)
        pi = uniform_policy(mdp)
        exact = solve(mdp, pi, gamma)
        out = []
        for _ in range(20):
            q_hat = exact.q_hat * np.exp(0.1 * rng.standard_normal(exact.q_hat.shape))
            out.append(ratios(mdp, pi, behaviour(pi, q_hat, beta, mix, floor=1e-6), gamma)[0])
        return np.mean(out)

    constant = {beta: noisy_ratio("tabular-constant", 0.98, beta) for beta in (1.0, 0.25)}
    assert constant[1.0] > 1.1 and 1 <= constant[0.25] < 1.01
    assert noisy_ratio("tabular-constant", 0.98, 1.0, mix=0.5) < 1.04
    assert noisy_ratio("tabular-sparse", 0.9, 0.5) < 0.55


# ----------------------------------------------------------------------------------------------
# The scripts' functions (module level)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("env_id", ["tabular-sparse", "tabular-deepsea-5"])
def test_the_closed_form_with_the_exact_q_hat_is_mu_star(module, env_id):
    """softmax(log pi + (beta/2) log q_hat) with the exact q_hat: mu* at beta = 1 (where q_hat >= 1e-6 at
    every action; elsewhere the floor of 1e-6 leaves a trace of the actions of smaller q_hat), tempered at
    beta = 0.5, and pi itself, bit for bit, at beta = 0; and the network's target is the same."""
    mdp, gamma = make_mdp(env_id), PRESETS[env_id]["gamma"]
    pi = np.random.default_rng(1).dirichlet(np.full(mdp.num_actions, 3.0), (mdp.horizon, mdp.num_states))
    exact = solve(mdp, pi, gamma)
    log_pi, q_hat = jnp.log(jnp.asarray(pi, jnp.float32)), jnp.asarray(exact.q_hat, jnp.float32)
    mu = np.asarray(jax.nn.softmax(module.mu_logits_closed(log_pi, q_hat, 1.0)), np.float64)
    positive = (exact.q_hat >= 1e-6).all(-1)
    assert positive.mean() > 0.5
    np.testing.assert_allclose(mu[positive], exact.mu_star[positive], atol=2e-6)
    np.testing.assert_allclose(mu, behaviour(pi, exact.q_hat, floor=1e-6), atol=2e-6)
    np.testing.assert_allclose(np.asarray(module.mu_target_discrete(log_pi, q_hat)), mu, atol=1e-6)
    tempered = np.asarray(jax.nn.softmax(module.mu_logits_closed(log_pi, q_hat, 0.5)), np.float64)
    np.testing.assert_allclose(tempered, behaviour(pi, exact.q_hat, beta=0.5, floor=1e-6), atol=2e-6)
    np.testing.assert_array_equal(module.mu_logits_closed(log_pi, q_hat, 0.0), log_pi)


@pytest.mark.parametrize("module", MODULES)
def test_the_mixture(module):
    """(1 - b) pi + b mu: its log-probability (discrete) and log-density (a mixture of two Gaussians),
    log pi and log mu bit for bit at b = 0 and 1, and its samples (continuous: mu's component with
    probability b; discrete: the mixture's frequencies)."""
    spec = envs.ActionSpec(True, 3)
    pi_logits, mu_logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]] * 3)), jnp.log(jnp.array([[0.1, 0.1, 0.8]] * 3))
    actions = jnp.arange(3)  # every action, one per row
    for b in (0.0, 0.3, 1.0):
        lp = module.behaviour_log_prob(spec, pi_logits, mu_logits, b, actions)
        np.testing.assert_allclose(np.exp(lp), (1 - b) * np.exp(pi_logits[0]) + b * np.exp(mu_logits[0]), rtol=1e-6)
    assert (
        module.behaviour_log_prob(spec, pi_logits, mu_logits, 0.0, actions) == bpo.log_prob(spec, pi_logits, actions)
    ).all()
    assert (
        module.behaviour_log_prob(spec, pi_logits, mu_logits, 1.0, actions) == bpo.log_prob(spec, mu_logits, actions)
    ).all()
    keys = jax.random.split(jax.random.PRNGKey(0), 40_000)
    drawn = jax.vmap(lambda k: module.behaviour_sample(spec, pi_logits[0], mu_logits[0], 0.3, k))(keys)
    np.testing.assert_allclose(np.bincount(np.asarray(drawn), minlength=3) / len(keys), [0.38, 0.24, 0.38], atol=0.01)

    cont = envs.ActionSpec(False, 1)
    pi_dist, mu_dist = (jnp.zeros(1), jnp.zeros(1)), (jnp.full(1, 10.0), jnp.full(1, -1.0))
    a = jnp.array([[0.3], [9.5]])
    lp = module.behaviour_log_prob(cont, pi_dist, mu_dist, 0.3, a)
    gauss = lambda x, m, s: np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))  # noqa: E731
    np.testing.assert_allclose(np.exp(lp), 0.7 * gauss(a[:, 0], 0, 1) + 0.3 * gauss(a[:, 0], 10, np.exp(-1)), rtol=1e-5)
    drawn = jax.vmap(lambda k: module.behaviour_sample(cont, pi_dist, mu_dist, 0.3, k))(keys)
    assert drawn.shape == (len(keys), 1) and abs(float(jnp.mean(drawn > 5)) - 0.3) < 0.01


@pytest.mark.parametrize("module", MODULES)
def test_the_vtrace_variance_reward_is_the_one_step_term_of_the_variance_bellman_equation(module):
    """E[r_W | s, a] over R, s' and the episode's end, with the exact Q and pi of the small MDP, is
    W_t(s,a) - gamma^2 (1 - term) E_{s'} sum_a' pi W_{t+1}(s',a'): the reward whose gamma^2-value is W."""
    mdp, pi, _ = small_mdp()
    gamma, t = 0.9, 1
    exact = solve(mdp, pi, gamma)
    _, W = vtrace_tilt(mdp, pi, gamma)
    Q1, V1 = exact.Q[t + 1], exact.V[t + 1]  # at s'
    spread = (pi[t + 1] * (Q1 - V1[:, None]) ** 2).sum(-1)
    expected = np.zeros_like(exact.Q[t])
    for going_on, p_end in ((1.0, 1 - mdp.term), (0.0, mdp.term)):
        for s_next in range(mdp.num_states):
            r_w = module.variance_reward_vtrace(mdp.r, exact.Q[t], V1[s_next], spread[s_next], going_on, gamma)
            expected += p_end * mdp.P[..., s_next] * (np.asarray(r_w) + reward_variance(mdp))  # E(R - r)^2 = Var(R)
    one_step = W[t] - gamma**2 * _next(mdp, (pi[t + 1] * W[t + 1]).sum(-1))
    np.testing.assert_allclose(expected, one_step, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------
TINY = dict(
    total_timesteps=1024,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=2,
    eval_every=512,
    eval_episodes=2,
    checkpoint_every=0,
    replay_size=256,
    fqe_epochs=1,
    mu_epochs=1,
)


@pytest.mark.parametrize("module", MODULES)
def test_a_closed_form_mu_has_no_network_no_phase_and_checkpoints(module, tmp_path):
    """No mu parameters or optimizer state in the state (so none in the compiled program or in a
    checkpoint), no step 7; a checkpoint of that state restores to the same numbers."""
    args = module.Args(**TINY, mu_form="closed")
    trainer = module.make_train(args, envs.make("CartPole-v1"))
    state = trainer.init(jax.random.PRNGKey(0))
    network = module.make_train(module.Args(**TINY), envs.make("CartPole-v1")).init(jax.random.PRNGKey(0))
    assert set(network.params) - set(state.params) == {"mu"} and set(network.opt_state) - set(state.opt_state) == {"mu"}
    assert trainer.update_mu is None
    for x, y in zip(jax.tree.leaves(network.params["pi"]), jax.tree.leaves(state.params["pi"])):
        np.testing.assert_array_equal(x, y)  # the same initial pi (and random numbers) as the network form
    manager = runner.checkpoint_manager(str(tmp_path))
    runner.save_checkpoint(manager, 1, state, {"done_iters": 1})
    manager.wait_until_finished()
    restored, meta = runner.restore_checkpoint(str(tmp_path), state)
    assert meta["done_iters"] == 1
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "flags,message",
    [
        (dict(env_id="Pendulum-v1", mu_form="closed"), "--mu-form closed needs discrete actions"),
        (dict(mu_temper=1.5), "--mu-temper must be in [0, 1], got 1.5"),
        (dict(mu_mix=-0.1), "--mu-mix must be in [0, 1], got -0.1"),
        (dict(mu_target="vtrace", variance_reward="reference"), "--variance-reward reference is q_hat's reward"),
        (dict(sweep=("mu_temper=0.5,2",)), "--mu-temper must be in [0, 1], got 2"),
        (dict(q_hat_floor=0.0), "--q-hat-floor must be in [1e-06, inf], got 0.0"),
    ],
)
def test_bad_behaviour_flags_are_one_line_errors(flags, message, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(runner.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        bpo.run(bpo.Args(**{**TINY, **flags}, output_dir=str(out)))
    assert "\n" not in str(e.value) and not out.exists()


def test_beta_and_b_sweep_as_traced_inputs():
    """mu_temper and mu_mix are swept as the program's (vmapped) inputs: with a network mu, the V-trace
    target, the probe on and held noise on Pendulum (the continuous mixture), init and the interval's
    program trace with them traced (the closed form: the end-to-end sweep below). bpo.py only:
    tests/test_traj_copy.py keeps bpo_traj.py's copy of this code the same."""
    module, env_id = bpo, "Pendulum-v1"
    args = module.Args(**TINY, env_id=env_id, mu_target="vtrace", variance_probe=4, noise_hold_steps=4)
    values = runner.with_values(module.make_train, args, envs.make(env_id))
    hp = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in ("mu_temper", "mu_mix")}
    like = jax.eval_shape(lambda key, hp: values(hp).init(key), jax.random.PRNGKey(0), hp)
    batched = lambda x: jax.ShapeDtypeStruct((3, *x.shape), x.dtype)  # noqa: E731
    chunk = jax.vmap(lambda s, hp, n: values(hp).train_interval(s, n), in_axes=(0, 0, None), axis_name="seeds")
    _, metrics = jax.eval_shape(chunk, jax.tree.map(batched, like), jax.tree.map(batched, hp), jnp.int32(1))
    assert metrics["eval_return"].shape == (3,) and metrics["mu_loss"].shape == (3,)
    assert {"mu_temper", "mu_mix"} <= set(bpo.SWEEPABLE) and bpo.SWEEPABLE == bpo_traj.SWEEPABLE


def frozen_closed(env_id, iterations, **flags):
    """bpo.py with pi frozen and a closed-form mu on a tabular id (its preset, symlog targets on as the
    BPO add-ons have them), after `iterations` iterations (one compiled scan), and the float64 tables of
    pi, mu (as the trainer computes it), q_hat's head (clipped as mu reads it) and Q at every (s, t)."""
    preset = bpo.PRESETS[env_id]
    batch = preset["num_envs"] * preset["num_steps"]
    args = bpo.Args(
        **{**preset, "freeze_pi": True, "mu_form": "closed", "symlog_targets": True, **flags}
        | {"total_timesteps": iterations * batch}
    )
    trainer = bpo.make_train(args, envs.make(env_id))
    run = jax.jit(lambda s: jax.lax.scan(lambda s, _: (trainer.iteration(s)[0], None), s, None, length=iterations)[0])
    state = run(trainer.init(jax.random.PRNGKey(0)))
    mdp, p = make_mdp(env_id), state.params
    cap = float(state.r_hat_max) / (1 - args.gamma**2)

    def table(f):
        return np.asarray(policy_tables(f, mdp), np.float64)

    tables = dict(
        pi=table(lambda o: jax.nn.softmax(trainer.actor.apply(p["pi"], o))),
        mu=table(lambda o: jax.nn.softmax(trainer.mu_dist(state, o))),
        head=np.clip(table(lambda o: trainer.q_value(trainer.q_hat_net, p["q_hat"], o)), args.q_hat_floor, cap),
        q=table(lambda o: trainer.q_value(trainer.q_net, p["q"], o)),
    )
    log_mu = jax.jit(trainer.log_mu)(state, all_observations(mdp), jnp.zeros(mdp.horizon * mdp.num_states, jnp.int32))
    # atol: where every action's q_hat is near 0 (a linear head), float32 rounding of the network's
    # output between batch shapes moves the tilt by up to 0.1% of a probability
    np.testing.assert_allclose(np.exp(log_mu).reshape(mdp.horizon, -1), tables["mu"][..., 0], rtol=1e-4, atol=1e-3)
    return args, mdp, tables


@pytest.mark.parametrize(
    "env_id,iterations,flags",
    [("tabular-sparse", 30, {}), ("tabular-deepsea-5", 40, dict(q_hat_head="linear", q_hat_floor=3e-5))],
)
def test_the_learned_closed_form_against_mu_star(env_id, iterations, flags):
    """The closed form computed from the learned q_hat (pi frozen): its exact IS variance ratio is at
    most 1.1 times mu*'s (sparse: 0.2504 against 0.2500 when written; deepsea-5: 0.0126 against
    0.0162). It may be lower: mu* = pi sqrt(q_hat_pi) minimises each decision's second moment with
    pi's continuation, not the whole episode's under mu (docs/algorithm.md eq. 18b: with the exact
    q_hat floored at 1e-4 the ratio is 0.86 of mu*'s on deepsea-5).
    deepsea-5 needs the linear head (the softplus one stalls near 1e-2 where q_hat is 1e-5: 4x mu*'s
    ratio) and --q-hat-floor 3e-5: the linear head's q_hat is accurate to about 1e-5 there, and at
    the reference's floor (1e-6) an action whose q_hat comes out low gets too little of mu (seed 1:
    60x mu*'s ratio; docs/bpo.md). Within a run, mu is the closed form of the trainer's own pi and q_hat."""
    args, mdp, t = frozen_closed(env_id, iterations, **flags)
    log_pi = jnp.log(jnp.asarray(t["pi"], jnp.float32))
    closed = jax.nn.softmax(bpo.mu_logits_closed(log_pi, jnp.asarray(t["head"], jnp.float32), 1.0))
    np.testing.assert_allclose(t["mu"], np.asarray(closed, np.float64), atol=1e-5)
    exact = solve(mdp, t["pi"], args.gamma)
    ratio = is_variance(mdp, t["pi"], t["mu"], args.gamma) / exact.var
    ratio_opt = is_variance(mdp, t["pi"], exact.mu_star, args.gamma) / exact.var
    assert ratio < 1.1 * ratio_opt, (ratio, ratio_opt)


def test_the_learned_vtrace_target_lowers_the_vtrace_variance():
    """--mu-target vtrace on tabular-deepsea-5 (pi frozen, closed form, 40 iterations, a linear head:
    the softplus head stalls above W's many values near 0, 27% off at 80 iterations): q_hat's head
    fits W = Var(G | s, a) (within 5% where pi goes; 0.4% when written), and the behaviour's exact
    V-trace variance ratio (V = V_pi) is within 10% of pi sqrt(U)'s (0.3485 against 0.3486 when
    written), where mu* (floored) has 15.3."""
    args, mdp, t = frozen_closed("tabular-deepsea-5", 40, q_hat_head="linear", mu_target="vtrace")
    exact = solve(mdp, t["pi"], args.gamma)
    U, W = vtrace_tilt(mdp, t["pi"], args.gamma)
    weight = visitation(mdp, t["pi"])[..., None] * t["pi"]
    assert (weight * np.abs(t["head"] - W)).sum() / (weight * W).sum() < 0.05
    vtrace = vtrace_variance(mdp, t["pi"], t["mu"], args.gamma) / exact.var
    target = vtrace_variance(mdp, t["pi"], behaviour(t["pi"], U), args.gamma) / exact.var
    star = vtrace_variance(mdp, t["pi"], behaviour(t["pi"], exact.q_hat, floor=1e-6), args.gamma) / exact.var
    assert vtrace < 1 < star and abs(vtrace / target - 1) < 0.1, (vtrace, target, star)


def test_a_closed_form_sweep_of_beta_and_b_runs_end_to_end(tmp_path):
    """bpo.py --mu-form closed --sweep mu_temper=0,1 mu_mix=0.6,1 --variance-probe 1000 on
    tabular-bandit, through runner.py: no mu phase (mu_loss nan), no mu in params.msgpack; beta = 0
    collects pi's data, exactly without a mixture (every ratio pi/mu is 1, KL(mu || pi) is 0, the
    probe's two estimates are the same numbers) and to rounding with b = 0.6 (pi mixed with itself);
    the other members do not; and the probe's exact ratio is the exact solver's for the behaviour that
    the closed form, tempered and mixed, makes of each member's final pi and q_hat (read back from
    params.msgpack)."""
    import csv

    import flax

    env_id, out = "tabular-bandit", tmp_path / "run"
    run = dict(total_timesteps=1024, eval_every=512, eval_episodes=2, num_seeds=1, checkpoint_every=0)  # 8 iterations
    args = bpo.Args(
        **bpo.PRESETS[env_id] | run,
        variance_probe=1000,
        mu_form="closed",
        sweep=("mu_temper=0,1", "mu_mix=0.6,1"),
        output_dir=str(out),
    )
    summary = bpo.run(args)
    assert summary["completed"] and len(summary["members"]) == 4
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 8 and all(np.isnan(float(r["mu_loss"])) and np.isfinite(float(r["q_hat_loss"])) for r in rows)
    saved = flax.serialization.msgpack_restore(open(out / "params.msgpack", "rb").read())["params"]
    assert set(saved) == {"pi", "v", "q", "q_target", "q_hat", "q_hat_target"}
    trainer, mdp, obs = bpo.make_train(args, envs.make(env_id)), make_mdp(env_id), jnp.ones((1, 2))
    for r in rows[4:]:  # the last interval's row of each member: its final state
        k = int(r["member"])
        beta, b = float(r["sweep.mu_temper"]), float(r["sweep.mu_mix"])
        on_policy, exactly = beta == 0, beta == 0 and b == 1  # pi mixed with pi: to rounding
        if exactly:
            assert float(r["ratio_max"]) == 1.0 and float(r["kl_mu_pi"]) == 0.0 and float(r["probe_var_ratio"]) == 1.0
        assert (abs(float(r["ratio_max"]) - 1) < 1e-5 and abs(float(r["probe_var_ratio"]) - 1) < 1e-5) == on_policy
        assert float(r["probe_kl_mu_target"]) < 1e-6  # the closed form is its target
        member = jax.tree.map(lambda x: x[k], saved)
        pi = np.asarray(jax.nn.softmax(trainer.actor.apply(member["pi"], obs)), np.float64)[None]
        q_hat = np.asarray(trainer.q_value(trainer.q_hat_net, member["q_hat"], obs), np.float64)[None]
        q_hat = np.clip(q_hat, 1e-6, float(r["r_hat_max"]) / (1 - args.gamma**2))
        expected = ratios(mdp, pi, behaviour(pi, q_hat, beta, b, floor=1e-6), args.gamma)[0]
        assert float(r["probe_exact_ratio"]) == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert (abs(expected - 1) > 0.01) == (not on_policy)
        if not on_policy:
            assert float(r["probe_var_ratio"]) == pytest.approx(expected, rel=0.1)  # 1000 one-step segments


def test_no_bpo_with_a_closed_form_mu():
    """--no-bpo --mu-form closed is PPO: mu is pi (every ratio 1, KL 0, exactly), steps 4-7 do not run
    (Q and q_hat keep their initial parameters, their metrics are nan), pi learns, and there is no mu.
    The rest of the --no-bpo path is the network form's (tests/test_no_bpo.py: it equals ppo.py)."""
    trainer = bpo.make_train(bpo.Args(**TINY, no_bpo=True, mu_form="closed"), envs.make("CartPole-v1"))
    run = jax.jit(lambda s: jax.lax.scan(lambda s, _: trainer.iteration(s), s, None, length=2))
    before = trainer.init(jax.random.PRNGKey(0))
    state, stats = run(before)
    assert (stats["ratio_max"] == 1).all() and (stats["kl_mu_pi"] == 0).all()
    assert np.isnan(stats["q_loss"]).all() and np.isnan(stats["mu_loss"]).all() and "mu" not in state.params
    for name, moved in (("pi", True), ("q", False), ("q_hat", False)):
        leaves = zip(jax.tree.leaves(before.params[name]), jax.tree.leaves(state.params[name]))
        assert any(bool((x != y).any()) for x, y in leaves) == moved, name
