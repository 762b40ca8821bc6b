"""BPO (Goodall, Hamel-De le Court, Belardinelli 2025, arXiv 2511.10843) with per-decision
(V-trace) importance clipping.

BPO is PPO in which a learned behaviour policy mu, not pi itself, collects the data. For
off-policy Monte Carlo estimation of pi's returns, the variance-optimal behaviour policy is

    mu*(a|s)  ∝  pi(a|s) sqrt(q_hat(s,a)),

where q_hat is pi's action value for the "variance reward" r_hat = 2 r Q_pi - r^2 with discount
gamma^2 (Liu & Zhang 2024). One iteration (../shared/BPO.md, steps 1-7):

  1. rollout with mu, storing log mu and log pi; transitions also go into a FIFO replay buffer
  2. V-trace returns vs and advantages, with truncated ratios rho = min(pi/mu, clip_rho), c
  3. PPO update of pi and V, with ratio pi_theta / mu (mu's log-prob is the "old" one)
  4. FQE of Q for the updated pi on the replay buffer
  5. variance rewards r_hat = 2 r Q(s,a) - r^2
  6. FQE of q_hat with reward r_hat and discount gamma^2
  7. behaviour update of mu towards pi sqrt(q_hat)

As in ppo.py, all of training runs inside `jax.lax.scan` under `jit`, vmapped over seeds.

    python bpo.py                                          # CartPole-v1, 4 seeds
    python bpo.py --preset cartpole_ppo ppo_bpo_zero1.0     # a base preset plus a BPO add-on
    python bpo.py --env-id ant --num-seeds 16               # Brax on MJX (mujoco_ppo + ppo_bpo_zero)
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
    # The defaults are the reference's `cartpole_ppo` + `ppo_bpo_zero1.0` settings run for 150k
    # steps (about a minute for 4 seeds on a 2-core CPU).
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
    total_timesteps: int = 150_000
    """environment steps per seed"""
    num_envs: int = 8
    """parallel environments per seed"""
    num_steps: int = 32
    """steps per environment in each rollout (the batch is num_envs * num_steps)"""
    num_epochs: int = 20
    """passes of the PPO update (pi and V) over each rollout batch"""
    minibatch_size: int = 256
    """transitions per PPO gradient step; must divide num_envs * num_steps"""
    learning_rate: float = 1e-3
    """Adam learning rate of every network"""
    anneal_lr: bool = True
    """decay every learning rate linearly to 0 over training (each over its own step count)"""
    adam_eps: float = 1e-5
    """Adam epsilon"""
    max_grad_norm: float = 0.5
    """global-norm gradient clipping threshold of every optimizer"""
    gamma: float = 0.98
    """discount factor"""
    gae_lambda: float = 0.8
    """lambda of the V-trace(lambda) returns"""
    clip_coef: float = 0.2
    """PPO surrogate clipping range epsilon"""
    anneal_clip: bool = True
    """decay the clipping range linearly to 0 over training"""
    norm_adv: bool = True
    """normalise advantages within each minibatch"""
    ent_coef: float = 0.0
    """entropy bonus coefficient, applied to mu's loss (as in the reference), not to pi's"""
    vf_coef: float = 0.5
    """value loss coefficient (the loss is vf_coef * mean((V - vs)^2))"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of pi, mu and V"""
    actor_activation: Literal["tanh", "relu"] = "tanh"
    """activation of pi's and mu's hidden layers"""
    critic_activation: Literal["tanh", "relu"] = "tanh"
    """activation of the hidden layers of V, Q and q_hat"""
    kernel_init: Literal["orthogonal", "lecun_normal"] = "lecun_normal"
    """weight init of pi, mu, V: orthogonal (gain sqrt 2; 0.01 actor head, 1 critic head) or lecun_normal"""
    noise_hold_steps: int = 0
    """hold each Gaussian exploration noise draw for this many rollout steps, per environment (the
    reference's use_sde with sde_sample_freq); 0 or 1 draws new noise every step"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian pi and mu (continuous actions)"""
    normalize_obs: bool = False
    """normalise observations with running statistics (per seed, frozen during evaluation)"""
    normalize_reward: bool = False
    """scale rewards by the running std of the discounted return"""
    clip_actions: bool = True
    """clip continuous actions to the action bounds before they reach the environment"""
    max_episode_steps: int = 0
    """episode time limit; 0 uses the environment's own (gymnax's, or 1000 for Brax)"""
    # --- BPO ---
    clip_rho: float = 1.0
    """truncation of the importance ratio in the TD-error weight: rho = min(pi/mu, clip_rho)"""
    clip_c: float = 1.0
    """truncation of the ratio in the trace: c = lambda * min(pi/mu, clip_c)"""
    weight_on_adv: bool = False
    """multiply advantages by rho and use the stored log pi (not log mu) as PPO's old log-prob"""
    replay_size: int = 1024
    """transitions in each seed's FIFO replay buffer for the FQE and mu phases"""
    fqe_epochs: int = 10
    """passes over the replay buffer when fitting Q and again when fitting q_hat (0 skips)"""
    fqe_minibatch_size: int = 256
    """transitions per FQE gradient step"""
    mu_epochs: int = 10
    """passes over the replay buffer's states when updating mu (0 skips)"""
    mu_minibatch_size: int = 128
    """states per mu gradient step"""
    mu_policy_loss: Literal["kl_qhat", "kl"] = "kl_qhat"
    """continuous mu loss: kl_qhat pulls mu towards pi sqrt(q_hat); kl only towards pi"""
    weight_td: bool = True
    """weight FQE's TD loss by clip(pi/mu, 0.1, 10), normalised to mean 1"""
    clip_targets: bool = True
    """clip FQE targets to [min(r_min, 0), max(r_max, 0)] / (1 - discount), and q_hat in mu's target"""
    symlog_targets: bool = True
    """Q and q_hat predict symlog of their value, regress on symlog(target)"""
    symlog_reg_coef: float = 1.0
    """with symlog_targets: weight of the pull of Q (q_hat) towards its target network"""
    polyak_tau: float = 0.02
    """target networks move by this fraction after every FQE step; 0 copies after each phase"""
    q_hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of Q and q_hat"""
    q_layer_norm: bool = True
    """LayerNorm after each hidden layer of Q and q_hat"""
    q_zero_init: bool = True
    """zero-initialise the last layer of Q and q_hat"""
    q_kernel_init: Literal["orthogonal", "lecun_normal"] = "orthogonal"
    """weight init of Q's and q_hat's hidden layers"""
    eval_every: int = 10_000
    """environment steps per seed between evaluations (and metric rows)"""
    eval_episodes: int = 10
    """episodes of the deterministic policy pi (never mu) per evaluation"""
    output_dir: str | None = None
    """where outputs go; default runs/bpo_<env>_<time>"""
    overwrite: bool = False
    """allow writing into an existing non-empty output directory"""


# Presets, applied in order: a base (cartpole_ppo, mujoco_ppo) then a BPO add-on (ppo_bpo...).
_PPO_BPO = dict(clip_rho=1.5, clip_c=1.5, symlog_targets=True, polyak_tau=0.02,
                q_layer_norm=False, q_zero_init=False, q_kernel_init="lecun_normal")
_ZERO = dict(_PPO_BPO, q_layer_norm=True, q_zero_init=True, q_kernel_init="orthogonal")
PRESETS: dict[str, dict[str, Any]] = {
    "cartpole_ppo": dict(
        env_id="CartPole-v1", total_timesteps=100_000, num_envs=8, num_steps=32,
        minibatch_size=256, num_epochs=20, gae_lambda=0.8, gamma=0.98, clip_coef=0.2,
        anneal_clip=True, learning_rate=1e-3, anneal_lr=True, ent_coef=0.0, vf_coef=0.5,
        hidden_sizes=(64, 64), q_hidden_sizes=(64, 64), actor_activation="tanh",
        critic_activation="tanh", kernel_init="lecun_normal", normalize_obs=False,
        weight_td=True, clip_targets=True, replay_size=1024, fqe_minibatch_size=256,
        mu_minibatch_size=128, fqe_epochs=10, mu_epochs=10,
    ),
    "mujoco_ppo": dict(
        total_timesteps=1_500_000, num_envs=1, num_steps=2048, minibatch_size=64, num_epochs=10,
        gamma=0.99, gae_lambda=0.95, clip_coef=0.2, anneal_clip=False, learning_rate=3e-4,
        anneal_lr=False, ent_coef=0.001, vf_coef=0.5, clip_actions=True, hidden_sizes=(64, 64),
        q_hidden_sizes=(64, 64), actor_activation="relu", critic_activation="relu",
        kernel_init="orthogonal", weight_td=True, clip_targets=True, replay_size=8192,
        fqe_minibatch_size=256, mu_minibatch_size=128, fqe_epochs=20, mu_epochs=20,
        normalize_obs=True,  # ours: Brax observations are unscaled
        use_sde=False, log_std_init=0.0, eval_every=50_000,
    ),
    # The reference's MuJoCo preset with held exploration noise (its names: use_sde, sde_sample_freq).
    "mujoco_ppo_gsde": dict(
        total_timesteps=2_000_000, num_envs=16, num_steps=512, minibatch_size=128, num_epochs=20,
        gamma=0.99, gae_lambda=0.9, clip_coef=0.4, anneal_clip=False, learning_rate=3e-5,
        anneal_lr=False, ent_coef=0.0, vf_coef=0.5, clip_actions=True, hidden_sizes=(256, 256),
        q_hidden_sizes=(256, 256), replay_size=8192, fqe_minibatch_size=128,
        mu_minibatch_size=128, fqe_epochs=40, mu_epochs=40, weight_td=False, clip_targets=False,
        actor_activation="relu", critic_activation="relu", kernel_init="lecun_normal",
        use_sde=True, sde_sample_freq=4, log_std_init=-1.0,
        normalize_obs=False,  # as the reference; measured on hopper, normalising did not help here (README)
        eval_every=50_000,
    ),
    # RL Baselines3 Zoo's Pendulum-v1 PPO settings (as ppo.py's pendulum_ppo), BPO phases on top.
    "pendulum_ppo": dict(
        env_id="Pendulum-v1", total_timesteps=200_000, num_envs=4, num_steps=1024,
        minibatch_size=64, num_epochs=10, gamma=0.9, gae_lambda=0.95, clip_coef=0.2,
        anneal_clip=False, learning_rate=1e-3, anneal_lr=False, ent_coef=0.0, vf_coef=0.5,
        hidden_sizes=(64, 64), q_hidden_sizes=(64, 64), actor_activation="tanh",
        critic_activation="tanh", kernel_init="orthogonal", normalize_obs=False, eval_every=20_000,
        weight_td=True, clip_targets=True, replay_size=4096, fqe_minibatch_size=256,
        mu_minibatch_size=128, fqe_epochs=10, mu_epochs=10,
    ),
    "ppo_bpo": _PPO_BPO,
    "ppo_bpo_zero": _ZERO,
    "ppo_bpo_zero1.0": dict(_ZERO, clip_rho=1.0, clip_c=1.0),
    "ppo_bpo_zero1.0_1.5": dict(_ZERO, clip_rho=1.5, clip_c=1.0),
    "ppo_bpo_zero1.0_1.4": dict(_ZERO, clip_rho=1.4, clip_c=1.0),
}


class ConfigError(ValueError):
    """Bad input, reported as one line before anything is compiled."""


def parse_args(argv: list[str] | None = None) -> Args:
    """Presets first (their values become the defaults `--help` shows), then every other flag.
    A Brax env id with no --preset gets mujoco_ppo plus the default BPO add-on."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="*", default=None)
    pre.add_argument("--env-id", default=Args.env_id)
    known = pre.parse_known_args(argv)[0]
    names = known.preset
    if names is None:
        names = ["mujoco_ppo", "ppo_bpo_zero1.0"] if envs.is_brax(known.env_id) else []
        if names:
            print(f"{known.env_id} is a Brax task: using --preset {' '.join(names)} (pass --preset to choose)")
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
                 "minibatch_size", "eval_every", "eval_episodes", "replay_size",
                 "fqe_minibatch_size", "mu_minibatch_size", "clip_rho", "clip_c"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("fqe_epochs", "mu_epochs", "max_episode_steps", "noise_hold_steps"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.learning_rate <= 0 or not args.hidden_sizes or not args.q_hidden_sizes:
        raise ConfigError("--learning-rate must be positive, --hidden-sizes and --q-hidden-sizes non-empty")
    if not 0.0 <= args.polyak_tau <= 1.0:
        raise ConfigError(f"--polyak-tau must be in [0, 1], got {args.polyak_tau}")
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
# Networks: pi and mu (same architecture; mu starts as a copy of pi), V, Q and q_hat
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
    layer_norm: bool = False
    zero_init_out: bool = False

    @nn.compact
    def __call__(self, x):
        act = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]
        for h in self.hidden_sizes:
            x = dense(h, self.kernel_init, np.sqrt(2))(x)
            x = act(nn.LayerNorm()(x) if self.layer_norm else x)
        if self.zero_init_out:
            return nn.Dense(self.out, kernel_init=nn.initializers.zeros)(x)
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


