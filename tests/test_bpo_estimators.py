"""bpo.py's estimators and losses against plain-Python references written from docs/algorithm.md."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpo
import envs
import ppo


def reference_vtrace(r, V, d, last, ratio, gamma, lam, clip_rho, clip_c):
    """vs_t = V_t + sum_{k=t}^{K} gamma^(k-t) (prod_{i=t}^{k-1} c_i) rho_k delta_k, K = the last
    step of t's episode or of the rollout (IMPALA's closed form); vs_T = V(last obs);
    adv_t = r_t + gamma (1 - d_t) ((1 - lambda) V_{t+1} + lambda vs_{t+1}) - V_t."""
    T, E = r.shape
    v_next = np.concatenate([V[1:], last[None]], 0)
    vs = np.zeros((T, E))
    for e in range(E):
        for t in range(T):
            total, coef = V[t, e], 1.0
            for k in range(t, T):
                delta = r[k, e] + gamma * (1 - d[k, e]) * v_next[k, e] - V[k, e]
                total += coef * min(ratio[k, e], clip_rho) * delta
                if d[k, e]:
                    break
                coef *= gamma * lam * min(ratio[k, e], clip_c)
            vs[t, e] = total
    vs_next = np.concatenate([vs[1:], last[None]], 0)
    adv = r + gamma * (1 - d) * ((1 - lam) * v_next + lam * vs_next) - V
    return vs, adv


def random_rollout(seed, T=29, E=3):
    rng = np.random.default_rng(seed)
    r, V, last = rng.normal(size=(T, E)), rng.normal(size=(T, E)), rng.normal(size=E)
    d = (rng.random((T, E)) < 0.15).astype(np.float64)
    d[-1, 0], d[7, 1], d[8, 1] = 1.0, 1.0, 1.0  # an end at the last step, two ends in a row
    log_mu = rng.normal(size=(T, E))
    log_pi = log_mu + rng.normal(scale=0.7, size=(T, E))  # ratios from about 0.1 to 10
    return r, V, d, last, log_pi, log_mu


@pytest.mark.parametrize("clip_rho,clip_c", [(1.5, 1.5), (1.0, 1.0), (0.7, 1.3), (1e9, 1e9)])
def test_vtrace_matches_definition(clip_rho, clip_c):
    for seed, (gamma, lam) in enumerate([(0.99, 0.95), (0.9, 0.0), (0.98, 1.0)]):
        r, V, d, last, log_pi, log_mu = random_rollout(seed)
        vs, adv, rho, clipped = bpo.vtrace(
            *map(jnp.asarray, (r, V, d, last, log_pi, log_mu)), gamma, lam, clip_rho, clip_c
        )
        ratio = np.exp(log_pi - log_mu)
        ref_vs, ref_adv = reference_vtrace(r, V, d, last, ratio, gamma, lam, clip_rho, clip_c)
        np.testing.assert_allclose(vs, ref_vs, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(rho, np.minimum(ratio, clip_rho), rtol=1e-5)
        assert float(clipped["c_clip_frac"]) == pytest.approx(np.mean(ratio > clip_c))


def test_vtrace_with_pi_equal_mu_is_ppo_gae():
    r, V, d, last, log_pi, _ = random_rollout(3)
    args = [jnp.asarray(x, jnp.float32) for x in (r, V, d, last)]
    log_pi = jnp.asarray(log_pi, jnp.float32)
    for gamma, lam in [(0.99, 0.95), (0.98, 0.8)]:
        vs, adv, rho, _ = bpo.vtrace(*args, log_pi, log_pi, gamma, lam, 1.5, 1.5)
        gae_adv, lambda_returns = ppo.gae(*args, gamma, lam)
        # Equal up to float32 rounding (XLA rounds the same sums differently in two programs;
        # ppo.gae jitted and not jitted differ as much).
        np.testing.assert_allclose(adv, gae_adv, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(vs, lambda_returns, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(rho, 1.0)


def test_variance_reward():
    """r_hat = r^2 + 2 gamma bootstrap r V(s') (eq. 2); with exact values and deterministic rewards,
    Q = r + gamma bootstrap V(s'), it equals the reference's 2 r Q - r^2 (eq. 2b)."""
    r, v_next, bootstrap, gamma = np.array([1.0, -2.0, 0.5]), np.array([3.0, -4.0, 2.0]), np.array([1.0, 1.0, 0.0]), 0.9
    r_hat = bpo.variance_reward(jnp.asarray(r), jnp.asarray(v_next), jnp.asarray(bootstrap), gamma)
    np.testing.assert_allclose(
        r_hat, [r[0] ** 2 + 2 * gamma * r[0] * 3.0, 4.0 + 2 * gamma * 2.0 * 4.0, 0.25], rtol=1e-6
    )
    q = r + gamma * bootstrap * v_next
    np.testing.assert_allclose(bpo.variance_reward_reference(jnp.asarray(r), jnp.asarray(q)), r_hat, rtol=1e-5)


def test_variance_reward_is_unbiased_for_a_stochastic_reward_and_the_reference_is_not():
    """A one-step episode with R ~ Bernoulli(p): the second moment is E[R^2] = p. The mean of r_hat
    over draws of R is p; the reference's 2 R Q - R^2 with Q = p averages 2 p^2 - p = p - 2 Var(R)."""
    p = 0.3
    draws = (np.random.default_rng(0).random(200_000) < p).astype(np.float32)
    r_hat = bpo.variance_reward(jnp.asarray(draws), jnp.zeros_like(draws), jnp.zeros_like(draws), 0.99)
    reference = bpo.variance_reward_reference(jnp.asarray(draws), jnp.full_like(draws, p))
    assert abs(float(r_hat.mean()) - p) < 0.005
    assert abs(float(reference.mean()) - (p - 2 * p * (1 - p))) < 0.005


def test_discrete_mu_target_is_pi_sqrt_q_hat_normalised():
    rng = np.random.default_rng(0)
    logits, q_hat = rng.normal(size=(5, 4)), rng.exponential(size=(5, 4))
    q_hat[0, 1] = 0.0  # floored at 1e-6
    pi = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = pi * np.sqrt(np.maximum(q_hat, 1e-6))
    expected /= expected.sum(-1, keepdims=True)
    p = bpo.mu_target_discrete(jax.nn.log_softmax(jnp.asarray(logits)), jnp.asarray(q_hat))
    np.testing.assert_allclose(p, expected, rtol=1e-5)
    # The mu loss is the cross-entropy to p: minimised (zero gradient) at mu = p.
    grad = jax.grad(lambda m: bpo.mu_loss_discrete(m, jnp.log(jnp.asarray(pi)), jnp.asarray(q_hat), 0.0).sum())
    np.testing.assert_allclose(grad(jnp.log(p)), 0.0, atol=1e-6)


def test_continuous_kl_qhat_loss_has_the_known_answer():
    """pi = N(0, 1), q_hat(a) = exp(2 k a): mu* ∝ pi sqrt(q_hat) ∝ N(k, 1). For mu = N(m, s^2)
    the expected loss is -log s + (s^2 + m^2 - 1) / 2 - k m, minimised at m = k, s = 1."""
    spec, k = envs.ActionSpec(False, 1, np.array([-9.0]), np.array([9.0])), 0.7
    pi = (jnp.zeros((4096, 1)), jnp.zeros((4096, 1)))
    q_hat = lambda a: jnp.exp(2 * k * a[..., 0])

    def loss(theta, key):
        m, log_s = theta
        mu = (jnp.full((4096, 1), m), jnp.full((4096, 1), log_s))
        return bpo.mu_loss_continuous(spec, mu, pi, q_hat, key, 0.0).mean()

    m, s = 0.3, 0.5
    closed = -np.log(s) + (s**2 + m**2 - 1) / 2 - k * m
    mc = np.mean([loss(jnp.array([m, np.log(s)]), jax.random.PRNGKey(i)) for i in range(8)])
    assert abs(mc - closed) < 0.02
    theta, opt = jnp.array([-1.0, np.log(2.0)]), optax.adam(0.05)
    state, grad = opt.init(theta), jax.jit(jax.grad(loss))
    for i in range(400):
        updates, state = opt.update(grad(theta, jax.random.PRNGKey(i)), state)
        theta = optax.apply_updates(theta, updates)
    np.testing.assert_allclose(theta, [k, 0.0], atol=0.05)
    # "kl" drops q_hat: the optimum is pi itself.
    kl = lambda th, key: bpo.mu_loss_continuous(
        spec, (jnp.full((4096, 1), th[0]), jnp.full((4096, 1), th[1])), pi, q_hat, key, 0.0, use_q_hat=False
    ).mean()
    assert jnp.abs(jax.grad(kl)(jnp.array([0.0, 0.0]), jax.random.PRNGKey(0))).max() < 0.05


def test_replay_is_fifo_and_minibatches_cover_each_filled_slot_once():
    spec = envs.ActionSpec(True, 2)
    rb = bpo.replay_init(10, (1,), spec)
    new = lambda start, n: dict(
        obs=jnp.arange(start, start + n, dtype=jnp.float32)[:, None],
        action=jnp.zeros(n, jnp.int32),
        reward=jnp.arange(start, start + n, dtype=jnp.float32),
        done=jnp.zeros(n),
        truncated=jnp.zeros(n),
        next_obs=jnp.zeros((n, 1)),
        log_mu=jnp.zeros(n),
    )
    rb = bpo.replay_add(rb, **new(0, 4))
    assert int(rb.size) == 4 and int(rb.ptr) == 4
    rb = bpo.replay_add(rb, **new(4, 8))  # wraps: 10, 11 overwrite the oldest (0, 1)
    assert int(rb.size) == 10 and sorted(np.asarray(rb.reward).tolist()) == list(range(2, 12))
    rb = bpo.replay_add(rb, **new(100, 13))  # more than the capacity: the newest 10
    assert sorted(np.asarray(rb.reward).tolist()) == list(range(103, 113))
    for size in (3, 7, 10):
        idx, w = bpo.replay_minibatches(jax.random.PRNGKey(size), size, 10, 4, epochs=2)
        assert idx.shape == (6, 4)  # 2 epochs x ceil(10 / 4) minibatches
        for epoch in range(2):
            used = np.asarray(idx[3 * epoch : 3 * epoch + 3])[np.asarray(w[3 * epoch : 3 * epoch + 3]) > 0]
            assert sorted(used.tolist()) == list(range(size))
