"""bpo.py's FQE, variance-reward and behaviour phases on small problems solved exactly."""

import jax
import jax.numpy as jnp
import numpy as np

import bpo
import envs


def trainer_for(obs_dim, n_actions, **kw):
    """A trainer whose replay buffer the test fills by hand (the env is never stepped)."""
    raw = envs.RawEnv(
        lambda k: (jnp.zeros(obs_dim), jnp.zeros(obs_dim)),
        lambda k, s, a: (s, s, 0.0, False),
        (obs_dim,),
        envs.ActionSpec(True, n_actions),
    )
    args = bpo.Args(num_envs=1, num_steps=64, minibatch_size=64, **kw)
    trainer = bpo.make_train(args, envs.with_time_limit("table", raw, 100))
    return trainer, trainer.init(jax.random.PRNGKey(0))


def fill(state, obs, action, reward, done, next_obs, log_mu):
    n = len(reward)
    f = lambda x: jnp.asarray(x, jnp.float32)
    rb = bpo.Replay(
        f(obs),
        jnp.asarray(action, jnp.int32),
        f(reward),
        f(done),
        jnp.zeros(n),
        f(next_obs),
        f(log_mu),
        jnp.int32(0),
        jnp.int32(n),
    )
    return state._replace(replay=rb, r_max=jnp.float32(np.max(reward)), r_min=jnp.float32(np.min(reward)))


def pi_probs(trainer, state, obs):
    return np.asarray(jax.nn.softmax(trainer.actor.apply(state.params["pi"], jnp.asarray(obs, jnp.float32))))


# A 2-state, 2-action MDP with one-hot observations and no terminal state.
NEXT = np.array([[0, 1], [0, 1]])  # NEXT[s, a] = s'
REWARD = np.array([[1.0, 0.0], [2.0, 0.5]])
GAMMA = 0.9


def exact_action_values(pi, reward, gamma):
    """Solve q(s,a) = reward(s,a) + gamma sum_a' pi(a'|s') q(s',a') exactly."""
    A = np.eye(4)
    for s in range(2):
        for a in range(2):
            for a2 in range(2):
                A[2 * s + a, 2 * NEXT[s, a] + a2] -= gamma * pi[NEXT[s, a], a2]
    return np.linalg.solve(A, reward.reshape(4)).reshape(2, 2)


def test_fqe_recovers_q_pi_and_q_hat_fits_the_variance_reward():
    trainer, state = trainer_for(2, 2, gamma=GAMMA, replay_size=64, fqe_minibatch_size=32, fqe_epochs=25)
    eye = np.eye(2)
    a = np.tile([0, 1], 32)
    s = np.repeat([0, 1], 32)
    pi = pi_probs(trainer, state, eye)
    state = fill(state, eye[s], a, REWARD[s, a], np.zeros(64), eye[NEXT[s, a]], np.log(pi[s, a]))
    fit_q, fit_q_hat = jax.jit(trainer.fit_q), jax.jit(trainer.fit_q_hat)
    # The learning rate decays linearly to 0 over the phases, as training's does (anneal_lr): at a
    # constant rate Adam's steps on a fitted head spike now and then (its second moments shrink), so
    # whether the last phase lands on a spike would depend on float rounding.
    for i in range(60):
        state, stats = fit_q(state, 3e-3 * (1 - i / 60))
    q_exact = exact_action_values(pi, REWARD, GAMMA)
    q = np.asarray(trainer.q_value(trainer.q_net, state.params["q"], jnp.asarray(eye[s]), jnp.asarray(a)))
    np.testing.assert_allclose(q, q_exact[s, a], rtol=0.02)

    # q_hat is the value of r_hat = r^2 + 2 gamma r V(s') under pi with discount gamma^2, V(s') =
    # sum_a' pi(a'|s') Q(s', a') of the learned Q (eq. 2); in expectation 2 r Q - r^2.
    r_hat = trainer.variance_rewards(state)
    q_all = np.asarray(trainer.q_value(trainer.q_net, state.params["q"], jnp.asarray(eye)))  # [s, a]
    v_next = (pi * q_all).sum(-1)[NEXT[s, a]]
    np.testing.assert_allclose(r_hat, REWARD[s, a] ** 2 + 2 * GAMMA * REWARD[s, a] * v_next, rtol=1e-5)
    for i in range(60):
        state, stats = fit_q_hat(state, r_hat, 3e-3 * (1 - i / 60))
    q_hat = np.asarray(trainer.q_value(trainer.q_hat_net, state.params["q_hat"], jnp.asarray(eye[s]), jnp.asarray(a)))
    q_hat_exact = exact_action_values(pi, 2 * REWARD * q_exact - REWARD**2, GAMMA**2)
    np.testing.assert_allclose(q_hat, q_hat_exact[s, a], rtol=0.02)
    # Fitted to the raw rewards (the reference's bug), q_hat would be far from this.
    q_hat_of_raw_rewards = exact_action_values(pi, REWARD, GAMMA**2)
    assert np.abs(q_hat - q_hat_of_raw_rewards[s, a]).max() > 1.0


def test_learned_behaviour_policy_lowers_the_variance_of_the_return_estimate():
    """A one-step bandit with rewards r = (1, 2, 8): Q = r, r_hat = r^2 = q_hat, and the optimal
    behaviour policy mu* ∝ pi |r| makes the importance-sampled estimate pi/mu r constant. The mu
    that bpo.py learns must be close to mu* and cut the variance far below on-policy sampling."""
    r = np.array([1.0, 2.0, 8.0])
    trainer, state = trainer_for(
        1, 3, gamma=0.9, replay_size=96, fqe_minibatch_size=32, fqe_epochs=20, mu_minibatch_size=32, mu_epochs=20
    )
    obs = np.ones((96, 1))
    a = np.tile([0, 1, 2], 32)
    pi = pi_probs(trainer, state, obs[:1])[0]
    state = fill(state, obs, a, r[a], np.ones(96), obs, np.log(pi[a]))
    fit_q, fit_q_hat, update_mu = jax.jit(trainer.fit_q), jax.jit(trainer.fit_q_hat), jax.jit(trainer.update_mu)
    for _ in range(25):
        state, _ = fit_q(state, 3e-3)
    r_hat = trainer.variance_rewards(state)
    for _ in range(25):
        state, _ = fit_q_hat(state, r_hat, 3e-3)
    for _ in range(15):
        state, _ = update_mu(state, 3e-3)
    mu = np.asarray(jax.nn.softmax(trainer.actor.apply(state.params["mu"], jnp.ones(1))))
    mu_star = pi * np.abs(r) / np.sum(pi * np.abs(r))
    np.testing.assert_allclose(mu, mu_star, atol=0.03)
    mean = np.sum(pi * r)
    var_on_policy = np.sum(pi * r**2) - mean**2
    var_behaviour = np.sum(pi**2 * r**2 / mu) - mean**2  # Var_mu[(pi/mu) r]
    assert var_behaviour < 0.05 * var_on_policy, (var_behaviour, var_on_policy)
    # pi itself was not touched by these phases
    np.testing.assert_allclose(pi_probs(trainer, state, obs[:1])[0], pi)
