"""Held exploration noise (the reference's use_sde / sde_sample_freq) in all three scripts."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpo
import bpo_traj
import envs
import ppo
import runner


def rollout_noise(module, seed, hold):
    """The standard-normal draws behind each action of one rollout, [T, E]: (a - mean) / std of the
    acting policy (pi for PPO, mu for BPO)."""
    args = module.Args(
        env_id="Pendulum-v1", num_envs=3, num_steps=12, minibatch_size=36, noise_hold_steps=hold, log_std_init=-1.0
    )
    trainer = module.make_train(args, envs.make("Pendulum-v1"))
    state = trainer.init(jax.random.PRNGKey(seed))
    _, traj, *_ = jax.jit(trainer.rollout)(state)
    mean, log_std = trainer.actor.apply(state.params["pi" if module is ppo else "mu"], traj.obs)
    return np.asarray((traj.action - mean) / jnp.exp(log_std))[..., 0]


@pytest.mark.parametrize("module", [ppo, bpo, bpo_traj])
def test_noise_is_held_for_exactly_hold_steps(module):
    noise = rollout_noise(module, 0, hold=4)
    for block in range(3):  # steps 0-3, 4-7, 8-11 share one draw per environment
        np.testing.assert_allclose(noise[4 * block : 4 * block + 4], np.tile(noise[4 * block], (4, 1)), atol=1e-4)
    assert np.all(np.abs(noise[0] - noise[4]) > 1e-3) and np.all(np.abs(noise[4] - noise[8]) > 1e-3)
    assert len({round(float(x), 4) for x in noise[0]}) == 3  # independent across environments
    assert np.all(np.abs(rollout_noise(module, 1, hold=4)[0] - noise[0]) > 1e-3)  # and across seeds
    fresh = rollout_noise(module, 0, hold=0)
    assert np.all(np.abs(np.diff(fresh, axis=0)) > 1e-4)  # without holding, a new draw every step


def test_presets_use_the_reference_names():
    for module in (ppo, bpo, bpo_traj):
        args = module.parse_args(["--preset", "mujoco_ppo_gsde"])
        assert (
            args.noise_hold_steps,
            args.log_std_init,
            args.num_envs,
            args.num_steps,
            args.minibatch_size,
            args.num_epochs,
            args.gae_lambda,
            args.clip_coef,
            args.learning_rate,
            args.hidden_sizes,
            args.actor_activation,
            args.kernel_init,
            args.total_timesteps,
            args.normalize_obs,
        ) == (4, -1.0, 16, 512, 128, 20, 0.9, 0.4, 3e-5, (256, 256), "relu", "lecun_normal", 2_000_000, False)
        assert module.parse_args(["--preset", "mujoco_ppo_gsde", "mujoco_ppo"]).noise_hold_steps == 0
    b = bpo.parse_args(["--preset", "mujoco_ppo_gsde", "ppo_bpo_zero"])
    assert (
        b.replay_size,
        b.fqe_minibatch_size,
        b.mu_minibatch_size,
        b.fqe_epochs,
        b.mu_epochs,
        b.q_hidden_sizes,
        b.clip_rho,
        b.noise_hold_steps,
    ) == (8192, 128, 128, 40, 40, (256, 256), 1.5, 4)
    assert bpo_traj.parse_args(["--preset", "mujoco_ppo_gsde", "ppo_bpo_zero1.5_traj"]).noise_hold_steps == 4


def test_bpo_with_held_noise_end_to_end(tmp_path):
    """bpo.py under mujoco_ppo_gsde + ppo_bpo_zero with a tiny budget, on Pendulum-v1: held noise does
    not depend on the backend, and the one MJX end-to-end run is tests/test_brax_smoke.py's."""
    args = runner.apply_presets(bpo.Args(), bpo.PRESETS, ["mujoco_ppo_gsde", "ppo_bpo_zero"])
    args = dataclasses.replace(
        args,
        env_id="Pendulum-v1",
        num_seeds=2,
        total_timesteps=1024,
        num_envs=4,
        num_steps=128,
        minibatch_size=128,
        num_epochs=1,
        replay_size=512,
        fqe_epochs=1,
        mu_epochs=1,
        eval_every=512,
        eval_episodes=2,
        max_episode_steps=50,
        output_dir=str(tmp_path),
    )
    assert args.noise_hold_steps == 4
    summary = bpo.run(args)
    assert summary["completed"] and summary["env_steps"] == 1024
    assert np.all(np.isfinite(summary["final_eval_return"]))
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "params.msgpack").exists()
