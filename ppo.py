"""PPO (Schulman et al. 2017): the baseline that BPO (bpo.py, bpo_traj.py) is measured against.

The whole of training (environment steps, GAE, every epoch and minibatch) runs inside
`jax.lax.scan` under `jit`, and `--num-seeds N` runs N independent seeds with `vmap` in one
program. Python only drives the compiled program in chunks of `--eval-every` environment steps,
writing metrics and progress between chunks.

    python ppo.py                                         # CartPole-v1, 4 seeds, about a minute on a CPU
    python ppo.py --env-id ant --num-seeds 16 --preset mujoco_ppo
    python ppo.py --preset cartpole_ppo --learning-rate 3e-4   # a preset, overridden field by field
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tyro

import envs


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Args:
    # The defaults are the BPO reference's `cartpole_ppo` settings run for 500k steps.
    preset: tuple[str, ...] = ()
    """named presets applied in order before any other flag (see PRESETS); later flags override them"""
    env_id: str = "CartPole-v1"
    """environment id: a gymnax id (CartPole-v1, Pendulum-v1, ...) or a Brax one (ant, hopper, ...)"""
    env_backend: str = "mjx"
    """physics backend for Brax environments: mjx, generalized, positional or spring"""
    seed: int = 0
    """first seed; the run trains seeds seed, seed+1, ..., seed+num_seeds-1"""
    num_seeds: int = 4
    """independent seeds trained together (vmapped) in one program"""
    total_timesteps: int = 500_000
    """environment steps per seed"""
    num_envs: int = 8
    """parallel environments per seed"""
    num_steps: int = 32
    """steps per environment in each rollout (the batch is num_envs * num_steps)"""
    num_epochs: int = 20
    """passes over each rollout batch"""
    minibatch_size: int = 256
    """transitions per gradient step; must divide num_envs * num_steps"""
    learning_rate: float = 1e-3
    """Adam learning rate"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over training"""
    adam_eps: float = 1e-5
    """Adam epsilon"""
    max_grad_norm: float = 0.5
    """global-norm gradient clipping threshold"""
    gamma: float = 0.98
    """discount factor"""
    gae_lambda: float = 0.8
    """lambda of GAE(lambda)"""
    clip_coef: float = 0.2
    """PPO surrogate clipping range epsilon"""
    anneal_clip: bool = True
    """decay the clipping range linearly to 0 over training"""
    norm_adv: bool = True
    """normalise advantages within each minibatch"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient (the loss is vf_coef * mean((V - return)^2))"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor and of the critic (separate networks)"""
    actor_activation: Literal["tanh", "relu"] = "tanh"
    """activation of the actor's hidden layers"""
    critic_activation: Literal["tanh", "relu"] = "tanh"
    """activation of the critic's hidden layers"""
    kernel_init: Literal["orthogonal", "lecun_normal"] = "lecun_normal"
    """weight init: orthogonal (gain sqrt 2; 0.01 actor head, 1 critic head) or lecun_normal"""
    noise_hold_steps: int = 0
    """hold each Gaussian exploration noise draw for this many rollout steps, per environment (the
    reference's use_sde with sde_sample_freq); 0 or 1 draws new noise every step"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian policy (continuous actions)"""
    normalize_obs: bool = False
    """normalise observations with running statistics (per seed, frozen during evaluation)"""
    normalize_reward: bool = False
    """scale rewards by the running std of the discounted return"""
    clip_actions: bool = True
    """clip continuous actions to the action bounds before they reach the environment"""
    max_episode_steps: int = 0
    """episode time limit; 0 uses the environment's own (gymnax's, or 1000 for Brax)"""
    eval_every: int = 10_000
    """environment steps per seed between evaluations (and metric rows)"""
    eval_episodes: int = 10
    """episodes of the deterministic policy per evaluation"""
    output_dir: str | None = None
    """where outputs go; default runs/ppo_<env>_<time>"""
    overwrite: bool = False
    """allow writing into an existing non-empty output directory"""


