"""PPO (Schulman et al. 2017): the baseline that BPO (bpo.py, bpo_traj.py) is measured against.

One iteration (docs/algorithm.md numbers the equations cited below):

  1. rollout: num_steps steps of num_envs environments with pi; a time-limit truncation
     bootstraps its reward from V of the TRUE final observation (eq. 4)
  2. gae: advantages A_t and value targets A_t + V_t by GAE(lambda) (eq. 5, 6)
  3. ppo_update: num_epochs passes of shuffled minibatches over the clipped surrogate, value
     regression and entropy bonus (eq. 12)

The whole of training (environment steps, GAE, every epoch and minibatch) runs inside
`jax.lax.scan` under `jit`, and `--num-seeds N` runs N independent seeds with `vmap` in one
program; runner.py drives it from the host in intervals of `--eval-every` environment steps.

    python ppo.py                                         # CartPole-v1, 4 seeds, about 30 s on a CPU
    python ppo.py --env-id ant --num-seeds 16 --preset mujoco_ppo
    python ppo.py --preset cartpole_ppo --learning-rate 3e-4   # a preset, overridden field by field
"""

from __future__ import annotations

import runner  # isort: skip (first: a Ctrl-C during the imports below is one line, not a traceback)

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import envs
import torsos
import training

runner.configure_jax()  # jax's CPU compilation options (runner.py); no effect on other platforms


# ----------------------------------------------------------------------------------------------
# Networks: separate actor (pi) and critic (V) MLPs, fed by a torso (torsos.py: --torso)
# ----------------------------------------------------------------------------------------------
def dense(features: int, kernel_init: str, scale: float) -> nn.Dense:
    init = nn.initializers.orthogonal(scale) if kernel_init == "orthogonal" else nn.initializers.lecun_normal()
    return nn.Dense(features, kernel_init=init, bias_init=nn.initializers.zeros)


class MLP(nn.Module):
    hidden_sizes: tuple[int, ...]
    out: int
    activation: str
    kernel_init: str
    out_scale: float

    @nn.compact
    def __call__(self, x):
        act = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish}[self.activation]
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
# Estimator: GAE(lambda)
# ----------------------------------------------------------------------------------------------
def gae(rewards, values, dones, last_value, gamma, lam):
    """GAE(lambda) over a [T, E] rollout, backwards in time (docs/algorithm.md eq. 5, 6):
        delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t
        A_t     = delta_t + gamma (1 - d_t) lambda A_{t+1}
    and the lambda-returns A_t + V_t (the value targets). d_t = 1 where step t ends an episode
    (terminated or truncated; a truncation's bootstrap is already inside r_t, eq. 4)."""
    next_values = jnp.concatenate([values[1:], last_value[None]], 0)
    deltas = rewards + gamma * (1.0 - dones) * next_values - values

    def backward(adv_next, x):
        delta, done = x
        adv = delta + gamma * (1.0 - done) * lam * adv_next
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, dones), reverse=True)
    return advantages, advantages + values


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------
def ppo_loss(params, apply_actor, apply_critic, spec, batch, clip_coef, args):
    """Clipped surrogate (Schulman et al. 2017, eq. 7), value regression, entropy bonus
    (docs/algorithm.md eq. 12). With clip_vloss the value loss is PureJaxRL's and CleanRL's
    max((V - target)^2, (V_old + clip(V - V_old, -eps, eps) - target)^2)."""
    dist = apply_actor(params["pi"], batch.obs)
    log_ratio = log_prob(spec, dist, batch.action) - batch.log_old
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    # jnp.where, not if, for the flags a sweep may vary (traced values; see runner.py --sweep)
    adv = jnp.where(args.norm_adv, (adv - adv.mean()) / (adv.std() + 1e-8), adv)
    pg_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef) * adv).mean()
    value = apply_critic(params["v"], batch.obs)
    v_err = (value - batch.return_target) ** 2
    v_clipped = batch.value + jnp.clip(value - batch.value, -clip_coef, clip_coef)
    v_err = jnp.where(args.clip_vloss, jnp.maximum(v_err, (v_clipped - batch.return_target) ** 2), v_err)
    v_loss = v_err.mean()
    ent = entropy(spec, dist).mean()
    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * ent
    stats = dict(
        pg_loss=pg_loss,
        v_loss=v_loss,
        entropy=ent,
        approx_kl=jnp.mean(ratio - 1 - log_ratio),  # Schulman's k3 estimator of KL(old || new)
        clip_frac=jnp.mean(jnp.abs(ratio - 1) > clip_coef),
    )
    return loss, stats


