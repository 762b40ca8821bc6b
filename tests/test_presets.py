"""Presets resolve to the published numbers, compose in order, and yield to explicit flags."""

import pytest

import bpo
import ppo

# (preset, field, value) from docs/algorithm.md and PureJaxRL's CartPole config.
PUBLISHED = [
    ("cartpole_ppo", "total_timesteps", 100_000), ("cartpole_ppo", "num_envs", 8),
    ("cartpole_ppo", "num_steps", 32), ("cartpole_ppo", "minibatch_size", 256),
    ("cartpole_ppo", "num_epochs", 20), ("cartpole_ppo", "gae_lambda", 0.8),
    ("cartpole_ppo", "gamma", 0.98), ("cartpole_ppo", "clip_coef", 0.2),
    ("cartpole_ppo", "anneal_clip", True), ("cartpole_ppo", "learning_rate", 1e-3),
    ("cartpole_ppo", "anneal_lr", True), ("cartpole_ppo", "hidden_sizes", (64, 64)),
    ("cartpole_ppo", "actor_activation", "tanh"), ("cartpole_ppo", "critic_activation", "tanh"),
    ("mujoco_ppo", "total_timesteps", 1_500_000), ("mujoco_ppo", "num_envs", 1),
    ("mujoco_ppo", "num_steps", 2048), ("mujoco_ppo", "minibatch_size", 64),
    ("mujoco_ppo", "num_epochs", 10), ("mujoco_ppo", "ent_coef", 0.001),
    ("mujoco_ppo", "clip_actions", True), ("mujoco_ppo", "actor_activation", "relu"),
    ("mujoco_ppo", "kernel_init", "orthogonal"), ("mujoco_ppo", "normalize_obs", True),
    ("mujoco_ppo_gsde", "normalize_obs", False),
    ("purejaxrl_cartpole", "num_envs", 4), ("purejaxrl_cartpole", "num_steps", 128),
    ("purejaxrl_cartpole", "num_epochs", 4), ("purejaxrl_cartpole", "minibatch_size", 128),
    ("purejaxrl_cartpole", "learning_rate", 2.5e-4), ("purejaxrl_cartpole", "ent_coef", 0.01),
    ("purejaxrl_cartpole", "gamma", 0.99), ("purejaxrl_cartpole", "gae_lambda", 0.95),
]


@pytest.mark.parametrize("preset,field,value", PUBLISHED)
def test_preset_values(preset, field, value):
    assert getattr(ppo.parse_args(["--preset", preset]), field) == value


def test_flags_override_presets_and_presets_compose():
    args = ppo.parse_args(["--preset", "cartpole_ppo", "--learning-rate", "3e-4", "--num-envs", "2"])
    assert args.learning_rate == 3e-4 and args.num_envs == 2 and args.num_epochs == 20
    assert args.preset == ("cartpole_ppo",)
    both = ppo.parse_args(["--preset", "purejaxrl_cartpole", "mujoco_ppo"])
    assert both.num_steps == 2048 and both.env_id == "CartPole-v1"  # later preset wins where both set


def test_brax_task_without_preset_gets_mujoco_settings():
    assert ppo.parse_args(["--env-id", "ant"]).preset == ("mujoco_ppo",)
    assert ppo.parse_args(["--env-id", "ant", "--preset"]).preset == ()
    assert ppo.parse_args([]).preset == ()


BPO_PUBLISHED = [
    ("cartpole_ppo", "replay_size", 1024), ("cartpole_ppo", "fqe_minibatch_size", 256),
    ("cartpole_ppo", "mu_minibatch_size", 128), ("cartpole_ppo", "fqe_epochs", 10),
    ("cartpole_ppo", "mu_epochs", 10), ("cartpole_ppo", "weight_td", True),
    ("cartpole_ppo", "clip_targets", True), ("cartpole_ppo", "num_epochs", 20),
    ("cartpole_ppo", "gae_lambda", 0.8), ("cartpole_ppo", "critic_activation", "tanh"),
    ("mujoco_ppo", "replay_size", 8192), ("mujoco_ppo", "fqe_minibatch_size", 256),
    ("mujoco_ppo", "mu_minibatch_size", 128), ("mujoco_ppo", "fqe_epochs", 20),
    ("mujoco_ppo", "mu_epochs", 20), ("mujoco_ppo", "ent_coef", 0.001), ("mujoco_ppo", "num_steps", 2048),
    ("ppo_bpo", "clip_rho", 1.5), ("ppo_bpo", "clip_c", 1.5), ("ppo_bpo", "symlog_targets", True),
    ("ppo_bpo", "polyak_tau", 0.02), ("ppo_bpo", "q_layer_norm", False),
    ("ppo_bpo_zero", "q_layer_norm", True), ("ppo_bpo_zero", "q_zero_init", True),
    ("ppo_bpo_zero", "q_kernel_init", "orthogonal"), ("ppo_bpo_zero", "clip_rho", 1.5),
    ("ppo_bpo_zero", "polyak_tau", 0.02), ("ppo_bpo_zero", "symlog_targets", True),
    ("ppo_bpo_zero1.0", "clip_rho", 1.0), ("ppo_bpo_zero1.0", "clip_c", 1.0),
    ("ppo_bpo_zero1.0", "q_layer_norm", True),
    ("ppo_bpo_zero1.0_1.5", "clip_rho", 1.5), ("ppo_bpo_zero1.0_1.5", "clip_c", 1.0),
    ("ppo_bpo_zero1.0_1.4", "clip_rho", 1.4), ("ppo_bpo_zero1.0_1.4", "clip_c", 1.0),
]


@pytest.mark.parametrize("preset,field,value", BPO_PUBLISHED)
def test_bpo_preset_values(preset, field, value):
    assert getattr(bpo.parse_args(["--preset", preset]), field) == value


def test_bpo_presets_compose_with_a_base():
    args = bpo.parse_args(["--preset", "mujoco_ppo", "ppo_bpo_zero1.0_1.5", "--clip-c", "1.2"])
    assert (args.num_steps, args.replay_size, args.clip_rho, args.clip_c, args.q_zero_init) == (2048, 8192, 1.5, 1.2, True)
    assert bpo.parse_args(["--env-id", "hopper"]).preset == ("mujoco_ppo", "ppo_bpo_zero1.0")
