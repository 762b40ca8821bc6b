"""The variance probe of bpo.py and bpo_traj.py on a bandit whose variance-minimising behaviour
policy is known in closed form."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpo
import bpo_traj
import envs

R = np.array([1.0, -2.0, 8.0])  # one step, reward r(a), then the episode ends
PI = np.array([0.5, 0.3, 0.2])
N = 40_000


def bandit(rewards=R):
    raw = envs.RawEnv(
        lambda k: (jnp.ones(1), jnp.zeros(())),
        lambda k, s, a: (jnp.ones(1), s, jnp.asarray(rewards, jnp.float32)[a], True),
        (1,),
        envs.ActionSpec(True, 3),
    )
    return envs.with_time_limit("bandit", raw, 10)


def with_probs(actor_params, probs):
    """Actor parameters whose policy is `probs` in every state: a zero last kernel, log-probs as bias."""
    params = jax.tree.map(lambda x: x, actor_params)
    last = params["params"]["MLP_0"][f"Dense_{len(bpo.Args().hidden_sizes)}"]
    last["kernel"] = jnp.zeros_like(last["kernel"])
    last["bias"] = jnp.log(jnp.asarray(probs, jnp.float32))
    return params


def probe(module, mu_probs, pi_probs=PI, rewards=R, **kw):
    args = module.Args(
        num_envs=1, num_steps=64, minibatch_size=64, variance_probe=N, variance_probe_horizon=2, gamma=0.9, **kw
    )
    trainer = module.make_train(args, bandit(rewards))
    state = trainer.init(jax.random.PRNGKey(0))
    params = {
        **state.params,
        "pi": with_probs(state.params["pi"], pi_probs),
        "mu": with_probs(state.params["pi"], mu_probs),
    }
    out = jax.jit(trainer.variance_probe)(state._replace(params=params), jax.random.PRNGKey(1))
    out["critic_value"] = trainer.critic.apply(params["v"], jnp.ones(1))  # V of the bandit's one state
    return {k: float(v) for k, v in out.items()}


def exact(mu):
    """Mean and variances of r(a) (on-policy) and of (pi/mu)(a) r(a) with a ~ mu."""
    mean = np.sum(PI * R)
    return mean, np.sum(PI * R**2) - mean**2, np.sum(PI**2 * R**2 / mu) - mean**2


@pytest.mark.parametrize("module", [bpo, bpo_traj])
def test_probe_against_the_exact_variances(module):
    # mu* ∝ pi sqrt(q_hat) = pi |r| (q_hat = r^2 for a one-step episode): the variance-minimising mu
    mu_star = PI * np.abs(R) / np.sum(PI * np.abs(R))
    out = probe(module, mu_star, clip_rho=100.0, clip_c=100.0)  # clipping that never binds
    mean, var_pi, var_mu = exact(mu_star)
    # standard errors of the estimates from N samples (the variance's from the fourth moment)
    se_mean_pi = np.sqrt(var_pi / N)
    fourth = np.sum(PI * (R - mean) ** 4)
    se_var_pi = np.sqrt((fourth - var_pi**2) / N)
    assert abs(out["probe_pi_mean"] - mean) < 4 * se_mean_pi
    assert abs(out["probe_pi_var"] - var_pi) < 4 * se_var_pi
    # unbiased: the two means agree within their errors
    assert abs(out["probe_mu_mean"] - out["probe_pi_mean"]) < 4 * out["probe_se_diff"]
    assert abs(out["probe_bias_z"]) < 4
    # the measured ratio matches the exact one (0.32 here): mu* cuts the variance
    exact_ratio = var_mu / var_pi
    assert exact_ratio < 0.5
    np.testing.assert_allclose(out["probe_var_ratio"], exact_ratio, rtol=0.1)
    # clipping that never binds changes nothing
    assert out["probe_mu_clipped_mean"] == pytest.approx(out["probe_mu_mean"], rel=1e-5)
    # the 95% bootstrap interval holds the measured ratio, and the exact one
    assert out["probe_var_ratio_lo"] < out["probe_var_ratio"] < out["probe_var_ratio_hi"]
    assert out["probe_var_ratio_lo"] < exact_ratio < out["probe_var_ratio_hi"]
    assert out["probe_var_ratio_hi"] - out["probe_var_ratio_lo"] < 0.1
    np.testing.assert_allclose(out["probe_cv2"], var_pi / mean**2, rtol=0.1)
    # V-trace's target with the critic's V = c: vs = c + (pi/mu)(a) (r(a) - c), a ~ mu (eq. 17b)
    c = out["critic_value"]
    var_vtrace = np.sum(PI**2 * (R - c) ** 2 / mu_star) - (mean - c) ** 2
    np.testing.assert_allclose(out["probe_vtrace_ratio"], var_vtrace / var_pi, rtol=0.1)
    # q_hat as initialised is the same at every action: mu's target is pi, and KL(mu* || pi) is exact
    np.testing.assert_allclose(out["probe_kl_mu_target"], np.sum(mu_star * np.log(mu_star / PI)), rtol=1e-4)


@pytest.mark.parametrize("module", [bpo, bpo_traj])
def test_with_mu_equal_to_pi_the_two_estimates_are_the_same_numbers(module):
    out = probe(module, PI)
    assert out["probe_mu_mean"] == out["probe_pi_mean"] and out["probe_mu_var"] == out["probe_pi_var"]
    assert out["probe_var_ratio"] == 1.0 and out["probe_var_ratio_clipped"] == 1.0
    assert abs(out["probe_kl_mu_target"]) < 1e-6  # mu is its target, pi (q_hat as initialised is flat)


@pytest.mark.parametrize("module", [bpo, bpo_traj])
def test_ratio_is_undefined_where_on_policy_returns_do_not_vary(module):
    """A deterministic pi (as pi becomes once it balances CartPole): every on-policy return is the
    same 0.1, whose variance is float rounding only (0.1 is not a float: the mean of N copies is
    not exactly 0.1). The ratio is nan, not var_mu / rounding. A pi that is nearly deterministic
    but not quite (1 action in 1,000 differs) has a real variance, and a finite ratio that matches
    the exact one."""
    rewards = np.array([0.1, -2.0, 8.0])
    out = probe(module, PI, pi_probs=[1.0, 1e-30, 1e-30], rewards=rewards)
    assert out["probe_pi_mean"] == pytest.approx(0.1) and out["probe_pi_var"] < 1e-12
    assert out["probe_mu_var"] > 1e-3  # mu still explores: its weighted returns do vary
    assert np.isnan(out["probe_var_ratio"]) and np.isnan(out["probe_var_ratio_clipped"])
    assert np.isfinite(out["probe_bias_z"])  # the unbiasedness check stays defined
    # ... unless mu does not vary either: the two means differ by rounding only, and z is nan (not inf)
    same = probe(module, [1.0, 1e-30, 1e-30], pi_probs=[1.0, 1e-30, 1e-30], rewards=rewards)
    assert np.isnan(same["probe_bias_z"]) and np.isnan(same["probe_var_ratio"])
    near = np.array([1 - 2e-3, 1e-3, 1e-3])
    out = probe(module, PI, pi_probs=near, rewards=rewards, clip_rho=100.0, clip_c=100.0)
    mean = np.sum(near * rewards)
    var_pi, var_mu = np.sum(near * rewards**2) - mean**2, np.sum(near**2 * rewards**2 / PI) - mean**2
    assert np.isfinite(out["probe_var_ratio"]) and np.isfinite(out["probe_var_ratio_clipped"])
    # about 80 of the N on-policy draws differ from 0.1: a loose tolerance
    np.testing.assert_allclose(out["probe_var_ratio"], var_mu / var_pi, rtol=0.5)


def test_clipped_weights_follow_each_estimator():
    """A mu that makes ratios above the clips: bpo.py clips each ratio (V-trace), bpo_traj.py the
    product; for a one-step episode both weigh r by min(ratio, clip_rho), so they agree here, and
    the clipped mean is pulled below the unbiased one (weights only shrink)."""
    mu = np.array([0.2, 0.2, 0.6])  # pi/mu = 2.5, 1.5, 0.33
    a, b = probe(bpo, mu, clip_rho=1.0, clip_c=1.0), probe(bpo_traj, mu, clip_rho=1.0, clip_c=1.0)
    assert a["probe_mu_clipped_mean"] == pytest.approx(b["probe_mu_clipped_mean"], rel=1e-6)
    clipped_mean = np.sum(mu * np.minimum(PI / mu, 1.0) * R)  # E_mu[min(pi/mu, 1) r]
    assert abs(a["probe_mu_clipped_mean"] - clipped_mean) < 0.05


def test_probe_off_leaves_the_compiled_program_unchanged():
    """With --variance-probe 0 the probe's flags do not reach the compiled program, and with it on
    the training's random numbers are untouched (the probe draws from its own stream)."""
    env = envs.make("CartPole-v1")
    base = bpo.Args(
        num_envs=4,
        num_steps=32,
        minibatch_size=64,
        num_epochs=1,
        replay_size=128,
        fqe_epochs=1,
        mu_epochs=1,
        total_timesteps=256,
        eval_every=128,
        eval_episodes=2,
    )

    def program(args):
        trainer = bpo.make_train(args, env)
        state = trainer.init(jax.random.PRNGKey(0))
        return jax.jit(trainer.train_interval).lower(state, jnp.int32(1)).as_text(), trainer, state

    off, trainer, state = program(base)
    assert program(dataclasses.replace(base, variance_probe_horizon=7))[0] == off
    on, trainer_on, _ = program(dataclasses.replace(base, variance_probe=8))
    assert on != off and "probe" not in off
    s_off, m_off = jax.jit(trainer.train_interval)(state, jnp.int32(1))
    s_on, m_on = jax.jit(trainer_on.train_interval)(state, jnp.int32(1))
    for x, y in zip(jax.tree.leaves(s_off), jax.tree.leaves(s_on)):
        np.testing.assert_array_equal(x, y)
    assert float(m_on["eval_return"]) == float(m_off["eval_return"]) and "probe_var_ratio" in m_on
