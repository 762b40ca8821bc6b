"""PPO's returns and advantages against plain-Python references written from the definitions."""

import jax
import jax.numpy as jnp
import numpy as np
from toy_env import TIME_LIMIT, counter_env

import ppo


def reference_gae(rewards, values, dones, last_value, gamma, lam):
    """A_t = sum_{k=t}^{K} (gamma lambda)^(k-t) delta_k, K = the episode's last step or the
    rollout's; delta_k = r_k + gamma (1 - d_k) V_{k+1} - V_k. Targets are A_t + V_t."""
    T, E = rewards.shape
    v_next = np.concatenate([values[1:], last_value[None]], 0)
    adv = np.zeros((T, E))
    for e in range(E):
        for t in range(T):
            total = 0.0
            for k in range(t, T):
                delta = rewards[k, e] + gamma * (1 - dones[k, e]) * v_next[k, e] - values[k, e]
                total += (gamma * lam) ** (k - t) * delta
                if dones[k, e]:
                    break
            adv[t, e] = total
    return adv, adv + values


def test_gae_matches_definition_with_episode_ends():
    rng = np.random.default_rng(0)
    T, E = 23, 4
    rewards, values, last = rng.normal(size=(T, E)), rng.normal(size=(T, E)), rng.normal(size=E)
    dones = (rng.random((T, E)) < 0.2).astype(np.float64)
    dones[-1, 0], dones[5, 1] = 1.0, 1.0  # an episode end at the last step and in the middle
    for gamma, lam in [(0.99, 0.95), (0.9, 0.0), (0.98, 1.0)]:
        adv, target = ppo.gae(*map(jnp.asarray, (rewards, values, dones, last)), gamma, lam)
        ref_adv, ref_target = reference_gae(rewards, values, dones, last, gamma, lam)
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(target, ref_target, rtol=1e-5, atol=1e-5)


def test_rollout_bootstraps_truncations_from_the_true_final_observation():
    """The real rollout on an env with known episode ends: rewards at truncations are
    r + gamma * V(final obs) (not V of the reset obs), every episode end is a done, and the
    advantages are GAE of exactly these rewards."""
    gamma, lam = 0.9, 0.8
    args = ppo.Args(num_envs=3, num_steps=40, minibatch_size=40, gamma=gamma, gae_lambda=lam)
    trainer = ppo.make_train(args, counter_env())
    state = trainer.init(jax.random.PRNGKey(0))
    new_state, traj, _ = jax.jit(trainer.rollout)(state)
    V = lambda obs: np.asarray(trainer.critic.apply(state.params["v"], jnp.asarray(obs)))
    obs = np.asarray(traj.obs)  # [T, E, (count, horizon)]
    count, horizon = obs[..., 0] + 1, obs[..., 1]  # the step's outcome
    final_obs = np.stack([count, horizon], -1)
    terminated = count == horizon
    truncated = (count == TIME_LIMIT) & (horizon > TIME_LIMIT)
    assert terminated.sum() > 3 and truncated.sum() > 3
    np.testing.assert_array_equal(traj.done, terminated | truncated)
    expected_reward = 1 + count / 10 + gamma * truncated * V(final_obs)
    np.testing.assert_allclose(traj.reward, expected_reward, rtol=1e-5)
    # The reset observation would give a different bootstrap: the test can tell them apart.
    reset_obs = np.asarray(traj.obs[1:])[truncated[:-1]]
    assert not np.allclose(V(final_obs[:-1][truncated[:-1]]), V(reset_obs))
    np.testing.assert_allclose(traj.value, V(obs), rtol=1e-5)
    ref_adv, ref_target = reference_gae(expected_reward, V(obs), terminated | truncated, V(new_state.obs), gamma, lam)
    # What the iteration computes from this rollout (the last value is V of the next observation).
    adv, target = ppo.gae(traj.reward, traj.value, traj.done, jnp.asarray(V(new_state.obs)), gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(target, ref_target, rtol=1e-4, atol=1e-5)


def test_clipped_value_loss_is_purejaxrls():
    """--clip-vloss: mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)), written out."""
    import dataclasses

    import envs

    spec = envs.ActionSpec(True, 2)
    rng = np.random.default_rng(0)
    n, eps = 64, 0.2
    batch = ppo.Batch(
        obs=jnp.asarray(rng.normal(size=(n, 3)), jnp.float32),
        action=jnp.asarray(rng.integers(0, 2, n)),
        log_old=jnp.full(n, np.log(0.5), jnp.float32),
        value=jnp.asarray(rng.normal(size=n), jnp.float32),
        advantage=jnp.asarray(rng.normal(size=n), jnp.float32),
        return_target=jnp.asarray(rng.normal(size=n), jnp.float32),
    )
    v_new = jnp.asarray(rng.normal(size=n), jnp.float32)
    apply_actor = lambda p, obs: jnp.zeros((obs.shape[0], 2))
    apply_critic = lambda p, obs: v_new
    args = ppo.Args(clip_vloss=True, vf_coef=1.0)
    _, stats = ppo.ppo_loss({"pi": None, "v": None}, apply_actor, apply_critic, spec, batch, eps, args)
    V, V_old, R = np.asarray(v_new), np.asarray(batch.value), np.asarray(batch.return_target)
    expected = np.mean(np.maximum((V - R) ** 2, (V_old + np.clip(V - V_old, -eps, eps) - R) ** 2))
    np.testing.assert_allclose(stats["v_loss"], expected, rtol=1e-6)
    _, plain = ppo.ppo_loss(
        {"pi": None, "v": None},
        apply_actor,
        apply_critic,
        spec,
        batch,
        eps,
        dataclasses.replace(args, clip_vloss=False),
    )
    np.testing.assert_allclose(plain["v_loss"], np.mean((V - R) ** 2), rtol=1e-6)
    assert expected > float(plain["v_loss"])  # the clipped term binds somewhere in this batch