# Presets: names -> field values, applied in order (compose e.g. `--preset mujoco_ppo`).
PRESETS: dict[str, dict[str, Any]] = {
    # PureJaxRL's CartPole settings (its vf_coef 0.5 multiplies 0.5 * mean squared error).
    "purejaxrl_cartpole": dict(
        env_id="CartPole-v1", total_timesteps=500_000, num_envs=4, num_steps=128, num_epochs=4,
        minibatch_size=128, learning_rate=2.5e-4, anneal_lr=True, anneal_clip=False, ent_coef=0.01,
        vf_coef=0.25,
        gamma=0.99, gae_lambda=0.95, clip_coef=0.2, hidden_sizes=(64, 64),
        actor_activation="tanh", critic_activation="tanh", kernel_init="orthogonal",
        normalize_obs=False,
    ),
    # The BPO reference code's PPO settings (../shared/BPO.md).
    "cartpole_ppo": dict(
        env_id="CartPole-v1", total_timesteps=100_000, num_envs=8, num_steps=32,
        minibatch_size=256, num_epochs=20, gae_lambda=0.8, gamma=0.98, clip_coef=0.2,
        anneal_clip=True, learning_rate=1e-3, anneal_lr=True, ent_coef=0.0, vf_coef=0.5,
        hidden_sizes=(64, 64), actor_activation="tanh", critic_activation="tanh",
        kernel_init="lecun_normal", normalize_obs=False,
    ),
    "mujoco_ppo": dict(
        total_timesteps=1_500_000, num_envs=1, num_steps=2048, minibatch_size=64, num_epochs=10,
        gamma=0.99, gae_lambda=0.95, clip_coef=0.2, anneal_clip=False, learning_rate=3e-4,
        anneal_lr=False, ent_coef=0.001, vf_coef=0.5, clip_actions=True, hidden_sizes=(64, 64),
        actor_activation="relu", critic_activation="relu", kernel_init="orthogonal",
        normalize_obs=True,  # ours: Brax observations are unscaled
        use_sde=False, log_std_init=0.0, eval_every=50_000,
    ),
    # The reference's MuJoCo preset with held exploration noise (its names: use_sde, sde_sample_freq).
    "mujoco_ppo_gsde": dict(
        total_timesteps=2_000_000, num_envs=16, num_steps=512, minibatch_size=128, num_epochs=20,
        gamma=0.99, gae_lambda=0.9, clip_coef=0.4, anneal_clip=False, learning_rate=3e-5,
        anneal_lr=False, ent_coef=0.0, vf_coef=0.5, clip_actions=True, hidden_sizes=(256, 256),
        actor_activation="relu", critic_activation="relu", kernel_init="lecun_normal",
        use_sde=True, sde_sample_freq=4, log_std_init=-1.0,
        normalize_obs=False,  # as the reference; measured on hopper, normalising did not help here (README)
        eval_every=50_000,
    ),
    # RL Baselines3 Zoo's Pendulum-v1 PPO settings (without its state-dependent noise).
    "pendulum_ppo": dict(
        env_id="Pendulum-v1", total_timesteps=200_000, num_envs=4, num_steps=1024,
        minibatch_size=64, num_epochs=10, gamma=0.9, gae_lambda=0.95, clip_coef=0.2,
        anneal_clip=False, learning_rate=1e-3, anneal_lr=False, ent_coef=0.0, vf_coef=0.5,
        hidden_sizes=(64, 64), actor_activation="tanh", critic_activation="tanh",
        kernel_init="orthogonal", normalize_obs=False, eval_every=20_000,
    ),
}


class ConfigError(ValueError):
    """Bad input, reported as one line before anything is compiled."""


def parse_args(argv: list[str] | None = None) -> Args:
    """Presets first (their values become the defaults `--help` shows), then every other flag.
    A Brax env id with no --preset gets the MuJoCo preset (CartPole settings would not do)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="*", default=None)
    pre.add_argument("--env-id", default=Args.env_id)
    known = pre.parse_known_args(argv)[0]
    names = known.preset
    if names is None:
        names = ["mujoco_ppo"] if envs.is_brax(known.env_id) else []
        if names:
            print(f"{known.env_id} is a Brax task: using --preset {names[0]} (pass --preset to choose)")
    return tyro.cli(Args, args=argv, default=apply_presets(Args(), names), description=__doc__)


def apply_presets(args: Args, names) -> Args:
    for name in names:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        args = dataclasses.replace(args, **from_reference_names(PRESETS[name]))
    return dataclasses.replace(args, preset=tuple(names))


def from_reference_names(values: dict) -> dict:
    """Presets may use the reference's names: use_sde with sde_sample_freq is noise_hold_steps."""
    values = dict(values)
    if "use_sde" in values:
        use_sde, freq = values.pop("use_sde"), values.pop("sde_sample_freq", 1)
        values["noise_hold_steps"] = freq if use_sde else 0
    return values