class QNet(nn.Module):
    """Action values. Discrete: s -> one value per action; continuous: concat(s, a) -> a value.
    positive (q_hat): softplus(x) + 1e-6, since q_hat >= 0. With symlog_targets the output is read
    as symlog of the value (see `value`)."""

    action_spec: envs.ActionSpec
    hidden_sizes: tuple[int, ...]
    activation: str
    kernel_init: str
    layer_norm: bool
    zero_init: bool
    positive: bool

    @nn.compact
    def __call__(self, obs, action=None):
        discrete = self.action_spec.discrete
        x = obs if discrete else jnp.concatenate([obs, action], -1)
        out = MLP(self.hidden_sizes, self.action_spec.n if discrete else 1, self.activation,
                  self.kernel_init, 1.0, self.layer_norm, self.zero_init)(x)
        out = out if discrete else out.squeeze(-1)
        return jax.nn.softplus(out) + 1e-6 if self.positive else out


def symlog(x):
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x):
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


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
# Returns and advantages: V-trace(lambda) (Espeholt et al. 2018, eq. 1, with lambda)
# ----------------------------------------------------------------------------------------------
def vtrace(rewards, values, dones, last_value, log_pi, log_mu, gamma, lam, clip_rho, clip_c):
    """Over a [T, E] rollout collected by mu, with ratio_t = pi(a_t|s_t) / mu(a_t|s_t),
    rho_t = min(ratio_t, clip_rho), c_t = lambda min(ratio_t, clip_c),
    delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t:

        vs_t  = V_t + rho_t delta_t + gamma (1 - d_t) c_t (vs_{t+1} - V_{t+1}),  vs_T = V(last obs)
        adv_t = r_t + gamma (1 - d_t) ((1 - lambda) V_{t+1} + lambda vs_{t+1}) - V_t
              = delta_t + gamma (1 - d_t) lambda (vs_{t+1} - V_{t+1})

    With pi = mu every ratio is 1 and both are GAE(lambda) and the lambda-returns of ppo.py (to
    float32 rounding: XLA may round the same arithmetic differently in two programs).
    Returns vs, adv, rho and the fractions of ratios clipped by clip_rho and by clip_c."""
    ratio = jnp.exp(log_pi - log_mu)
    rho = jnp.minimum(ratio, clip_rho)
    c = lam * jnp.minimum(ratio, clip_c)
    next_values = jnp.concatenate([values[1:], last_value[None]], 0)
    deltas = rewards + gamma * (1.0 - dones) * next_values - values

    def backward(err_next, x):  # err = vs - V
        delta, done, rho_t, c_t = x
        err = rho_t * delta + gamma * (1.0 - done) * c_t * err_next
        adv = delta + gamma * (1.0 - done) * lam * err_next
        return err, (err, adv)

    _, (err, adv) = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, dones, rho, c), reverse=True)
    clipped = dict(rho_clip_frac=jnp.mean(ratio > clip_rho), c_clip_frac=jnp.mean(ratio > clip_c))
    return err + values, adv, rho, clipped


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def ppo_loss(params, apply_actor, apply_critic, spec, batch, clip_coef, args):
    """Clipped surrogate (Schulman et al. 2017, eq. 7) with ratio pi_theta / mu (batch.log_old is
    log mu as of collection, or log pi with weight_on_adv), and value regression on vs. No entropy
    term: the reference applies ent_coef to mu instead."""
    dist = apply_actor(params["pi"], batch.obs)
    log_ratio = log_prob(spec, dist, batch.action) - batch.log_old
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    if args.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef) * adv).mean()
    v_loss = jnp.mean((apply_critic(params["v"], batch.obs) - batch.vs) ** 2)
    loss = pg_loss + args.vf_coef * v_loss
    stats = dict(
        pg_loss=pg_loss, v_loss=v_loss, entropy=entropy(spec, dist).mean(),
        approx_kl=jnp.mean(ratio - 1 - log_ratio),  # Schulman's k3 estimator of KL(old || new)
        clip_frac=jnp.mean(jnp.abs(ratio - 1) > clip_coef),
    )
    return loss, stats


