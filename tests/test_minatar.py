"""gymnax's MinAtar games through envs.make (image observations of 0s and 1s, kept in shape), their
preset, and PPO with the MinAtar CNN learning Breakout above a random policy within a small budget."""

import csv

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpo
import bpo_traj
import envs
import ppo
import training

GAMES = {"Asterix": 4, "Breakout": 4, "Freeway": 7, "Seaquest": 10, "SpaceInvaders": 6}  # id prefix: channels


@pytest.mark.parametrize("game", GAMES)
def test_minatar_game_keeps_its_grid(game):
    """Every MinAtar game of gymnax 1.0.1 resets and steps through envs.make: [10, 10, C]
    observations of 0s and 1s (uint8 holds them exactly), gymnax's own; flattened, the vector the
    scripts' MLP read before (gymnax's obs.reshape(-1))."""
    env_id = f"{game}-MinAtar"
    env = envs.make(env_id)
    assert env.obs_shape == (10, 10, GAMES[game]) and env.obs_dtype == jnp.uint8 and env.action_spec.discrete
    gym_env, params = gymnax.make(env_id)
    key = jax.random.PRNGKey(3)
    obs, ts = jax.jit(lambda key: (env.reset(key)[0], env.step(key, env.reset(key)[1], jnp.int32(1))))(key)
    gym_obs, _ = gym_env.reset_env(key, params)
    np.testing.assert_array_equal(np.asarray(obs), np.asarray(gym_obs, np.float32))
    assert ts.obs.shape == env.obs_shape and set(np.unique(np.asarray(ts.final_obs))) <= {0.0, 1.0}
    vector = ppo.make_train(ppo.Args(env_id=env_id), env).torso.features({}, obs)
    np.testing.assert_array_equal(np.asarray(vector), np.asarray(gym_obs, np.float32).reshape(-1))


# PureJaxRL's MinAtar settings (examples/brax_minatar.ipynb): docs/presets.md
MINATAR_PPO = dict(
    total_timesteps=10_000_000,
    num_envs=64,
    num_steps=128,
    num_epochs=4,
    minibatch_size=1024,  # 8 minibatches
    learning_rate=5e-3,
    anneal_lr=True,
    max_grad_norm=0.5,
    gamma=0.99,
    gae_lambda=0.95,
    clip_coef=0.2,
    ent_coef=0.01,
    vf_coef=0.25,  # its value loss is 0.5 x the clipped square, weighted 0.5
    clip_vloss=True,
    hidden_sizes=(64, 64),
    actor_activation="relu",
    critic_activation="relu",
    kernel_init="orthogonal",
    torso="mlp",  # PureJaxRL flattens the grids into its MLP
)


@pytest.mark.parametrize("module", [ppo, bpo, bpo_traj])
def test_minatar_id_gets_the_minatar_preset(module):
    args = module.parse_args(["--env-id", "Breakout-MinAtar"])
    addon = {ppo: (), bpo: ("ppo_bpo_zero1.0",), bpo_traj: ("ppo_bpo_zero1.0_traj",)}[module]
    assert args.preset == ("minatar_ppo", *addon)
    for field, value in MINATAR_PPO.items():
        assert getattr(args, field) == value, field
    if module is not ppo:
        assert (args.replay_size, args.fqe_minibatch_size, args.mu_minibatch_size) == (8192, 1024, 1024)


def test_minatar_cnn_learns_breakout(tmp_path):
    """ppo.py with --torso minatar-cnn (shared by pi and V) on Breakout-MinAtar, seed 0, 16,384 env
    steps of minatar_ppo's settings on 16 environments x 64 steps: the training episodes of the last
    8,192 steps return over 3 times what a uniformly random policy's do (about 0.4; measured here
    over 512 episodes). Measured 2.8-3.1 on seeds 0-3."""
    out = tmp_path / "run"
    ppo.run(
        ppo.parse_args(
            [
                "--env-id",
                "Breakout-MinAtar",
                "--torso",
                "minatar-cnn",
                "--total-timesteps",
                "16384",
                "--num-envs",
                "16",
                "--num-steps",
                "64",
                "--minibatch-size",
                "256",
                "--eval-every",
                "8192",
                "--eval-episodes",
                "4",
                "--num-seeds",
                "1",
                "--checkpoint-every",
                "0",
                "--output-dir",
                str(out),
            ]
        )
    )
    with open(out / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    env = envs.make("Breakout-MinAtar")
    uniform = lambda obs, key: jax.random.randint(key, obs.shape[:1], 0, env.action_spec.n)  # noqa: E731
    random_return = float(
        jax.jit(lambda k: training.evaluate(env, uniform, 512, k, True).mean())(jax.random.PRNGKey(1))
    )
    assert 0.2 < random_return < 0.7
    assert float(last["train_return"]) > 3 * random_return, (last["train_return"], random_return)