# ----------------------------------------------------------------------------------------------
# Training: one seed; runner.py vmaps it over seeds
# ----------------------------------------------------------------------------------------------
class Step(NamedTuple):  # what the rollout records at each step
    obs: jax.Array  # raw observation (normalised on use with the rollout's frozen statistics)
    action: jax.Array
    log_pi: jax.Array  # log pi(a|s)
    reward: jax.Array  # the (scaled) environment reward
    done: jax.Array  # 1 where the step ends an episode (terminated or truncated)
    truncated: jax.Array  # 1 where it ends by the time limit
    final_obs: jax.Array  # the true next observation (before any reset)


class Transition(NamedTuple):  # a rollout, [T, E], as the estimator reads it
    obs: jax.Array
    action: jax.Array
    log_pi: jax.Array  # log pi(a|s), as of collection
    value: jax.Array  # V(s), as of collection
    reward: jax.Array  # scaled reward, plus gamma * V(final obs) at a truncation
    done: jax.Array


class Batch(NamedTuple):  # what the PPO update reads
    obs: jax.Array  # normalised (the loss applies the torso)
    action: jax.Array
    log_old: jax.Array  # log pi as of collection
    value: jax.Array  # V as of collection (for clip_vloss)
    advantage: jax.Array
    return_target: jax.Array


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
    iteration: Any  # TrainState -> (TrainState, metrics)
    rollout: Any  # TrainState -> (TrainState, Transition [T, E], episode stats)
    train_interval: Any  # (TrainState, num_active) -> (TrainState, metrics of the interval)
    iters_per_interval: int
    num_iterations: int
    actor: nn.Module
    critic: nn.Module
    torso: torsos.Torso  # what turns observations into the heads' input (features)