def validate(args: Args) -> None:
    """Every check that needs no compilation, each failure a one-line message naming the flags."""
    envs.canonical_id(args.env_id)  # raises with the list of valid ids
    if envs.is_brax(args.env_id) and args.env_backend not in envs.BRAX_BACKENDS:
        raise ConfigError(f"--env-backend {args.env_backend!r} is not one of {', '.join(envs.BRAX_BACKENDS)}")
    for name in ("num_seeds", "total_timesteps", "num_envs", "num_steps", "num_epochs",
                 "minibatch_size", "eval_every", "eval_episodes"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.noise_hold_steps < 0:
        raise ConfigError(f"--noise-hold-steps must be >= 0, got {args.noise_hold_steps}")
    if args.learning_rate <= 0 or args.max_episode_steps < 0 or not args.hidden_sizes:
        raise ConfigError(
            "--learning-rate must be positive, --max-episode-steps >= 0, --hidden-sizes non-empty")
    batch = args.num_envs * args.num_steps
    if batch % args.minibatch_size:
        raise ConfigError(
            f"--num-envs {args.num_envs} x --num-steps {args.num_steps} = {batch} is not divisible "
            f"by --minibatch-size {args.minibatch_size}")
    if args.total_timesteps < batch:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is less than one rollout "
            f"(--num-envs {args.num_envs} x --num-steps {args.num_steps} = {batch})")


# ----------------------------------------------------------------------------------------------
# Networks: separate actor (pi) and critic (V) MLPs
# ----------------------------------------------------------------------------------------------
def dense(features: int, kernel_init: str, scale: float) -> nn.Dense:
    init = (nn.initializers.orthogonal(scale) if kernel_init == "orthogonal"
            else nn.initializers.lecun_normal())
    return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden_sizes: tuple[int, ...]
    out: int
    activation: str
    kernel_init: str
    out_scale: float

    @nn.compact
    def __call__(self, x):
        act = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]
        for h in self.hidden_sizes:
            x = act(dense(h, self.kernel_init, np.sqrt(2))(x))
        return dense(self.out, self.kernel_init, self.out_scale)(x)


class Actor(nn.Module):
    """Discrete: logits. Continuous: (mean, log_std) of a diagonal Gaussian whose log_std is a
    state-independent parameter."""

    action_spec: envs.ActionSpec
    hidden_sizes: tuple[int, ...]
    activation: str
    kernel_init: str
    log_std_init: float

    @nn.compact
    def __call__(self, obs):
        out = MLP(self.hidden_sizes, self.action_spec.n, self.activation, self.kernel_init, 0.01)(obs)
        if self.action_spec.discrete:
            return out
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_spec.n,))
        return out, jnp.broadcast_to(log_std, out.shape)


class Critic(nn.Module):
    hidden_sizes: tuple[int, ...]
    activation: str
    kernel_init: str

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden_sizes, 1, self.activation, self.kernel_init, 1.0)(obs).squeeze(-1)


# Policy distributions, written out: log-probability, entropy, sample, mode.
def log_prob(spec, dist, action):
    if spec.discrete:
        return jnp.take_along_axis(jax.nn.log_softmax(dist), action[..., None], -1).squeeze(-1)
    mean, log_std = dist
    z = (action - mean) / jnp.exp(log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)


def entropy(spec, dist):
    if spec.discrete:
        logp = jax.nn.log_softmax(dist)
        return -jnp.sum(jnp.exp(logp) * logp, -1)
    return jnp.sum(dist[1] + 0.5 * jnp.log(2 * jnp.pi * jnp.e), -1)


def sample(spec, dist, key):
    if spec.discrete:
        return jax.random.categorical(key, dist)
    mean, log_std = dist
    return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)


def mode(spec, dist):
    return jnp.argmax(dist, -1) if spec.discrete else dist[0]