def variance_reward(r, q):
    """r_hat(s,a) = 2 r(s,a) Q_pi(s,a) - r(s,a)^2: q_hat, the action value of r_hat under pi with
    discount gamma^2, is the second moment whose square root weights the optimal mu."""
    return 2.0 * r * q - r**2


def mu_target_discrete(log_pi, q_hat):
    """p(.|s) = softmax(log pi(.|s) + 0.5 log max(q_hat(s,.), 1e-6))  ∝  pi sqrt(q_hat)."""
    return jax.nn.softmax(log_pi + 0.5 * jnp.log(jnp.maximum(q_hat, 1e-6)), -1)


def mu_loss_discrete(mu_logits, log_pi, q_hat, ent_coef):
    """Per state: cross_entropy(p, mu) - ent_coef H(mu), p the (fixed) target above."""
    p = jax.lax.stop_gradient(mu_target_discrete(log_pi, q_hat))
    log_mu = jax.nn.log_softmax(mu_logits)
    return -jnp.sum(p * log_mu, -1) + ent_coef * jnp.sum(jnp.exp(log_mu) * log_mu, -1)


def mu_loss_continuous(spec, mu_dist, pi_dist, q_hat_fn, key, ent_coef, use_q_hat=True):
    """Per state, with a ~ mu reparameterised ("kl_qhat"):
        log mu(a|s) - log pi(a|s) - 0.5 log max(q_hat(s,a), 1e-6) - ent_coef H(mu),
    a one-sample estimate of KL(mu || pi sqrt(q_hat) / Z) up to log Z. "kl" drops q_hat."""
    mean, log_std = mu_dist
    a = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    loss = log_prob(spec, mu_dist, a) - log_prob(spec, jax.lax.stop_gradient(pi_dist), a)
    if use_q_hat:
        loss = loss - 0.5 * jnp.log(jnp.maximum(q_hat_fn(a), 1e-6))
    return loss - ent_coef * entropy(spec, mu_dist)