def make_train(args: Args, env: envs.Env) -> Trainer:
    spec = env.action_spec
    batch_size = args.num_envs * args.num_steps
    num_minibatches = batch_size // args.minibatch_size
    num_iterations = args.total_timesteps // batch_size
    iters_per_interval = max(1, min(args.eval_every // batch_size, num_iterations))
    # --torso: mlp (the observation flattened), or a CNN shared by pi and V or one in each (torsos.py)
    torso = torsos.make(args.torso, args.torso_shared, env.obs_shape, args.kernel_init)
    actor = torso.network(Actor(spec, args.hidden_sizes, args.actor_activation, args.kernel_init, args.log_std_init))
    critic = torso.network(
        Critic(args.critic_hidden_sizes or args.hidden_sizes, args.critic_activation, args.kernel_init)
    )
    # Adam with global-norm clipping; with anneal_lr the rate decays linearly to 0 per optimizer
    # step over minibatches x epochs x iterations (as the reference's linear_schedule).
    decayed_lr = optax.linear_schedule(args.learning_rate, 0.0, num_iterations * args.num_epochs * num_minibatches)
    learning_rate = lambda count: jnp.where(args.anneal_lr, decayed_lr(count), args.learning_rate)  # noqa: E731
    tx = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.adam(learning_rate, eps=args.adam_eps))

    def normalize(state, obs):
        return envs.normalize_obs(state.obs_rms, obs) if args.normalize_obs else obs

    def inputs(state, obs):
        """What pi's and V's networks read at raw observations: normalised, then the torso's features."""
        return torso.features(state.params, normalize(state, obs))

    def init(key):
        k_pi, k_v, k_env, k_train = jax.random.split(key, 4)
        shared = torso.init(jax.random.fold_in(key, 2), env.obs_shape)  # {"torso": ...} or {}
        dummy = torso.features(shared, jnp.zeros(env.obs_shape))
        params = {"pi": actor.init(k_pi, dummy), "v": critic.init(k_v, dummy), **shared}
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, args.num_envs))
        return TrainState(
            params,
            tx.init(params),
            env_state,
            obs,
            envs.rms_init(env.obs_shape),
            envs.reward_scaler_init(args.num_envs),
            k_train,
            jnp.int32(0),
        )

    # One iteration: steps 1-3 -------------------------------------------------------------------
    def iteration(state):
        lr_now = learning_rate(state.iteration * args.num_epochs * num_minibatches)
        state, traj, (done, ep_return, ep_length, discounted_return) = rollout(state)  # 1.
        last_value = critic.apply(state.params["v"], inputs(state, state.obs))
        adv, target = gae(traj.reward, traj.value, traj.done, last_value, args.gamma, args.gae_lambda)  # 2.
        batch = Batch(normalize(state, traj.obs), traj.action, traj.log_pi, traj.value, adv, target)
        state, stats = ppo_update(state, batch)  # 3.
        # Statistics for the next rollout, from this one's observations and returns.
        obs_rms, scaler = state.obs_rms, state.reward_scaler
        if args.normalize_obs:
            obs_rms = envs.rms_update(obs_rms, traj.obs)
        if args.normalize_reward:
            scaler = scaler._replace(rms=envs.rms_update(scaler.rms, discounted_return))
        state = state._replace(obs_rms=obs_rms, reward_scaler=scaler, iteration=state.iteration + 1)
        residual = target - traj.value
        stats.update(
            learning_rate=lr_now,
            explained_variance=1.0 - residual.var() / (target.var() + 1e-8),
            episodes=done.sum(),
            return_sum=jnp.sum(done * ep_return),
            length_sum=jnp.sum(done * ep_length),
        )
        if args.verbose >= 2:  # the rollout's steps, and how far the update moved pi on them: pi_new / pi_old
            pi_new = actor.apply(state.params["pi"], torso.features(state.params, batch.obs))
            log_ratio = log_prob(spec, pi_new, traj.action) - traj.log_pi
            stats.update(training.step_statistics(traj.reward, traj.value, target, adv))
            stats.update(
                hist_advantage=training.histogram(adv), hist_update_ratio=training.histogram(log_ratio, log=True)
            )
        return state, training.at_verbosity(stats, args.verbose)  # --verbose 0: the rest is never computed

    # 1. Rollout with pi --------------------------------------------------------------------------
    def rollout(state):
        """num_steps steps of num_envs environments with the current policy; normalisation
        statistics stay frozen here and are updated from the rollout afterwards."""

        def step(carry, t):
            env_state, obs, scaler, noise, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            dist = actor.apply(state.params["pi"], inputs(state, obs))
            if args.noise_hold_steps > 1:  # one noise draw per environment, held for noise_hold_steps steps (eq. 16)
                noise = jnp.where(t % args.noise_hold_steps == 0, jax.random.normal(k_act, noise.shape), noise)
                action = dist[0] + jnp.exp(dist[1]) * noise
            else:
                action = sample(spec, dist, k_act)
            ts = jax.vmap(env.step)(jax.random.split(k_env, args.num_envs), env_state, action)
            done = ts.terminated | ts.truncated
            reward = ts.reward
            reward = reward * args.reward_scale  # Brax's reward_scaling; evaluation returns stay unscaled
            scaler, discounted_return = envs.track_returns(scaler, reward, done, args.gamma)
            if args.normalize_reward:
                reward = envs.scale_reward(scaler, reward)
            recorded = Step(
                obs, action, log_prob(spec, dist, action), reward, done.astype(jnp.float32), ts.truncated, ts.final_obs
            )
            episodes = (done, ts.episode_return, ts.episode_length, discounted_return)
            return (ts.state, ts.obs, scaler, noise, key), (recorded, episodes)

        noise = jnp.zeros((args.num_envs, spec.n))
        (env_state, obs, scaler, _, key), (steps, episodes) = jax.lax.scan(
            step, (state.env_state, state.obs, state.reward_scaler, noise, state.key), jnp.arange(args.num_steps)
        )
        # V is fixed during the rollout, so it is applied once to all [T, E] observations after it
        # (a batched pass, not one per step). A truncated episode did not end: its reward bootstraps
        # from V of the TRUE final observation (eq. 4).
        v = state.params["v"]
        bootstrap = args.gamma * steps.truncated * critic.apply(v, inputs(state, steps.final_obs))
        traj = Transition(
            obs=steps.obs,
            action=steps.action,
            log_pi=steps.log_pi,
            value=critic.apply(v, inputs(state, steps.obs)),
            reward=steps.reward + bootstrap,
            done=steps.done,
        )
        state = state._replace(env_state=env_state, obs=obs, reward_scaler=scaler, key=key)
        return state, traj, episodes

    # 3. PPO update of pi and V -------------------------------------------------------------------
    def ppo_update(state, batch):
        """num_epochs passes over the batch in shuffled minibatches."""
        progress = state.iteration / num_iterations
        clip_coef = jnp.where(args.anneal_clip, args.clip_coef * (1.0 - progress), args.clip_coef)
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)

        def loss(params, mb):  # the torso inside the differentiated loss: a shared one learns from pi's and V's
            mb = mb._replace(obs=torso.features(params, mb.obs))
            return ppo_loss(params, actor.apply, critic.apply, spec, mb, clip_coef, args)

        grad_fn = jax.grad(loss, has_aux=True)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            grads, stats = grad_fn(params, mb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry, key):
            perm = training.permutation(key, batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, mbs)

        key, k_perm = jax.random.split(state.key)
        (params, opt_state), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(k_perm, args.num_epochs)
        )
        stats = jax.tree.map(jnp.mean, stats)
        stats["clip_coef"] = jnp.float32(clip_coef)
        return state._replace(params=params, opt_state=opt_state, key=key), stats

    # The evaluation interval: iterations, then one evaluation of pi -------------------------------
    def train_interval(state, num_active):
        """iters_per_interval iterations (only the first num_active run: the last interval may be
        shorter, with no recompilation), then eval_episodes episodes of the mode of pi. Metrics are
        means over the interval (training.interval_metrics)."""
        skip = training.skip_iteration(iteration, state)
        state, stats = jax.lax.scan(
            lambda s, i: jax.lax.cond(i < num_active, iteration, skip, s), state, jnp.arange(iters_per_interval)
        )
        metrics = training.interval_metrics(stats, num_active)
        key, k_eval = jax.random.split(state.key)
        act = lambda obs: mode(spec, actor.apply(state.params["pi"], inputs(state, obs)))  # noqa: E731
        returns = training.evaluate(env, act, args.eval_episodes, k_eval)
        # eval_key: the evaluation's key, which params.msgpack keeps so that evaluate.py repeats it
        metrics.update(eval_return=returns.mean(), eval_return_std=returns.std(), eval_key=k_eval)
        return state._replace(key=key), metrics

    return Trainer(init, iteration, rollout, train_interval, iters_per_interval, num_iterations, actor, critic, torso)