# ----------------------------------------------------------------------------------------------
# Returns and advantages
# ----------------------------------------------------------------------------------------------
def gae(rewards, values, dones, last_value, gamma, lam):
    """GAE(lambda) over a [T, E] rollout, backwards in time:
        delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t
        A_t     = delta_t + gamma (1 - d_t) lambda A_{t+1}
    and the lambda-returns A_t + V_t (the value targets). d_t = 1 where step t ends an episode
    (terminated or truncated; a truncation's bootstrap is already inside r_t)."""
    next_values = jnp.concatenate([values[1:], last_value[None]], 0)
    deltas = rewards + gamma * (1.0 - dones) * next_values - values

    def backward(adv_next, x):
        delta, done = x
        adv = delta + gamma * (1.0 - done) * lam * adv_next
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, dones), reverse=True)
    return advantages, advantages + values


def ppo_loss(params, apply_actor, apply_critic, spec, batch, clip_coef, args):
    """Clipped surrogate (Schulman et al. 2017, eq. 7), value regression, entropy bonus."""
    dist = apply_actor(params["pi"], batch.obs)
    log_ratio = log_prob(spec, dist, batch.action) - batch.log_prob
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    if args.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef) * adv).mean()
    v_loss = jnp.mean((apply_critic(params["v"], batch.obs) - batch.return_target) ** 2)
    ent = entropy(spec, dist).mean()
    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * ent
    stats = dict(
        pg_loss=pg_loss, v_loss=v_loss, entropy=ent,
        approx_kl=jnp.mean(ratio - 1 - log_ratio),  # Schulman's k3 estimator of KL(old || new)
        clip_frac=jnp.mean(jnp.abs(ratio - 1) > clip_coef),
    )
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Training: one seed; main() vmaps it over seeds
# ----------------------------------------------------------------------------------------------
class Transition(NamedTuple):
    obs: jax.Array  # raw observation (normalised on use with the rollout's frozen statistics)
    action: jax.Array
    log_prob: jax.Array  # log pi_old(a|s), as of collection
    value: jax.Array  # V(s), as of collection
    reward: jax.Array  # scaled reward, plus gamma * V(final obs) at a truncation
    done: jax.Array  # the step ends an episode (terminated or truncated)
    return_target: jax.Array = None  # filled after the rollout
    advantage: jax.Array = None


class TrainState(NamedTuple):
    params: dict  # {"pi": actor params, "v": critic params}
    opt_state: Any
    env_state: Any  # num_envs environments
    obs: jax.Array  # their current raw observations
    obs_rms: envs.RunningMeanStd
    reward_scaler: envs.RewardScaler
    key: jax.Array
    iteration: jax.Array


class Trainer(NamedTuple):
    """The pure functions of one seed; see make_train."""

    init: Any  # key -> TrainState
    rollout: Any  # TrainState -> (TrainState, Transition [T, E], episode stats)
    iteration: Any  # TrainState -> (TrainState, metrics)
    evaluate: Any  # (TrainState, key) -> returns of eval_episodes episodes
    train_chunk: Any  # (TrainState, num_active) -> (TrainState, metrics of the chunk)
    iters_per_chunk: int
    num_iterations: int
    actor: nn.Module
    critic: nn.Module