# ----------------------------------------------------------------------------------------------
# Replay buffer: FIFO, replay_size transitions per seed, on device
# ----------------------------------------------------------------------------------------------
class Replay(NamedTuple):
    obs: jax.Array  # raw observations
    action: jax.Array
    reward: jax.Array  # the (scaled) environment reward, without the truncation bootstrap
    terminal: jax.Array  # 1 where the step ends an episode (terminated or truncated)
    truncated: jax.Array  # 1 where it ends by the time limit (then next_obs is still bootstrapped)
    next_obs: jax.Array  # the true next observation (the final one at an episode's end)
    log_mu: jax.Array  # log mu(a|s) as of collection
    ptr: jax.Array  # next slot to write
    size: jax.Array  # filled slots: always the first `size`


def replay_init(capacity: int, obs_shape, spec: envs.ActionSpec) -> Replay:
    action = jnp.zeros((capacity,), jnp.int32) if spec.discrete else jnp.zeros((capacity, spec.n))
    z = jnp.zeros(capacity)
    return Replay(jnp.zeros((capacity,) + obs_shape), action, z, z, z,
                  jnp.zeros((capacity,) + obs_shape), z, jnp.int32(0), jnp.int32(0))


def replay_add(rb: Replay, new: Replay) -> Replay:
    """Append n transitions (leading axis of `new`'s arrays), overwriting the oldest."""
    capacity, n = rb.reward.shape[0], new.reward.shape[0]
    fields = Replay._fields[:-2]
    if n >= capacity:  # the newest `capacity` transitions fill the buffer
        return Replay(*(getattr(new, f)[n - capacity:] for f in fields), jnp.int32(0), jnp.int32(capacity))
    idx = (rb.ptr + jnp.arange(n)) % capacity
    data = (getattr(rb, f).at[idx].set(getattr(new, f)) for f in fields)
    return Replay(*data, (rb.ptr + n) % capacity, jnp.minimum(rb.size + n, capacity))