METRIC_COLUMNS = (
    "seed",
    "env_steps",
    "train_return",
    "train_length",
    "eval_return",
    "eval_return_std",
    "pg_loss",
    "v_loss",
    "entropy",
    "approx_kl",
    "clip_frac",
    "explained_variance",
    "learning_rate",
    "clip_coef",
)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Args(runner.RunArgs):
    """PPO's hyperparameters; the run's own flags (env id, seeds, outputs, ...) are runner.RunArgs.
    The defaults are the BPO reference's `cartpole_ppo` settings run for 500k steps."""

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
    """decay the learning rate linearly to 0 over training, per optimizer step"""
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
    clip_vloss: bool = False
    """clip the value loss as PureJaxRL and CleanRL do: max((V - R)^2, (V_old + clip(V - V_old, +-clip_coef) - R)^2)"""
    norm_adv: bool = True
    """normalise advantages within each minibatch"""
    ent_coef: float = 0.0
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient (the loss is vf_coef * mean((V - return)^2))"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of the actor (and of the critic, unless critic_hidden_sizes is given)"""
    critic_hidden_sizes: tuple[int, ...] = ()
    """hidden layer widths of V; empty: the same as hidden_sizes"""
    actor_activation: Literal["tanh", "relu", "swish"] = "tanh"
    """activation of the actor's hidden layers"""
    critic_activation: Literal["tanh", "relu", "swish"] = "tanh"
    """activation of the critic's hidden layers"""
    kernel_init: Literal["orthogonal", "lecun_normal"] = "lecun_normal"
    """weight init: orthogonal (gain sqrt 2; 0.01 actor head, 1 critic head) or lecun_normal; a CNN torso's too"""
    torso: Literal["mlp", "minatar-cnn", "nature-cnn", "auto"] = "mlp"
    """what turns an observation into the MLP heads' input (torsos.py): mlp, the observation flattened;
    minatar-cnn, MinAtar's convolution (16 filters 3x3, stride 1); nature-cnn, the BPO reference's
    featurizer (Nature-DQN's 3 convolutions, images of at least 36x36); auto, the convolutional one for
    image observations (MinAtar: minatar-cnn), mlp for vectors"""
    torso_shared: bool = True
    """with a CNN torso: one CNN feeds pi and V, trained by the PPO loss of both (the BPO reference's
    featurizer); --no-torso-shared: each network has its own"""
    noise_hold_steps: int = 0
    """hold each Gaussian exploration noise draw for this many rollout steps, per environment (the
    reference's use_sde with sde_sample_freq); 0 or 1 draws new noise every step"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian policy (continuous actions)"""
    normalize_obs: bool = False
    """normalise observations with running statistics (per seed, frozen during evaluation)"""
    reward_scale: float = 1.0
    """multiply every environment reward by this before anything uses it (Brax's reward_scaling)"""
    normalize_reward: bool = False
    """scale rewards by the running std of the discounted return"""
    clip_actions: bool = True
    """clip continuous actions to the action bounds before they reach the environment"""
    max_episode_steps: int = 0
    """episode time limit; 0 uses the environment's own (gymnax's, or 1000 for Brax)"""