def make_train(args: Args, env: envs.Env) -> Trainer:
    spec = env.action_spec
    batch_size = args.num_envs * args.num_steps
    num_minibatches = batch_size // args.minibatch_size
    num_iterations = args.total_timesteps // batch_size
    iters_per_chunk = max(1, min(args.eval_every // batch_size, num_iterations))
    actor = Actor(spec, args.hidden_sizes, args.actor_activation, args.kernel_init, args.log_std_init)
    critic = Critic(args.hidden_sizes, args.critic_activation, args.kernel_init)
    lr = (optax.linear_schedule(args.learning_rate, 0.0, num_iterations * args.num_epochs * num_minibatches)
          if args.anneal_lr else optax.constant_schedule(args.learning_rate))
    tx = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.adam(lr, eps=args.adam_eps))

    def norm(state, obs):
        return envs.normalize_obs(state.obs_rms, obs) if args.normalize_obs else obs

    def init(key):
        k_pi, k_v, k_env, k_train = jax.random.split(key, 4)
        dummy = jnp.zeros(env.obs_shape)
        params = {"pi": actor.init(k_pi, dummy), "v": critic.init(k_v, dummy)}
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, args.num_envs))
        return TrainState(params, tx.init(params), env_state, obs, envs.rms_init(env.obs_shape),
                          envs.reward_scaler_init(args.num_envs), k_train, jnp.int32(0))

    def rollout(state):
        """num_steps steps of num_envs environments with the current policy; normalisation
        statistics stay frozen here and are updated from the rollout afterwards."""

        def step(carry, t):
            env_state, obs, scaler, noise, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            obs_n = norm(state, obs)
            dist = actor.apply(state.params["pi"], obs_n)
            if args.noise_hold_steps > 1:  # one noise draw per environment, held for noise_hold_steps steps
                noise = jnp.where(t % args.noise_hold_steps == 0, jax.random.normal(k_act, noise.shape), noise)
                action = dist[0] + jnp.exp(dist[1]) * noise
            else:
                action = sample(spec, dist, k_act)
            value = critic.apply(state.params["v"], obs_n)
            ts = jax.vmap(env.step)(jax.random.split(k_env, args.num_envs), env_state, action)
            done = ts.terminated | ts.truncated
            reward = ts.reward
            scaler, discounted_return = envs.track_returns(scaler, reward, done, args.gamma)
            if args.normalize_reward:
                reward = envs.scale_reward(scaler, reward)
            # A truncated episode did not end: bootstrap it from the TRUE final observation.
            final_value = critic.apply(state.params["v"], norm(state, ts.final_obs))
            reward = reward + args.gamma * ts.truncated * final_value
            transition = Transition(obs, action, log_prob(spec, dist, action), value, reward, done.astype(jnp.float32))
            episodes = (done, ts.episode_return, ts.episode_length, discounted_return)
            return (ts.state, ts.obs, scaler, noise, key), (transition, episodes)

        noise = jnp.zeros((args.num_envs, spec.n))
        (env_state, obs, scaler, _, key), (traj, episodes) = jax.lax.scan(
            step, (state.env_state, state.obs, state.reward_scaler, noise, state.key), jnp.arange(args.num_steps))
        last_value = critic.apply(state.params["v"], norm(state, obs))
        adv, target = gae(traj.reward, traj.value, traj.done, last_value, args.gamma, args.gae_lambda)
        traj = traj._replace(advantage=adv, return_target=target)
        state = state._replace(env_state=env_state, obs=obs, reward_scaler=scaler, key=key)
        return state, traj, episodes

    def update(state, traj):
        """num_epochs passes over the batch in shuffled minibatches."""
        progress = state.iteration / num_iterations
        clip_coef = args.clip_coef * (1.0 - progress) if args.anneal_clip else args.clip_coef
        flat = traj._replace(obs=norm(state, traj.obs))
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), flat)
        grad_fn = jax.grad(ppo_loss, has_aux=True)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            grads, stats = grad_fn(params, actor.apply, critic.apply, spec, mb, clip_coef, args)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry, key):
            perm = jax.random.permutation(key, batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, mbs)

        key, k_perm = jax.random.split(state.key)
        (params, opt_state), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(k_perm, args.num_epochs))
        stats = jax.tree.map(jnp.mean, stats)
        stats["clip_coef"] = jnp.float32(clip_coef)
        return state._replace(params=params, opt_state=opt_state, key=key), stats

    def iteration(state):
        learning_rate = lr(state.iteration * args.num_epochs * num_minibatches)
        state, traj, (done, ep_return, ep_length, discounted_return) = rollout(state)
        state, stats = update(state, traj)
        # Statistics for the next rollout, from this one's observations and returns.
        obs_rms, scaler = state.obs_rms, state.reward_scaler
        if args.normalize_obs:
            obs_rms = envs.rms_update(obs_rms, traj.obs)
        if args.normalize_reward:
            scaler = scaler._replace(rms=envs.rms_update(scaler.rms, discounted_return))
        state = state._replace(obs_rms=obs_rms, reward_scaler=scaler, iteration=state.iteration + 1)
        residual = traj.return_target - traj.value
        stats.update(
            learning_rate=learning_rate,
            explained_variance=1.0 - residual.var() / (traj.return_target.var() + 1e-8),
            episodes=done.sum(),
            return_sum=jnp.sum(done * ep_return),
            length_sum=jnp.sum(done * ep_length),
        )
        return state, stats

    def evaluate(state, key):
        """eval_episodes full episodes of the deterministic policy (mode of pi) on separate
        environments, with the training's observation statistics frozen; undiscounted returns."""
        k_reset, k_step = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, args.eval_episodes))
        zeros = jnp.zeros(args.eval_episodes)

        def body(carry):
            obs, env_state, done, ret, key = carry
            key, k = jax.random.split(key)
            action = mode(spec, actor.apply(state.params["pi"], norm(state, obs)))
            ts = jax.vmap(env.step)(jax.random.split(k, args.eval_episodes), env_state, action)
            ret = ret + jnp.where(done, 0.0, ts.reward)
            return ts.obs, ts.state, done | ts.terminated | ts.truncated, ret, key

        carry = (obs, env_state, zeros.astype(bool), zeros, k_step)
        return jax.lax.while_loop(lambda c: ~jnp.all(c[2]), body, carry)[3]

    def train_chunk(state, num_active):
        """iters_per_chunk iterations (only the first num_active run: the last chunk may be
        shorter, with no recompilation), then one evaluation. Metrics are means over the chunk."""
        stats_shape = jax.eval_shape(iteration, state)[1]

        def body(state, i):
            skip = lambda s: (s, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), stats_shape))
            return jax.lax.cond(i < num_active, iteration, skip, state)

        state, stats = jax.lax.scan(body, state, jnp.arange(iters_per_chunk))
        active = jnp.arange(iters_per_chunk) < num_active
        n_ep = stats.pop("episodes").sum()
        metrics = {k: jnp.sum(v * active) / num_active for k, v in stats.items()
                   if k not in ("return_sum", "length_sum")}
        metrics["train_return"] = jnp.where(n_ep > 0, stats["return_sum"].sum() / n_ep, jnp.nan)
        metrics["train_length"] = jnp.where(n_ep > 0, stats["length_sum"].sum() / n_ep, jnp.nan)
        key, k_eval = jax.random.split(state.key)
        returns = evaluate(state, k_eval)
        metrics.update(eval_return=returns.mean(), eval_return_std=returns.std())
        return state._replace(key=key), metrics

    return Trainer(init, rollout, iteration, evaluate, train_chunk, iters_per_chunk,
                   num_iterations, actor, critic)