def replay_minibatches(key, size, capacity: int, minibatch_size: int, epochs: int):
    """`epochs` passes over the `size` filled slots in random order, as [epochs * M,
    minibatch_size] indices and 0/1 weights with M = ceil(capacity / minibatch_size): slots past
    `size` (a buffer still filling, the tail of the last minibatch) get weight 0, so shapes are
    static and no transition is dropped or counted twice."""
    m = -(-capacity // minibatch_size)

    def one_epoch(k):
        u = jnp.where(jnp.arange(capacity) < size, jax.random.uniform(k, (capacity,)), 2.0)
        order = jnp.argsort(u)  # the filled slots first, shuffled
        order = jnp.concatenate([order, order[: m * minibatch_size - capacity]])
        weight = (jnp.arange(m * minibatch_size) < size).astype(jnp.float32)
        return order.reshape(m, minibatch_size), weight.reshape(m, minibatch_size)

    idx, w = jax.vmap(one_epoch)(jax.random.split(key, epochs))
    return idx.reshape(epochs * m, minibatch_size), w.reshape(epochs * m, minibatch_size)


# ----------------------------------------------------------------------------------------------
# Training: one seed; main() vmaps it over seeds
# ----------------------------------------------------------------------------------------------
class Transition(NamedTuple):
    obs: jax.Array  # raw observation (normalised on use with the rollout's frozen statistics)
    action: jax.Array  # a ~ mu(.|s)
    log_mu: jax.Array  # log mu(a|s), as of collection
    log_pi: jax.Array  # log pi(a|s), as of collection
    value: jax.Array  # V(s), as of collection
    reward: jax.Array  # (scaled) env reward, plus gamma * V(final obs) at a truncation
    done: jax.Array  # the step ends an episode (terminated or truncated)
    env_reward: jax.Array  # (scaled) env reward alone, for the replay buffer
    truncated: jax.Array
    final_obs: jax.Array  # the true next observation (before any reset)


class Batch(NamedTuple):  # what the PPO update reads
    obs: jax.Array  # normalised
    action: jax.Array
    log_old: jax.Array  # log mu, or log pi with weight_on_adv
    advantage: jax.Array
    vs: jax.Array


class TrainState(NamedTuple):
    params: dict  # pi, mu, v, q, q_target, q_hat, q_hat_target
    opt_state: dict  # ppo (pi and V together), q, q_hat, mu
    replay: Replay
    env_state: Any  # num_envs environments
    obs: jax.Array  # their current raw observations
    obs_rms: envs.RunningMeanStd
    reward_scaler: envs.RewardScaler
    key: jax.Array
    iteration: jax.Array
    r_max: jax.Array  # largest (scaled) reward seen so far
    r_min: jax.Array  # smallest
    r_hat_max: jax.Array  # largest variance reward computed so far


class Trainer(NamedTuple):
    """The pure functions of one seed; see make_train. Each phase maps TrainState -> TrainState."""

    init: Any  # key -> TrainState
    rollout: Any  # TrainState -> (TrainState, Transition [T, E], (vs, adv, rho, clipped), episode stats)
    ppo_update: Any  # (TrainState, Batch, lr) -> (TrainState, stats)
    fit_q: Any  # (TrainState, lr) -> (TrainState, stats)
    variance_rewards: Any  # TrainState -> r_hat over the replay buffer
    fit_q_hat: Any  # (TrainState, r_hat, lr) -> (TrainState, stats)
    update_mu: Any  # (TrainState, lr) -> (TrainState, stats)
    q_value: Any  # (q params, normalised obs, action) -> Q(s,a) in value space
    iteration: Any  # TrainState -> (TrainState, metrics)
    evaluate: Any  # (TrainState, key) -> returns of eval_episodes episodes of pi
    train_chunk: Any  # (TrainState, num_active) -> (TrainState, metrics of the chunk)
    iters_per_chunk: int
    num_iterations: int
    actor: nn.Module
    critic: nn.Module
    q_net: nn.Module
    q_hat_net: nn.Module


LAST_VALUE_METRICS = ("r_max", "r_min", "r_hat_max")  # reported as of the end of an interval


def make_train(args: Args, env: envs.Env) -> Trainer:
    spec = env.action_spec
    batch_size = args.num_envs * args.num_steps
    num_minibatches = batch_size // args.minibatch_size
    num_iterations = args.total_timesteps // batch_size
    iters_per_chunk = max(1, min(args.eval_every // batch_size, num_iterations))
    actor = Actor(spec, args.hidden_sizes, args.actor_activation, args.kernel_init, args.log_std_init)
    critic = Critic(args.hidden_sizes, args.critic_activation, args.kernel_init)
    q_args = (spec, args.q_hidden_sizes, args.critic_activation, args.q_kernel_init,
              args.q_layer_norm, args.q_zero_init)
    q_net, q_hat_net = QNet(*q_args, positive=False), QNet(*q_args, positive=True)
    nets = {"q": q_net, "q_hat": q_hat_net}
    # Every network: Adam with global-norm clipping; the learning rate is applied in `apply`, so
    # every schedule decays with training progress (the reference decays each by its own step
    # count, so mu's and the Q heads' rates reach zero long before the end).
    tx = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.scale_by_adam(eps=args.adam_eps))

    def apply(params, opt_state, grads, lr):
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state

    def norm(state, obs):
        return envs.normalize_obs(state.obs_rms, obs) if args.normalize_obs else obs

    def net_out(name, params, obs, action):
        """Q (q_hat) network output at (s, a): the value, or its symlog with symlog_targets."""
        if spec.discrete:
            return jnp.take_along_axis(nets[name].apply(params, obs), action[..., None], -1).squeeze(-1)
        return nets[name].apply(params, obs, action)

    def to_value(out):
        return symexp(out) if args.symlog_targets else out

    def q_value(params, obs, action):
        return to_value(net_out("q", params, obs, action))

    def init(key):
        k_pi, k_v, k_q, k_qh, k_env, k_train = jax.random.split(key, 6)
        dummy_obs, dummy_action = jnp.zeros(env.obs_shape), (None if spec.discrete else jnp.zeros(spec.n))
        pi = actor.init(k_pi, dummy_obs)
        q, q_hat = q_net.init(k_q, dummy_obs, dummy_action), q_hat_net.init(k_qh, dummy_obs, dummy_action)
        params = dict(pi=pi, mu=pi, v=critic.init(k_v, dummy_obs), q=q, q_target=q, q_hat=q_hat, q_hat_target=q_hat)
        opt_state = dict(ppo=tx.init({"pi": pi, "v": params["v"]}), q=tx.init(q), q_hat=tx.init(q_hat), mu=tx.init(pi))
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, args.num_envs))
        inf = jnp.float32(jnp.inf)
        return TrainState(params, opt_state, replay_init(args.replay_size, env.obs_shape, spec), env_state,
                          obs, envs.rms_init(env.obs_shape), envs.reward_scaler_init(args.num_envs), k_train,
                          jnp.int32(0), -inf, inf, -inf)

    # 1. Rollout with mu, then 2. V-trace returns and advantages ---------------------------------
    def rollout(state):
        p = state.params

        def step(carry, t):
            env_state, obs, scaler, noise, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            obs_n = norm(state, obs)
            mu_dist, pi_dist = actor.apply(p["mu"], obs_n), actor.apply(p["pi"], obs_n)
            if args.noise_hold_steps > 1:  # one noise draw per environment, held for noise_hold_steps steps
                noise = jnp.where(t % args.noise_hold_steps == 0, jax.random.normal(k_act, noise.shape), noise)
                action = mu_dist[0] + jnp.exp(mu_dist[1]) * noise
            else:
                action = sample(spec, mu_dist, k_act)
            value = critic.apply(p["v"], obs_n)
            ts = jax.vmap(env.step)(jax.random.split(k_env, args.num_envs), env_state, action)
            done = ts.terminated | ts.truncated
            reward = ts.reward
            scaler, discounted_return = envs.track_returns(scaler, reward, done, args.gamma)
            if args.normalize_reward:
                reward = envs.scale_reward(scaler, reward)
            # A truncated episode did not end: bootstrap it from the TRUE final observation.
            final_value = critic.apply(p["v"], norm(state, ts.final_obs))
            transition = Transition(obs, action, log_prob(spec, mu_dist, action), log_prob(spec, pi_dist, action),
                           value, reward + args.gamma * ts.truncated * final_value, done.astype(jnp.float32),
                           reward, ts.truncated.astype(jnp.float32), ts.final_obs)
            episodes = (done, ts.episode_return, ts.episode_length, discounted_return)
            return (ts.state, ts.obs, scaler, noise, key), (transition, episodes)

        noise = jnp.zeros((args.num_envs, spec.n))
        (env_state, obs, scaler, _, key), (traj, episodes) = jax.lax.scan(
            step, (state.env_state, state.obs, state.reward_scaler, noise, state.key), jnp.arange(args.num_steps))
        last_value = critic.apply(p["v"], norm(state, obs))
        estimates = vtrace(traj.reward, traj.value, traj.done, last_value, traj.log_pi, traj.log_mu,
                           args.gamma, args.gae_lambda, args.clip_rho, args.clip_c)
        flat = lambda x: x.reshape((batch_size,) + x.shape[2:])
        replay = replay_add(state.replay, Replay(
            flat(traj.obs), flat(traj.action), flat(traj.env_reward), flat(traj.done), flat(traj.truncated),
            flat(traj.final_obs), flat(traj.log_mu), None, None))
        state = state._replace(
            env_state=env_state, obs=obs, reward_scaler=scaler, key=key, replay=replay,
            r_max=jnp.maximum(state.r_max, traj.env_reward.max()),
            r_min=jnp.minimum(state.r_min, traj.env_reward.min()))
        return state, traj, estimates, episodes

    # 3. PPO update of pi and V ------------------------------------------------------------------
    def ppo_update(state, batch, lr):
        progress = state.iteration / num_iterations
        clip_coef = args.clip_coef * (1.0 - progress) if args.anneal_clip else args.clip_coef
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)
        grad_fn = jax.grad(ppo_loss, has_aux=True)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            grads, stats = grad_fn(params, actor.apply, critic.apply, spec, mb, clip_coef, args)
            params, opt_state = apply(params, opt_state, grads, lr)
            return (params, opt_state), stats

        def epoch(carry, key):
            perm = jax.random.permutation(key, batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, mbs)

        key, k_perm = jax.random.split(state.key)
        pi_v = {"pi": state.params["pi"], "v": state.params["v"]}
        (pi_v, opt), stats = jax.lax.scan(epoch, (pi_v, state.opt_state["ppo"]),
                                          jax.random.split(k_perm, args.num_epochs))
        stats = jax.tree.map(jnp.mean, stats)
        stats["clip_coef"] = jnp.float32(clip_coef)
        return state._replace(params={**state.params, **pi_v}, opt_state={**state.opt_state, "ppo": opt},
                              key=key), stats

    # 4. and 6. Fitted Q evaluation of pi on the replay buffer -------------------------------------
    def fit(state, name, reward, discount, r_lo, r_hi, lr):
        """FQE of Q (name "q") or q_hat ("q_hat") for the current pi:
            y = reward + discount * (1 - terminal + truncated) * E_{a' ~ pi(.|s')} Q'(s', a'),
        (discrete: the exact expectation; continuous: one sample a') regressed by Q(s, a), with
        Q' the target network (symlog_targets: y from the online network, regressed in symlog
        space, plus symlog_reg_coef * (Q - Q')^2); weight_td weights each TD error by
        clip(pi/mu, 0.1, 10) normalised to mean 1; clip_targets clips y to the range of any
        discounted return, [min(r_lo, 0), max(r_hi, 0)] / (1 - discount). (The reference clips to
        [r_lo, r_hi] / (1 - discount), which assumes episodes never end: with rewards >= r_lo > 0,
        as in CartPole, it lifts every target to r_lo / (1 - discount) and flattens Q.)"""
        rb, p = state.replay, state.params
        key, k_next, k_mb = jax.random.split(state.key, 3)
        obs, next_obs = norm(state, rb.obs), norm(state, rb.next_obs)
        pi_next = actor.apply(p["pi"], next_obs)
        a_next = None if spec.discrete else sample(spec, pi_next, k_next)  # fixed for the phase
        mask = 1.0 - rb.terminal + rb.truncated
        w_td = jnp.clip(jnp.exp(log_prob(spec, actor.apply(p["pi"], obs), rb.action) - rb.log_mu), 0.1, 10.0)
        lo, hi = jnp.minimum(r_lo, 0.0) / (1.0 - discount), jnp.maximum(r_hi, 0.0) / (1.0 - discount)

        def next_value(params, idx):
            if spec.discrete:
                q_next = to_value(nets[name].apply(params, next_obs[idx]))
                return jnp.sum(jax.nn.softmax(pi_next[idx]) * q_next, -1)
            return to_value(nets[name].apply(params, next_obs[idx], a_next[idx]))

        def minibatch_step(carry, x):
            params, target, opt_state = carry
            idx, w = x
            y = reward[idx] + discount * mask[idx] * next_value(params if args.symlog_targets else target, idx)
            clipped = jnp.sum(w * ((y < lo) | (y > hi))) / jnp.sum(w)
            y = jax.lax.stop_gradient(jnp.clip(y, lo, hi) if args.clip_targets else y)
            weight = w
            if args.weight_td:
                weight = w * w_td[idx] / (jnp.sum(w * w_td[idx]) / jnp.sum(w))

            def loss_fn(params):
                out = net_out(name, params, obs[idx], rb.action[idx])
                if not args.symlog_targets:
                    return jnp.sum(weight * (out - y) ** 2) / jnp.sum(w)
                reg = (out - jax.lax.stop_gradient(net_out(name, target, obs[idx], rb.action[idx]))) ** 2
                return (jnp.sum(weight * (out - symlog(y)) ** 2) + args.symlog_reg_coef * jnp.sum(w * reg)) / jnp.sum(w)

            loss, grads = jax.value_and_grad(loss_fn)(params)
            params, opt_state = apply(params, opt_state, grads, lr)
            if args.polyak_tau > 0:
                target = optax.incremental_update(params, target, args.polyak_tau)
            return (params, target, opt_state), jnp.stack([loss, clipped, 1.0])

        def maybe_step(carry, x):  # minibatches holding no filled slot do nothing
            skip = lambda c, x: (c, jnp.zeros(3))
            return jax.lax.cond(jnp.sum(x[1]) > 0, minibatch_step, skip, carry, x)

        mbs = replay_minibatches(k_mb, rb.size, args.replay_size, args.fqe_minibatch_size, args.fqe_epochs)
        carry = (p[name], p[name + "_target"], state.opt_state[name])
        (params, target, opt), out = jax.lax.scan(maybe_step, carry, mbs)
        if args.polyak_tau == 0:
            target = params  # hard copy at the end of the phase
        steps = jnp.maximum(out[:, 2].sum(), 1.0)
        valid = jnp.arange(args.replay_size) < rb.size
        value = to_value(net_out(name, params, obs, rb.action))
        stats = {f"{name}_loss": out[:, 0].sum() / steps, f"{name}_target_clip_frac": out[:, 1].sum() / steps,
                 f"{name}_mean": jnp.sum(valid * value) / rb.size}
        state = state._replace(params={**p, name: params, name + "_target": target},
                               opt_state={**state.opt_state, name: opt}, key=key)
        return state, stats

    def fit_q(state, lr):
        return fit(state, "q", state.replay.reward, args.gamma, state.r_min, state.r_max, lr)

    # 5. Variance rewards ------------------------------------------------------------------------
    def variance_rewards(state):
        rb = state.replay
        return variance_reward(rb.reward, q_value(state.params["q"], norm(state, rb.obs), rb.action))

    def fit_q_hat(state, r_hat, lr):
        valid = jnp.arange(args.replay_size) < state.replay.size
        state = state._replace(r_hat_max=jnp.maximum(state.r_hat_max, jnp.max(jnp.where(valid, r_hat, -jnp.inf))))
        state, stats = fit(state, "q_hat", r_hat, args.gamma**2, 1e-8, state.r_hat_max, lr)
        stats["r_hat_mean"] = jnp.sum(valid * r_hat) / state.replay.size
        return state, stats

    # 7. Behaviour update of mu towards pi sqrt(q_hat) ----------------------------------------------
    def update_mu(state, lr):
        rb, p = state.replay, state.params
        key, k_mb, k_a = jax.random.split(state.key, 3)
        obs = norm(state, rb.obs)
        hi = state.r_hat_max / (1.0 - args.gamma**2)

        def q_hat_value(o, a=None):
            q = to_value(q_hat_net.apply(p["q_hat"], o, a))
            return jnp.clip(q, 1e-6, hi) if args.clip_targets else jnp.maximum(q, 1e-6)

        def loss_fn(mu, idx, w, k):
            o = obs[idx]
            mu_dist, pi_dist = actor.apply(mu, o), actor.apply(p["pi"], o)
            if spec.discrete:
                per_state = mu_loss_discrete(mu_dist, jax.nn.log_softmax(pi_dist), q_hat_value(o), args.ent_coef)
            else:
                per_state = mu_loss_continuous(spec, mu_dist, pi_dist, lambda a: q_hat_value(o, a), k,
                                               args.ent_coef, args.mu_policy_loss == "kl_qhat")
            return jnp.sum(w * per_state) / jnp.sum(w)

        def minibatch_step(carry, x):
            mu, opt_state = carry
            idx, w, k = x
            loss, grads = jax.value_and_grad(loss_fn)(mu, idx, w, k)
            mu, opt_state = apply(mu, opt_state, grads, lr)
            return (mu, opt_state), jnp.stack([loss, 1.0])

        def maybe_step(carry, x):
            return jax.lax.cond(jnp.sum(x[1]) > 0, minibatch_step, lambda c, x: (c, jnp.zeros(2)), carry, x)

        idx, w = replay_minibatches(k_mb, rb.size, args.replay_size, args.mu_minibatch_size, args.mu_epochs)
        (mu, opt), out = jax.lax.scan(maybe_step, (p["mu"], state.opt_state["mu"]),
                                      (idx, w, jax.random.split(k_a, idx.shape[0])))
        stats = {"mu_loss": out[:, 0].sum() / jnp.maximum(out[:, 1].sum(), 1.0)}
        return state._replace(params={**p, "mu": mu}, opt_state={**state.opt_state, "mu": opt}, key=key), stats

    # One iteration: steps 1-7 -------------------------------------------------------------------
    def iteration(state):
        lr = args.learning_rate * (1.0 - state.iteration / num_iterations) if args.anneal_lr else args.learning_rate
        state, traj, (vs, adv, rho, clipped), (done, ep_return, ep_length, discounted_return) = rollout(state)
        if args.weight_on_adv:
            batch = Batch(norm(state, traj.obs), traj.action, traj.log_pi, adv * rho, vs)
        else:
            batch = Batch(norm(state, traj.obs), traj.action, traj.log_mu, adv, vs)
        state, stats = ppo_update(state, batch, lr)
        state, q_stats = fit_q(state, lr)
        state, q_hat_stats = fit_q_hat(state, variance_rewards(state), lr)
        state, mu_stats = update_mu(state, lr)
        # Statistics for the next rollout, from this one's observations and returns.
        obs_rms, scaler = state.obs_rms, state.reward_scaler
        if args.normalize_obs:
            obs_rms = envs.rms_update(obs_rms, traj.obs)
        if args.normalize_reward:
            scaler = scaler._replace(rms=envs.rms_update(scaler.rms, discounted_return))
        state = state._replace(obs_rms=obs_rms, reward_scaler=scaler, iteration=state.iteration + 1)
        # Importance-weight diagnostics of the rollout (ratio = pi/mu as of collection).
        ratio = jnp.exp(traj.log_pi - traj.log_mu)
        residual = vs - traj.value
        stats.update(
            **q_stats, **q_hat_stats, **mu_stats, **clipped,
            learning_rate=jnp.float32(lr),
            explained_variance=1.0 - residual.var() / (vs.var() + 1e-8),
            ratio_mean=ratio.mean(), ratio_max=ratio.max(),
            kl_mu_pi=jnp.mean(traj.log_mu - traj.log_pi),  # E_mu[log mu - log pi] = KL(mu || pi)
            ess=ratio.sum() ** 2 / (ratio.size * jnp.sum(ratio**2)),  # effective sample size / n
            r_max=state.r_max, r_min=state.r_min, r_hat_max=state.r_hat_max,
            episodes=done.sum(), return_sum=jnp.sum(done * ep_return), length_sum=jnp.sum(done * ep_length),
        )
        return state, stats

    def evaluate(state, key):
        """eval_episodes full episodes of the deterministic policy (mode of pi, never mu) on
        separate environments, with the training's observation statistics frozen."""
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
                   if k not in ("return_sum", "length_sum") + LAST_VALUE_METRICS}
        metrics.update({k: stats[k][num_active - 1] for k in LAST_VALUE_METRICS})
        metrics["train_return"] = jnp.where(n_ep > 0, stats["return_sum"].sum() / n_ep, jnp.nan)
        metrics["train_length"] = jnp.where(n_ep > 0, stats["length_sum"].sum() / n_ep, jnp.nan)
        key, k_eval = jax.random.split(state.key)
        returns = evaluate(state, k_eval)
        metrics.update(eval_return=returns.mean(), eval_return_std=returns.std())
        return state._replace(key=key), metrics

    return Trainer(init, rollout, ppo_update, fit_q, variance_rewards, fit_q_hat, update_mu, q_value,
                   iteration, evaluate, train_chunk, iters_per_chunk, num_iterations, actor, critic,
                   q_net, q_hat_net)


# ----------------------------------------------------------------------------------------------
# Running, outputs
# ----------------------------------------------------------------------------------------------
METRIC_COLUMNS = ("seed", "env_steps", "train_return", "train_length", "eval_return", "eval_return_std",
                  "pg_loss", "v_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
                  "learning_rate", "clip_coef",
                  # BPO diagnostics: importance weights pi/mu of the rollout, the FQE and mu phases
                  "ratio_mean", "ratio_max", "rho_clip_frac", "c_clip_frac", "kl_mu_pi", "ess",
                  "q_loss", "q_hat_loss", "mu_loss", "q_mean", "q_hat_mean", "r_hat_mean",
                  "q_target_clip_frac", "q_hat_target_clip_frac", "r_max", "r_min", "r_hat_max")


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


def run(args: Args, algo: str = "bpo") -> dict:
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