# fmt: off
# Presets: names -> field values, applied in order; where each value comes from: docs/presets.md.
PRESETS: dict[str, dict[str, Any]] = {
    # PureJaxRL's CartPole settings and algorithm
    "purejaxrl_cartpole": dict(
        env_id="CartPole-v1", total_timesteps=500_000, num_envs=4, num_steps=128, num_epochs=4,
        minibatch_size=128, learning_rate=2.5e-4, anneal_lr=True, anneal_clip=False, ent_coef=0.01,
        vf_coef=0.25, clip_vloss=True,
        gamma=0.99, gae_lambda=0.95, clip_coef=0.2, hidden_sizes=(64, 64),
        actor_activation="tanh", critic_activation="tanh", kernel_init="orthogonal",
        normalize_obs=False,
    ),
    # The BPO reference code's PPO settings
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
        normalize_obs=False,  # as the reference
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
    # MuJoCo Playground's DM Control Suite PPO settings (what they are and how they differ: docs/presets.md)
    "playground_dm_control": dict(
        total_timesteps=60_000_000, num_envs=2048, num_steps=480, minibatch_size=30_720, num_epochs=16,
        learning_rate=1e-3, anneal_lr=False, adam_eps=1e-8, max_grad_norm=float("inf"), gamma=0.995,
        gae_lambda=0.95, clip_coef=0.3, anneal_clip=False, clip_vloss=False, norm_adv=True, ent_coef=0.01,
        vf_coef=0.25, hidden_sizes=(32, 32, 32, 32), critic_hidden_sizes=(256, 256, 256, 256, 256),
        actor_activation="swish", critic_activation="swish", kernel_init="lecun_normal",
        use_sde=False, log_std_init=-0.365, reward_scale=10.0, normalize_obs=True,
        normalize_reward=False, clip_actions=True, max_episode_steps=0, eval_every=5 * 983_040,
    ),
    # PureJaxRL's PPO settings for gymnax's MinAtar games (examples/brax_minatar.ipynb), with its
    # clipped value loss; give --env-id (and --torso minatar-cnn to learn from the grids with a CNN)
    "minatar_ppo": dict(
        total_timesteps=10_000_000, num_envs=64, num_steps=128, num_epochs=4, minibatch_size=1024,
        learning_rate=5e-3, anneal_lr=True, adam_eps=1e-5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95,
        clip_coef=0.2, anneal_clip=False, clip_vloss=True, norm_adv=True, ent_coef=0.01, vf_coef=0.25,
        hidden_sizes=(64, 64), critic_hidden_sizes=(), actor_activation="relu", critic_activation="relu",
        kernel_init="orthogonal", normalize_obs=False, eval_every=10 * 8192,
    ),
}
# fmt: on
PRESETS.update(envs.tabular.PRESETS)  # one per tabular id (envs/tabular); a tabular id gets its own

# What a Brax, a Playground or a MinAtar env id gets without --preset
SUITE_PRESETS = {"brax": ["mujoco_ppo"], "playground": ["playground_dm_control"], "minatar": ["minatar_ppo"]}

# The flags --sweep may vary: numbers and switches that change no array shape, no loop count
# and no program structure; the compiled program reads them as (vmapped) inputs.
SWEEPABLE = (
    "learning_rate",
    "anneal_lr",
    "adam_eps",
    "max_grad_norm",
    "gamma",
    "gae_lambda",
    "clip_coef",
    "anneal_clip",
    "clip_vloss",
    "norm_adv",
    "ent_coef",
    "vf_coef",
    "log_std_init",
    "reward_scale",
)


# Flags added after runs of this script were made, and the value such a run behaved as: its
# config.json lacks them, and --resume fills them in (runner.resumed_args).
OLD_RUN_VALUES = dict(torso="mlp", torso_shared=True)


def parse_args(argv: list[str] | None = None) -> Args:
    return runner.parse_args(Args, PRESETS, SUITE_PRESETS, argv, __doc__, OLD_RUN_VALUES)


def validate(args: Args) -> None:
    """runner.py's checks, then the critic's widths and the reward scale."""
    runner.validate(args)
    if args.critic_hidden_sizes and min(args.critic_hidden_sizes) <= 0:
        raise runner.ConfigError(f"--critic-hidden-sizes must be positive widths, got {args.critic_hidden_sizes}")
    runner.check_range(args, "reward_scale", lo=0.0, lo_open=True)


def run(args: Args) -> dict:
    return runner.run(args, "ppo", validate, make_train, runner.verbose_columns(args, METRIC_COLUMNS), SWEEPABLE)


if __name__ == "__main__":
    runner.main(parse_args, run)
