"""Presets resolve to the published numbers, compose in order, and yield to explicit flags."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpo
import bpo_traj
import envs
import ppo

# (preset, field, value) from docs/algorithm.md and PureJaxRL's CartPole config.
PUBLISHED = [
    ("cartpole_ppo", "total_timesteps", 100_000),
    ("cartpole_ppo", "num_envs", 8),
    ("cartpole_ppo", "num_steps", 32),
    ("cartpole_ppo", "minibatch_size", 256),
    ("cartpole_ppo", "num_epochs", 20),
    ("cartpole_ppo", "gae_lambda", 0.8),
    ("cartpole_ppo", "gamma", 0.98),
    ("cartpole_ppo", "clip_coef", 0.2),
    ("cartpole_ppo", "anneal_clip", True),
    ("cartpole_ppo", "learning_rate", 1e-3),
    ("cartpole_ppo", "anneal_lr", True),
    ("cartpole_ppo", "hidden_sizes", (64, 64)),
    ("cartpole_ppo", "actor_activation", "tanh"),
    ("cartpole_ppo", "critic_activation", "tanh"),
    ("mujoco_ppo", "total_timesteps", 1_500_000),
    ("mujoco_ppo", "num_envs", 1),
    ("mujoco_ppo", "num_steps", 2048),
    ("mujoco_ppo", "minibatch_size", 64),
    ("mujoco_ppo", "num_epochs", 10),
    ("mujoco_ppo", "ent_coef", 0.001),
    ("mujoco_ppo", "clip_actions", True),
    ("mujoco_ppo", "actor_activation", "relu"),
    ("mujoco_ppo", "kernel_init", "orthogonal"),
    ("mujoco_ppo", "normalize_obs", True),
    ("mujoco_ppo_gsde", "normalize_obs", False),
    ("purejaxrl_cartpole", "num_envs", 4),
    ("purejaxrl_cartpole", "num_steps", 128),
    ("purejaxrl_cartpole", "num_epochs", 4),
    ("purejaxrl_cartpole", "minibatch_size", 128),
    ("purejaxrl_cartpole", "learning_rate", 2.5e-4),
    ("purejaxrl_cartpole", "ent_coef", 0.01),
    ("purejaxrl_cartpole", "gamma", 0.99),
    ("purejaxrl_cartpole", "gae_lambda", 0.95),
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
    ("cartpole_ppo", "replay_size", 1024),
    ("cartpole_ppo", "fqe_minibatch_size", 256),
    ("cartpole_ppo", "mu_minibatch_size", 128),
    ("cartpole_ppo", "fqe_epochs", 10),
    ("cartpole_ppo", "mu_epochs", 10),
    ("cartpole_ppo", "weight_td", True),
    ("cartpole_ppo", "clip_targets", True),
    ("cartpole_ppo", "num_epochs", 20),
    ("cartpole_ppo", "gae_lambda", 0.8),
    ("cartpole_ppo", "critic_activation", "tanh"),
    ("mujoco_ppo", "replay_size", 8192),
    ("mujoco_ppo", "fqe_minibatch_size", 256),
    ("mujoco_ppo", "mu_minibatch_size", 128),
    ("mujoco_ppo", "fqe_epochs", 20),
    ("mujoco_ppo", "mu_epochs", 20),
    ("mujoco_ppo", "ent_coef", 0.001),
    ("mujoco_ppo", "num_steps", 2048),
    ("ppo_bpo", "clip_rho", 1.5),
    ("ppo_bpo", "clip_c", 1.5),
    ("ppo_bpo", "symlog_targets", True),
    ("ppo_bpo", "polyak_tau", 0.02),
    ("ppo_bpo", "q_layer_norm", False),
    ("ppo_bpo_zero", "q_layer_norm", True),
    ("ppo_bpo_zero", "q_zero_init", True),
    ("ppo_bpo_zero", "q_kernel_init", "orthogonal"),
    ("ppo_bpo_zero", "clip_rho", 1.5),
    ("ppo_bpo_zero", "polyak_tau", 0.02),
    ("ppo_bpo_zero", "symlog_targets", True),
    ("ppo_bpo_zero1.0", "clip_rho", 1.0),
    ("ppo_bpo_zero1.0", "clip_c", 1.0),
    ("ppo_bpo_zero1.0", "q_layer_norm", True),
    ("ppo_bpo_zero1.0_1.5", "clip_rho", 1.5),
    ("ppo_bpo_zero1.0_1.5", "clip_c", 1.0),
    ("ppo_bpo_zero1.0_1.4", "clip_rho", 1.4),
    ("ppo_bpo_zero1.0_1.4", "clip_c", 1.0),
]


@pytest.mark.parametrize("preset,field,value", BPO_PUBLISHED)
def test_bpo_preset_values(preset, field, value):
    assert getattr(bpo.parse_args(["--preset", preset]), field) == value


def test_bpo_presets_compose_with_a_base():
    args = bpo.parse_args(["--preset", "mujoco_ppo", "ppo_bpo_zero1.0_1.5", "--clip-c", "1.2"])
    assert (args.num_steps, args.replay_size, args.clip_rho, args.clip_c, args.q_zero_init) == (
        2048,
        8192,
        1.5,
        1.2,
        True,
    )
    assert bpo.parse_args(["--env-id", "hopper"]).preset == ("mujoco_ppo", "ppo_bpo_zero1.0")


# MuJoCo Playground's DM Control Suite PPO settings (dm_control_suite_params.brax_ppo_config,
# Brax's PPO defaults where it is silent), in this project's terms; the same in all three scripts.
PLAYGROUND = dict(
    total_timesteps=60_000_000,
    num_envs=2048,
    num_steps=480,
    minibatch_size=30_720,
    num_epochs=16,
    learning_rate=1e-3,
    anneal_lr=False,
    adam_eps=1e-8,
    max_grad_norm=float("inf"),
    gamma=0.995,
    gae_lambda=0.95,
    clip_coef=0.3,
    anneal_clip=False,
    norm_adv=True,
    clip_vloss=False,
    ent_coef=0.01,
    vf_coef=0.25,
    hidden_sizes=(32,) * 4,
    critic_hidden_sizes=(256,) * 5,
    actor_activation="swish",
    critic_activation="swish",
    reward_scale=10.0,
    normalize_obs=True,
    normalize_reward=False,
    clip_actions=True,
    max_episode_steps=0,
    noise_hold_steps=0,
    eval_every=5 * 983_040,
)
BPO_PLAYGROUND = dict(
    replay_size=983_040,
    fqe_minibatch_size=30_720,
    mu_minibatch_size=15_360,
    fqe_epochs=20,
    mu_epochs=20,
    q_hidden_sizes=(256, 256),
)


@pytest.mark.parametrize("module", [ppo, bpo, bpo_traj])
def test_playground_preset_values(module):
    args = module.parse_args(["--env-id", "CheetahRun", "--preset", "playground_dm_control"])
    expected = {**PLAYGROUND, **(BPO_PLAYGROUND if module is not ppo else {})}
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.env_id == "CheetahRun" and "env_id" not in module.PRESETS["playground_dm_control"]
    # One Brax training step: batch_size 1024 x num_minibatches 32 x unroll_length 30.
    assert args.num_envs * args.num_steps == 1024 * 32 * 30 == 32 * args.minibatch_size


@pytest.mark.parametrize("module,addon", [(bpo, "ppo_bpo_zero1.0"), (bpo_traj, "ppo_bpo_zero1.0_traj")])
def test_playground_preset_composes_with_a_bpo_addon_and_yields_to_flags(module, addon):
    args = module.parse_args(["--env-id", "CheetahRun", "--preset", "playground_dm_control", addon])
    assert (args.num_steps, args.reward_scale, args.replay_size, args.critic_hidden_sizes) == (
        480,
        10.0,
        983_040,
        (256,) * 5,
    )
    assert (args.clip_rho, args.clip_c, args.q_layer_norm, args.q_zero_init, args.symlog_targets) == (
        1.0,
        1.0,
        True,
        True,
        True,
    )
    args = module.parse_args(
        [
            "--env-id",
            "FingerSpin",
            "--preset",
            "playground_dm_control",
            addon,
            "--gamma",
            "0.95",
            "--num-envs",
            "16",
            "--critic-hidden-sizes",
            "64",
            "64",
        ]
    )
    assert (args.gamma, args.num_envs, args.critic_hidden_sizes, args.num_steps) == (0.95, 16, (64, 64), 480)


def test_playground_preset_flag_overrides_in_ppo():
    args = ppo.parse_args(
        [
            "--env-id",
            "WalkerRun",
            "--preset",
            "playground_dm_control",
            "--total-timesteps",
            "100000000",
            "--reward-scale",
            "1",
            "--max-grad-norm",
            "1.0",
        ]
    )
    assert (args.total_timesteps, args.reward_scale, args.max_grad_norm, args.num_epochs) == (100_000_000, 1.0, 1.0, 16)


@pytest.mark.parametrize("module", [ppo, bpo])  # bpo_traj.py is bpo.py here, line for line
def test_critic_sizes_swish_and_reward_scale_do_what_they_say(module):
    """critic_hidden_sizes shapes V only (pi keeps hidden_sizes, Q heads q_hidden_sizes); swish is
    x * sigmoid(x); reward_scale multiplies the rollout's rewards exactly and nothing else (the
    actions, hence the trajectory, and evaluation returns are unchanged); max_grad_norm inf does
    not clip. reward_scale is one of the swept keys: the rollout and an interval are compiled once,
    with it an input (runner.with_values, as --sweep runs it), and run with 2.5 and with 1."""
    import runner

    args = module.Args(
        env_id="CartPole-v1",
        num_envs=2,
        num_steps=8,
        minibatch_size=16,
        total_timesteps=16,
        eval_every=16,
        eval_episodes=2,
        hidden_sizes=(8,),
        critic_hidden_sizes=(16, 12),
        actor_activation="swish",
        critic_activation="swish",
        learning_rate=0.0,
        anneal_lr=False,
        **({} if module is ppo else dict(replay_size=32, fqe_minibatch_size=16, mu_minibatch_size=16)),
    )
    assert "reward_scale" in module.SWEEPABLE
    trainer_of = runner.with_values(module.make_train, args, envs.make("CartPole-v1"))
    trainer = trainer_of({})
    state = trainer.init(jax.random.PRNGKey(3))

    def shapes(params):
        layers = params["params"]["MLP_0"]
        return [layers[f"Dense_{i}"]["kernel"].shape for i in range(sum(k.startswith("Dense") for k in layers))]

    assert shapes(state.params["v"]) == [(4, 16), (16, 12), (12, 1)]
    assert shapes(state.params["pi"]) == [(4, 8), (8, 2)]
    if module is not ppo:
        assert shapes(state.params["q"]) == [(4, 64), (64, 64), (64, 2)]  # q_hidden_sizes, unchanged
    obs = jnp.linspace(-1.0, 1.0, 4)
    w = state.params["pi"]["params"]["MLP_0"]
    h = obs @ w["Dense_0"]["kernel"] + w["Dense_0"]["bias"]
    logits = (h / (1 + jnp.exp(-h))) @ w["Dense_1"]["kernel"] + w["Dense_1"]["bias"]
    np.testing.assert_allclose(trainer.actor.apply(state.params["pi"], obs), logits, rtol=1e-5, atol=1e-6)

    @jax.jit
    def rollout_and_interval(state, hp):
        t = trainer_of(hp)
        return t.rollout(state), t.train_interval(state, 1)[1]

    (_, traj, (_, ep_return, _, _)), metrics = rollout_and_interval(state, {"reward_scale": jnp.float32(2.5)})
    (_, ref, (_, ref_return, _, _)), ref_metrics = rollout_and_interval(state, {"reward_scale": jnp.float32(1.0)})
    np.testing.assert_array_equal(traj.action, ref.action)
    assert np.all(np.asarray(ref.reward) == 1.0)  # CartPole, no time limit within 8 steps
    np.testing.assert_array_equal(traj.reward, 2.5 * np.asarray(ref.reward))
    if module is not ppo:
        np.testing.assert_array_equal(traj.env_reward, 2.5 * np.asarray(ref.env_reward))
    np.testing.assert_array_equal(ep_return, ref_return)  # episode statistics are the environment's
    # Evaluation (learning rate 0: the same policy either way) reports unscaled returns.
    assert metrics["eval_return"] == ref_metrics["eval_return"] >= 8.0

    grads = {"a": jnp.array([3e4, -4e4])}
    clipped, _ = optax.clip_by_global_norm(float("inf")).update(grads, None)
    np.testing.assert_array_equal(clipped["a"], grads["a"])


@pytest.mark.parametrize("module", [ppo, bpo])
def test_wide_rollout_keeps_the_env_steps_per_iteration(module):
    """The accelerators' add-on: num_steps 32, num_envs scaled up, the batch (and every other
    setting) the base preset's; a rollout already 32 steps long is left as it is."""
    addon = [] if module is ppo else ["ppo_bpo_zero1.0"]
    for base, envs_steps in [("mujoco_ppo", (64, 32)), ("mujoco_ppo_gsde", (256, 32)), ("cartpole_ppo", (8, 32))]:
        plain = module.parse_args(["--preset", base, *addon])
        wide = module.parse_args(["--preset", base, *addon, "wide_rollout"])
        assert (wide.num_envs, wide.num_steps) == envs_steps
        assert wide.num_envs * wide.num_steps == plain.num_envs * plain.num_steps
        changed = {f for f in vars(plain) if getattr(plain, f) != getattr(wide, f)} - {"preset"}
        assert changed <= {"num_envs", "num_steps"}
        module.validate(wide)
    assert module.parse_args(["--preset", "mujoco_ppo", "wide_rollout", "--num-envs", "8"]).num_envs == 8