# ----------------------------------------------------------------------------------------------
# Running, outputs
# ----------------------------------------------------------------------------------------------
METRIC_COLUMNS = ("seed", "env_steps", "train_return", "train_length", "eval_return", "eval_return_std",
                  "pg_loss", "v_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
                  "learning_rate", "clip_coef")


def prepare_output_dir(args: Args, algo: str) -> str:
    out = args.output_dir or os.path.join(
        "runs", f"{algo}_{envs.canonical_id(args.env_id)}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise ConfigError(f"output directory {out!r} exists and is not empty (pass --overwrite to reuse it)")
    os.makedirs(out, exist_ok=True)
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "gymnax", "brax", "mujoco", "mujoco-mjx"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def plot_curves(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted({r["env_steps"] for r in rows})
    by_seed: dict[int, dict] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["env_steps"]] = r["eval_return"]
    curves = np.array([[s.get(x, np.nan) for x in steps] for s in by_seed.values()])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, np.nanmean(curves, 0), label=f"mean over {len(curves)} seeds")
    ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.25, label="min-max over seeds")
    ax.set(xlabel="environment steps (per seed)", ylabel="eval return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def init_seeds(trainer: Trainer, seeds: list[int]) -> TrainState:
    """The initial states of the seeds, stacked on a leading axis. Each seed is initialised on its
    own (one compiled init, called per seed), so seed i starts exactly as seed i run alone, and no
    QR is batched: jaxlib's batched CPU QR (orthogonal init under vmap) can deadlock its thread
    pool on a small machine."""
    init = jax.jit(trainer.init)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[init(jax.random.PRNGKey(s)) for s in seeds])


def make_env(args: Args) -> envs.Env:
    """Check the arguments and build the environment they name: every input error is raised here,
    before anything is compiled."""
    validate(args)
    env_id = envs.canonical_id(args.env_id)
    env = envs.make(env_id, args.env_backend, args.max_episode_steps or None, args.clip_actions)
    if args.noise_hold_steps > 1 and env.action_spec.discrete:
        raise ConfigError(f"--noise-hold-steps {args.noise_hold_steps} needs continuous actions; {env_id} has discrete ones")
    return env


def run(args: Args, algo: str = "ppo") -> dict:
    """Validate, train, write every output; returns the summary. Metric rows are written as they
    arrive, and an interruption (Ctrl-C) still writes the summary, curves and parameters."""
    env = make_env(args)
    env_id = envs.canonical_id(args.env_id)
    out = prepare_output_dir(args, algo)
    trainer = make_train(args, env)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    device = jax.devices()[0]
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(algo=algo, args=dataclasses.asdict(args), env_id=env_id, seeds=seeds,
                       versions=versions(), device=f"{device.platform}: {device.device_kind}"), f, indent=2)

    t0 = time.perf_counter()
    state = jax.block_until_ready(init_seeds(trainer, seeds))
    chunk = jax.jit(jax.vmap(trainer.train_chunk, in_axes=(0, None))).lower(state, jnp.int32(0)).compile()
    compile_seconds = time.perf_counter() - t0

    batch = args.num_envs * args.num_steps
    rows, done_iters, interrupted = [], 0, False
    csv_file = open(os.path.join(out, "metrics.csv"), "w", newline="")
    writer = csv.DictWriter(csv_file, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    t_train = time.perf_counter()
    try:
        while done_iters < trainer.num_iterations:
            n = min(trainer.iters_per_chunk, trainer.num_iterations - done_iters)
            state, metrics = chunk(state, jnp.int32(n))
            metrics = jax.device_get(metrics)
            done_iters += n
            for i, seed in enumerate(seeds):
                row = {"seed": seed, "env_steps": done_iters * batch}
                row.update({k: float(metrics[k][i]) for k in METRIC_COLUMNS[2:]})
                writer.writerow(row)
                rows.append(row)
            csv_file.flush()
            elapsed = time.perf_counter() - t_train
            train_return = metrics["train_return"][np.isfinite(metrics["train_return"])]
            print(f"[{algo} {env_id}] {done_iters * batch:>10,}/{trainer.num_iterations * batch:,} steps"
                  f" | {done_iters * batch * len(seeds) / elapsed:>9,.0f} steps/s"
                  f" | train return {train_return.mean() if train_return.size else float('nan'):8.2f}"
                  f" | eval return {np.mean(metrics['eval_return']):8.2f}"
                  f" | {elapsed:6.1f}s", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: writing what was computed so far", flush=True)
    csv_file.close()
    jax.block_until_ready(state)
    train_seconds = time.perf_counter() - t_train

    final = [r["eval_return"] for r in rows[-len(seeds):]] if rows else []
    summary = dict(
        algo=algo, env_id=env_id, seeds=seeds, final_eval_return=final,
        final_eval_return_mean=float(np.mean(final)) if final else None,
        env_steps=done_iters * batch,
        env_steps_per_second=done_iters * batch * len(seeds) / train_seconds,
        compile_seconds=compile_seconds, train_seconds=train_seconds,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        completed=not interrupted and done_iters == trainer.num_iterations,
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # Final parameters of every seed (leading axis = seed) and their observation statistics.
    # Load with flax.serialization.msgpack_restore(open(path, "rb").read()).
    with open(os.path.join(out, "params.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(
            {"seeds": np.asarray(seeds), "params": state.params, "obs_rms": state.obs_rms._asdict()})))
    if rows:
        plot_curves(rows, os.path.join(out, "curves.png"), f"{algo} on {env_id}")

    print(f"\n{'seed':>6} {'final eval return':>18} {'final train return':>19}")
    for r in rows[-len(seeds):]:  # a train return is nan where no episode ended in the interval
        print(f"{r['seed']:>6} {r['eval_return']:>18.2f} {r['train_return']:>19.2f}")
    print(f"\nmean final eval return {summary['final_eval_return_mean']} over {len(seeds)} seeds | "
          f"{summary['env_steps_per_second']:,.0f} env steps/s | compile {compile_seconds:.1f}s | "
          f"train {train_seconds:.1f}s | peak memory {summary['peak_memory_mb']:.0f} MB\noutputs in {out}")
    return summary


def main(argv: list[str] | None = None) -> None:
    try:
        args = parse_args(argv)
        run(args)
    except (ConfigError, envs.UnknownEnvError) as e:
        raise SystemExit(f"{os.path.basename(sys.argv[0])}: error: {e}")


if __name__ == "__main__":
    main()
