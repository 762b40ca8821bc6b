"""BPO (Goodall, Hamel-De le Court, Belardinelli 2025, arXiv 2511.10843) with trajectory-level
importance clipping: bpo.py with one difference, the return and advantage estimator, which clips
the PRODUCT of importance ratios along a trajectory instead of each ratio (see
`trajectory_clipped_returns`). Everything else is bpo.py's, line for line.

BPO is PPO in which a learned behaviour policy mu, not pi itself, collects the data. For the
per-decision importance-weighted estimate of pi's return, the behaviour policy that minimises its
variance for one decision (the rest of the episode on-policy, q_hat exact) is (docs/algorithm.md
eq. 1-3; section "When can mu lower the variance?")

    mu*(a|s)  ∝  pi(a|s) sqrt(q_hat(s,a)),

where q_hat, the second moment of pi's return, is pi's action value for the "variance reward"
r_hat = r^2 + 2 gamma r V_pi(s') with discount gamma^2 (Liu & Zhang 2024). One iteration:

  1. rollout: mu acts; log mu, log pi and V are stored, and the transitions also go into a FIFO
     replay buffer (a truncation bootstraps from V of the true final observation, eq. 4)
  2. trajectory_clipped_returns: returns vs and advantages with rho = min(pi/mu, clip_rho) and
     the products of ratios along the trajectory clipped at clip_c (eq. 5, 9, 10)
  3. ppo_update: pi and V, with ratio pi_theta / mu (mu's log-prob is the "old" one) (eq. 12)
  4. fit_q: FQE of Q for the updated pi on the replay buffer (eq. 13)
  5. variance_rewards: r_hat = r^2 + 2 gamma r V_pi(s'), V_pi(s') = E_pi Q(s', .) (eq. 2)
  6. fit_q_hat: FQE of q_hat with reward r_hat and discount gamma^2 (eq. 3, 13)
  7. update_mu: mu towards pi sqrt(q_hat) (eq. 14 discrete, 15 continuous)

The behaviour policy (docs/algorithm.md eq. 18-23): --mu-form network (mu a network fitted in
step 7, the default) or closed (mu's logits log pi + (beta/2) log q_hat computed wherever mu is
needed: no mu network, no step 7); --mu-temper beta tempers the tilt, pi q_hat^(beta/2); --mu-mix b
acts with (1 - b) pi + b mu; --mu-target vtrace tilts by (Q - V_pi)^2 + W, W = Var(G | s, a) fitted
by q_hat's head, the behaviour that suits the V-trace target PPO trains on.

With --no-bpo, mu is pi at every rollout and steps 4-7 are skipped: the run is ppo.py's (the
same random numbers, the same metrics up to float rounding; tests/test_no_bpo.py). As in ppo.py,
all of training runs inside `jax.lax.scan` under `jit`, vmapped over seeds; runner.py drives it
from the host.

    python bpo_traj.py                                            # CartPole-v1, 4 seeds
    python bpo_traj.py --preset cartpole_ppo ppo_bpo_zero1.5_traj  # a base preset plus a BPO add-on
    python bpo_traj.py --env-id ant --num-seeds 16                 # Brax on MJX (mujoco_ppo + ppo_bpo_zero1.0_traj)
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
from envs.tabular.exact_jax import policy_tables, probe_exact

runner.configure_jax()  # jax's CPU compilation options (runner.py); no effect on other platforms


# ----------------------------------------------------------------------------------------------
# Networks: pi and mu (same architecture; mu starts as a copy of pi), V, Q and q_hat, fed by a
# torso (torsos.py: --torso)
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
    layer_norm: bool = False
    zero_init_out: bool = False

    @nn.compact
    def __call__(self, x):
        act = {"tanh": nn.tanh, "relu": nn.relu, "swish": nn.swish}[self.activation]
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
    """An action-value head: Q, or q_hat with positive=True (softplus(x) + 1e-6, since q_hat >= 0).
    Discrete: s -> one output per action, the output of `action` when one is given; continuous:
    concat(s, a) -> one output. With symlog_targets the output is symlog of the value."""

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
        out = MLP(
            self.hidden_sizes,
            self.action_spec.n if discrete else 1,
            self.activation,
            self.kernel_init,
            1.0,
            self.layer_norm,
            self.zero_init,
        )(x)
        if not discrete:
            out = out.squeeze(-1)
        elif action is not None:
            out = jnp.take_along_axis(out, action[..., None], -1).squeeze(-1)
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
# Estimator: trajectory-level clipping of the importance-ratio products
# ----------------------------------------------------------------------------------------------
def trajectory_clipped_returns(rewards, values, dones, last_value, log_pi, log_mu, gamma, lam, clip_rho, clip_c):
    """Over a [T, E] rollout collected by mu, with ratio_t = pi(a_t|s_t) / mu(a_t|s_t),
    rho_t = min(ratio_t, clip_rho), delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t (docs/algorithm.md
    eq. 5, 9, 10):

        vs_t  = V_t + rho_t sum_{k=t}^{K} (gamma lambda)^(k-t) min(clip_c, prod_{j=t+1}^{k} ratio_j) delta_k
        adv_t = the same sum without rho_t

    where K is the last step of the episode containing t (its delta included) or of the rollout:
    a return never runs into the next episode. The clipped product does not fold into a backward
    recursion, so each return is summed over its row of (t, k) weights, built in log space:
    prod_{j=t+1}^{k} ratio_j = exp(L_k - L_t), L the cumulative sum of log ratios. With pi = mu and
    clip_c >= 1 every weight is (gamma lambda)^(k-t): GAE(lambda) and the lambda-returns (eq. 11).
    Returns vs, adv, rho and diagnostics: the fraction of ratios above clip_rho, the fraction of
    (t, k) products clipped by clip_c, and the mean effective horizon sum_k of the weights
    (the number of terms when every weight is 1).

    The T x T x E weights are never held at once: rows t are built `chunk` at a time (a lax.map over
    ceil(T / chunk) blocks, each a [chunk, T, E] slice reduced over k before the next), so memory
    grows as chunk x T x E, not T x T x E. chunk = 2**16 // (T E) rows, between 1 and T: a block
    holds about 2**16 weights (256 KB in float32 per intermediate, per seed) whatever the shape:
    8 rows at T = 512, E = 16; 32 at T = 2048, E = 1; one block, as before, for a rollout of at
    most 2**16 (t, k) pairs. The work is the same T x T x E weights; blocks only add loop steps.
    Measured on CPU, vmapped over 16 seeds, the time is flat from 4 to 32 rows per block at both
    shapes and about 3 times as long from 64 rows up, where the blocks outgrow the caches. The
    count of (t, k) pairs in one episode is sum_t (K_t - t + 1), exact, so c_clip_frac's counts
    are the unchunked ones; effective_horizon sums the same weights in another order."""
    T, E = rewards.shape
    log_ratio = log_pi - log_mu
    rho = jnp.minimum(jnp.exp(log_ratio), clip_rho)
    next_values = jnp.concatenate([values[1:], last_value[None]], 0)
    deltas = rewards + gamma * (1.0 - dones) * next_values - values
    L = jnp.cumsum(log_ratio, 0)
    episode = jnp.cumsum(dones, 0) - dones  # steps up to and including an episode's end share an index
    log_clip_c = jnp.log(clip_c)
    steps = jnp.arange(T)[:, None]
    K = jax.lax.cummin(jnp.where(dones > 0, steps, T - 1), axis=0, reverse=True)  # t's episode's last step
    num_pairs = jnp.sum(K - steps + 1)  # (t, k) pairs with k >= t in one episode
    chunk = max(1, min(T, 2**16 // (T * E)))
    num_blocks = -(-T // chunk)
    k = jnp.arange(T)[None, :, None]

    def block(start):  # rows t = start .. start + chunk - 1 of the [t, k, env] weights
        t = (start + jnp.arange(chunk))[:, None, None]  # rows past T (last block) have no k >= t
        row = jnp.minimum(start + jnp.arange(chunk), T - 1)
        same = (k >= t) & (episode[row][:, None, :] == episode[None, :, :])
        log_prod = L[None, :, :] - L[row][:, None, :]  # sum_{j=t+1}^{k} log ratio_j
        discount = (gamma * lam) ** jnp.where(k >= t, k - t, 0)
        weight = jnp.where(same, discount * jnp.exp(jnp.minimum(log_prod, log_clip_c)), 0.0)
        return jnp.sum(weight * deltas[None, :, :], 1), jnp.sum(weight), jnp.sum(same & (log_prod > log_clip_c))

    adv, weight_sum, num_clipped = jax.lax.map(block, jnp.arange(num_blocks) * chunk)
    adv = adv.reshape(num_blocks * chunk, E)[:T]
    clipped = dict(
        rho_clip_frac=jnp.mean(jnp.exp(log_ratio) > clip_rho),
        c_clip_frac=jnp.sum(num_clipped) / num_pairs,
        effective_horizon=jnp.sum(weight_sum) / (T * E),
    )
    return values + rho * adv, adv, rho, clipped


def probe_clipped_weight(carry, ratio, clip_rho, clip_c):
    """The weight of reward r_t in the return estimate of the variance probe, clipped as the
    trajectory estimator clips it (eq. 9 with lambda = 1 and no critic): min(ratio_0, clip_rho)
    min(clip_c, prod_{j=1}^{t} ratio_j). carry is (min(ratio_0, clip_rho), prod_{j=1}^{t-1} ratio_j),
    (nan, 1) at t = 0. Returns (weight_t, next carry)."""
    rho_0, product = carry
    first = jnp.isnan(rho_0)
    rho_0 = jnp.where(first, jnp.minimum(ratio, clip_rho), rho_0)
    product = jnp.where(first, 1.0, product * ratio)
    return rho_0 * jnp.minimum(clip_c, product), (rho_0, product)


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def ppo_loss(params, apply_actor, apply_critic, spec, batch, clip_coef, ent_coef, args):
    """Clipped surrogate (Schulman et al. 2017, eq. 7) with ratio pi_theta / mu (batch.log_old is
    log mu as of collection, or log pi with weight_on_adv), and value regression on vs
    (docs/algorithm.md eq. 12). ent_coef is 0 here unless --no-bpo: the reference applies the
    entropy bonus to mu instead. clip_vloss as in ppo.py."""
    dist = apply_actor(params["pi"], batch.obs)
    log_ratio = log_prob(spec, dist, batch.action) - batch.log_old
    ratio = jnp.exp(log_ratio)
    adv = batch.advantage
    # jnp.where, not if, for the flags a sweep may vary (traced values; see runner.py --sweep)
    adv = jnp.where(args.norm_adv, (adv - adv.mean()) / (adv.std() + 1e-8), adv)
    pg_loss = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_coef, 1 + clip_coef) * adv).mean()
    value = apply_critic(params["v"], batch.obs)
    v_err = (value - batch.vs) ** 2
    v_clipped = batch.value + jnp.clip(value - batch.value, -clip_coef, clip_coef)
    v_err = jnp.where(args.clip_vloss, jnp.maximum(v_err, (v_clipped - batch.vs) ** 2), v_err)
    v_loss = v_err.mean()
    ent = entropy(spec, dist).mean()
    loss = pg_loss + args.vf_coef * v_loss - ent_coef * ent
    stats = dict(
        pg_loss=pg_loss,
        v_loss=v_loss,
        entropy=ent,
        approx_kl=jnp.mean(ratio - 1 - log_ratio),  # Schulman's k3 estimator of KL(old || new)
        clip_frac=jnp.mean(jnp.abs(ratio - 1) > clip_coef),
    )
    return loss, stats


def variance_reward(r, v_next, bootstrap, gamma):
    """r_hat(s, a, s') = r^2 + 2 gamma bootstrap r V_pi(s'), V_pi(s') = E_{a'~pi} Q_pi(s', a')
    (docs/algorithm.md eq. 2): q_hat, the action value of r_hat under pi with discount gamma^2, is
    the second moment of the discounted return whose square root weights the optimal mu. Its
    expectation given (s, a) is E[R^2] + 2 gamma E[R V_pi(s')], the one-step term of the second
    moment's recursion, also for stochastic rewards. `bootstrap` is 0 where the episode terminated
    (1 at a time-limit truncation, as the Q targets treat it)."""
    return r**2 + 2.0 * gamma * bootstrap * r * v_next


def variance_reward_reference(r, q):
    """The reference's r_hat(s, a) = 2 r Q_pi(s, a) - r^2 (eq. 2b): the same expectation as
    variance_reward for deterministic rewards, but biased by -2 Var(R) for stochastic ones."""
    return 2.0 * r * q - r**2


def variance_reward_vtrace(r, q, v_next, var_next, bootstrap, gamma):
    """--mu-target vtrace: the reward of W = Var(G | s, a), whose gamma^2-value under pi it is (the
    variance Bellman equation, docs/algorithm.md eq. 22):
        r_W(s, a, s') = (r + gamma bootstrap V_pi(s') - Q(s, a))^2 + gamma^2 bootstrap Var_{a'~pi} Q(s', a'),
    the expected square, over a' ~ pi(.|s'), of the TD error r + gamma bootstrap Q(s', a') - Q(s, a).
    Discrete actions: V_pi(s') and Var_{a'~pi} Q(s', .) exactly; continuous: v_next = Q(s', a') of one
    a' ~ pi(.|s') and var_next = 0, an unbiased sample of the same. Without the Var term W would miss
    the spread of the later actions' values."""
    return (r + gamma * bootstrap * v_next - q) ** 2 + gamma**2 * bootstrap * var_next


def mu_target_discrete(log_pi, q_hat, beta=1.0):
    """p(.|s) = softmax(log pi(.|s) + (beta/2) log max(q_hat(s,.), 1e-6))  ∝  pi q_hat^(beta/2)
    (eq. 14, 18): pi sqrt(q_hat) at beta = 1. q_hat is the tilt: U with --mu-target vtrace (eq. 21)."""
    return jax.nn.softmax(mu_logits_closed(log_pi, q_hat, beta), -1)


def mu_loss_discrete(mu_logits, log_pi, q_hat, ent_coef, beta=1.0):
    """Per state: cross_entropy(p, mu) - ent_coef H(mu), p the (fixed) target above (eq. 14)."""
    p = jax.lax.stop_gradient(mu_target_discrete(log_pi, q_hat, beta))
    log_mu = jax.nn.log_softmax(mu_logits)
    return -jnp.sum(p * log_mu, -1) + ent_coef * jnp.sum(jnp.exp(log_mu) * log_mu, -1)


def mu_loss_continuous(spec, mu_dist, pi_dist, q_hat_fn, key, ent_coef, use_q_hat=True, beta=1.0):
    """Per state, with a ~ mu reparameterised ("kl_qhat", eq. 15):
        log mu(a|s) - log pi(a|s) - (beta/2) log max(q_hat(s,a), 1e-6) - ent_coef H(mu),
    a one-sample estimate of KL(mu || pi q_hat^(beta/2) / Z) up to log Z (pi sqrt(q_hat) at beta = 1);
    each sample its own q_hat. "kl" drops q_hat."""
    mean, log_std = mu_dist
    a = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    loss = log_prob(spec, mu_dist, a) - log_prob(spec, jax.lax.stop_gradient(pi_dist), a)
    if use_q_hat:
        loss = loss - beta / 2 * jnp.log(jnp.maximum(q_hat_fn(a), 1e-6))
    return loss - ent_coef * entropy(spec, mu_dist)


# ----------------------------------------------------------------------------------------------
# The behaviour policy: its closed form, tempering and mixture (docs/algorithm.md eq. 18-23)
# ----------------------------------------------------------------------------------------------
def mu_logits_closed(log_pi, tilt, beta):
    """mu in closed form (eq. 18): logits log pi + (beta/2) log max(tilt, 1e-6), i.e. mu ∝ pi tilt^(beta/2);
    tilt = q_hat (--mu-target second-moment: mu* of eq. 1 at beta = 1) or U = (Q - V_pi)^2 + W
    (--mu-target vtrace, eq. 21). log_pi may be pi's unnormalised logits: the softmax is the same.
    beta = 0 returns log_pi itself (x + 0 = x), so mu's data are pi's exactly."""
    return log_pi + beta / 2 * jnp.log(jnp.maximum(tilt, 1e-6))


TILT_BASELINE_SAMPLES = 8  # continuous actions, --mu-target vtrace: draws of pi for V_pi(s) = E_pi Q(s, .)


def vtrace_tilt(q, v, w):
    """U(s, a) = (Q(s, a) - V_pi(s))^2 + W(s, a) = E[(G - V_pi(s))^2 | s, a] (eq. 21): the second moment
    of the return about the baseline V_pi(s), whose square root tilts pi for the V-trace target."""
    return (q - v) ** 2 + w


def mixed_logits(pi_logits, mu_logits, mix):
    """The logits of (1 - mix) pi + mix mu (eq. 19); pi's logits themselves at mix = 0 and mu's at
    mix = 1 (exactly, so the data of the end points are pi's and mu's, bit for bit)."""
    mixed = jnp.logaddexp(jnp.log1p(-mix) + jax.nn.log_softmax(pi_logits), jnp.log(mix) + jax.nn.log_softmax(mu_logits))
    return jnp.where(mix == 1, mu_logits, jnp.where(mix == 0, pi_logits, mixed))


def behaviour_log_prob(spec, pi_dist, mu_dist, mix, action):
    """log of the behaviour (1 - mix) pi + mix mu at `action` (eq. 19): the mixture's log-probability
    (discrete) or log-density (continuous, a mixture of two Gaussians); log pi at mix = 0 and log mu
    at mix = 1 exactly."""
    if spec.discrete:
        return log_prob(spec, mixed_logits(pi_dist, mu_dist, mix), action)
    log_pi, log_mu = log_prob(spec, pi_dist, action), log_prob(spec, mu_dist, action)
    mixed = jnp.logaddexp(jnp.log1p(-mix) + log_pi, jnp.log(mix) + log_mu)
    return jnp.where(mix == 1, log_mu, jnp.where(mix == 0, log_pi, mixed))


def behaviour_sample(spec, pi_dist, mu_dist, mix, key, noise=None):
    """An action of (1 - mix) pi + mix mu (eq. 19). Discrete: one draw of the mixture's logits (with
    `key`: at mix = 1 the draw mu's own sampling makes). Continuous: mu's component with probability
    mix, pi's otherwise (a uniform draw of fold_in(key, 1)), each sampled with `key`, or from the held
    standard-normal `noise` (eq. 16)."""
    if spec.discrete:
        return jax.random.categorical(key, mixed_logits(pi_dist, mu_dist, mix))
    if noise is None:
        noise = jax.random.normal(key, mu_dist[0].shape)
    a_mu, a_pi = mu_dist[0] + jnp.exp(mu_dist[1]) * noise, pi_dist[0] + jnp.exp(pi_dist[1]) * noise
    take_mu = jax.random.uniform(jax.random.fold_in(key, 1), a_mu.shape[:-1]) < mix
    return jnp.where(take_mu[..., None], a_mu, a_pi)


def static_is(x, value) -> bool:
    """x is the Python number `value`, not a traced (swept) value: a branch the program takes statically."""
    return isinstance(x, (int, float)) and x == value


def behaviour_mixes(args) -> bool:
    """Whether rollouts act with a mixture (1 - mu_mix) pi + mu_mix mu: not with --no-bpo (mu is pi) or
    where mu_mix is 1 as a number (a swept mu_mix always mixes, as the program cannot know its value)."""
    return not args.no_bpo and not static_is(args.mu_mix, 1)


# ----------------------------------------------------------------------------------------------
# Replay buffer: FIFO, replay_size transitions per seed, on device
# ----------------------------------------------------------------------------------------------
class Replay(NamedTuple):
    obs: jax.Array  # raw observations (as uint8 where the environment allows: replay_init)
    action: jax.Array
    reward: jax.Array  # the (scaled) environment reward, without the truncation bootstrap
    done: jax.Array  # 1 where the step ends an episode (terminated or truncated)
    truncated: jax.Array  # 1 where it ends by the time limit (then next_obs is still bootstrapped)
    next_obs: jax.Array  # the true next observation (the final one at an episode's end)
    log_mu: jax.Array  # log mu(a|s) as of collection
    ptr: jax.Array  # next slot to write
    size: jax.Array  # filled slots: always the first `size`


REPLAY_DATA = Replay._fields[:-2]  # the per-transition fields


def replay_init(capacity: int, obs_shape, spec: envs.ActionSpec, obs_dtype=None) -> Replay:
    """An empty buffer. Observations are stored as obs_dtype, the environment's exact narrow dtype
    (env.obs_dtype: uint8 for MinAtar's 0/1 grids, a quarter of float32's memory), or float32 (None);
    replay_obs reads them back."""
    action = jnp.zeros((capacity,), jnp.int32) if spec.discrete else jnp.zeros((capacity, spec.n))
    z = jnp.zeros(capacity)
    return Replay(
        jnp.zeros((capacity,) + obs_shape, obs_dtype),
        action,
        z,
        z,
        z,
        jnp.zeros((capacity,) + obs_shape, obs_dtype),
        z,
        jnp.int32(0),
        jnp.int32(0),
    )


def replay_add(rb: Replay, **new: jax.Array) -> Replay:
    """Append n transitions, one array per field of REPLAY_DATA (leading axis n), overwriting the
    oldest; each stored in its field's dtype (observations as replay_init chose)."""
    capacity, n = rb.reward.shape[0], new["reward"].shape[0]
    new = {f: new[f].astype(getattr(rb, f).dtype) for f in REPLAY_DATA}
    if n >= capacity:  # the newest `capacity` transitions fill the buffer
        return Replay(*(new[f][n - capacity :] for f in REPLAY_DATA), jnp.int32(0), jnp.int32(capacity))
    idx = (rb.ptr + jnp.arange(n)) % capacity
    data = (getattr(rb, f).at[idx].set(new[f]) for f in REPLAY_DATA)
    return Replay(*data, (rb.ptr + n) % capacity, jnp.minimum(rb.size + n, capacity))


def replay_obs(obs):
    """Stored observations as the networks read them, float32: the same numbers the rollout saw
    (uint8 storage is used only where it holds every observation exactly)."""
    return obs.astype(jnp.float32)


def replay_minibatches(key, size, capacity: int, minibatch_size: int, epochs: int):
    """`epochs` passes over the `size` filled slots in random order, as [epochs * M,
    minibatch_size] indices and 0/1 weights (`valid`) with M = ceil(capacity / minibatch_size):
    slots past `size` (a buffer still filling, the tail of the last minibatch) get weight 0, so
    shapes are static and no transition is dropped or counted twice."""
    m = -(-capacity // minibatch_size)

    def one_epoch(k):
        order = training.permutation(k, capacity, first=jnp.arange(capacity) < size)  # the filled slots first
        order = jnp.resize(order, m * minibatch_size)  # repeated cyclically; the repeats get weight 0
        valid = (jnp.arange(m * minibatch_size) < size).astype(jnp.float32)
        return order.reshape(m, minibatch_size), valid.reshape(m, minibatch_size)

    idx, valid = jax.vmap(one_epoch)(jax.random.split(key, epochs))
    return idx.reshape(epochs * m, minibatch_size), valid.reshape(epochs * m, minibatch_size)


# ----------------------------------------------------------------------------------------------
# Fitted Q evaluation (FQE) of pi on the replay buffer: Q (step 4) and q_hat (step 6)
# ----------------------------------------------------------------------------------------------
def q_value(net: QNet, params, obs, action, symlog_targets):
    """The value of a Q head at (s, a) (discrete, no action: at every action), in value space."""
    out = net.apply(params, obs, action)
    return symexp(out) if symlog_targets else out


def apply_update(tx, params, opt_state, grads, lr):
    """One step of `tx` (gradient clipping and Adam's direction) scaled by the learning rate lr."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - lr * u, params, updates), opt_state


class FQEData(NamedTuple):
    """What both FQE phases and the variance rewards read, computed once per iteration (pi, the
    replay buffer and the observation statistics do not change between them)."""

    obs: jax.Array  # s, normalised
    next_obs: jax.Array  # s', normalised
    pi_next: Any  # pi(.|s')
    mask: jax.Array  # 1 - done + truncated: 1 where the target bootstraps from s'
    w_td: jax.Array  # clip(pi(a|s) / mu(a|s), 0.1, 10), the TD weights of weight_td


class QHead(NamedTuple):
    """One action-value head as FQE fits it: Q, or q_hat."""

    params: Any
    target: Any  # its target network
    opt_state: Any


def fqe(
    args, spec, net: QNet, tx, head: QHead, data: FQEData, replay: Replay, reward, discount, r_lo, r_hi, lr, key
) -> tuple[QHead, dict]:
    """FQE of one Q head (Q or q_hat) for the current pi (docs/algorithm.md eq. 13):
        y = reward + discount * (1 - done + truncated) * E_{a' ~ pi(.|s')} Q'(s', a'),
    (discrete: the exact expectation; continuous: one sample a') regressed by Q(s, a), with
    Q' the target network (symlog_targets: y from the online network, regressed in symlog
    space, plus symlog_reg_coef * (Q - Q')^2); weight_td weights each TD error by
    clip(pi/mu, 0.1, 10) normalised to mean 1; clip_targets clips y to the range of any
    discounted return, [min(r_lo, 0), max(r_hi, 0)] / (1 - discount). (The reference clips to
    [r_lo, r_hi] / (1 - discount), which assumes episodes never end: with rewards >= r_lo > 0,
    as in CartPole, it lifts every target to r_lo / (1 - discount) and flattens Q.)
    fqe_epochs passes over the buffer in minibatches of fqe_minibatch_size, the Adam step of `tx`
    at rate lr. Returns the fitted head and its statistics: the mean loss, the fraction of targets
    clipped and the mean of the head over the buffer."""
    k_next, k_mb = jax.random.split(key)
    a_next = None if spec.discrete else sample(spec, data.pi_next, k_next)  # fixed for the phase, its own
    lo, hi = jnp.minimum(r_lo, 0.0) / (1.0 - discount), jnp.maximum(r_hi, 0.0) / (1.0 - discount)

    def next_value(params, idx):
        if spec.discrete:
            q_next = q_value(net, params, data.next_obs[idx], None, args.symlog_targets)
            return jnp.sum(jax.nn.softmax(data.pi_next[idx]) * q_next, -1)
        return q_value(net, params, data.next_obs[idx], a_next[idx], args.symlog_targets)

    def minibatch_step(head, x):
        params, target, opt_state = head
        idx, valid = x
        y = reward[idx] + discount * data.mask[idx] * next_value(params if args.symlog_targets else target, idx)
        clipped = jnp.sum(valid * ((y < lo) | (y > hi))) / jnp.sum(valid)
        # jnp.where, not if, for the flags a sweep may vary (traced values; see runner.py --sweep)
        y = jax.lax.stop_gradient(jnp.where(args.clip_targets, jnp.clip(y, lo, hi), y))
        w_td = data.w_td[idx]
        weight = jnp.where(args.weight_td, valid * w_td / (jnp.sum(valid * w_td) / jnp.sum(valid)), valid)

        def loss_fn(params):
            out = net.apply(params, data.obs[idx], replay.action[idx])
            if not args.symlog_targets:
                return jnp.sum(weight * (out - y) ** 2) / jnp.sum(valid)
            reg = (out - jax.lax.stop_gradient(net.apply(target, data.obs[idx], replay.action[idx]))) ** 2
            return (jnp.sum(weight * (out - symlog(y)) ** 2) + args.symlog_reg_coef * jnp.sum(valid * reg)) / jnp.sum(
                valid
            )

        loss, grads = jax.value_and_grad(loss_fn)(params)
        params, opt_state = apply_update(tx, params, opt_state, grads, lr)
        target = optax.incremental_update(params, target, args.polyak_tau)  # tau = 0: target unchanged
        return QHead(params, target, opt_state), dict(loss=loss, target_clipped=clipped, steps=jnp.ones(()))

    def maybe_step(head, x):  # minibatches holding no filled slot do nothing
        skip = lambda h, x: (h, dict(loss=jnp.zeros(()), target_clipped=jnp.zeros(()), steps=jnp.zeros(())))  # noqa: E731
        return jax.lax.cond(jnp.sum(x[1]) > 0, minibatch_step, skip, head, x)

    mbs = replay_minibatches(k_mb, replay.size, args.replay_size, args.fqe_minibatch_size, args.fqe_epochs)
    (params, target, opt_state), out = jax.lax.scan(maybe_step, head, mbs)
    # polyak_tau = 0: a hard copy at the end of the phase
    target = jax.tree.map(lambda p, t: jnp.where(args.polyak_tau == 0, p, t), params, target)
    steps = jnp.maximum(out["steps"].sum(), 1.0)
    filled = jnp.arange(args.replay_size) < replay.size
    value = q_value(net, params, data.obs, replay.action, args.symlog_targets)
    stats = dict(
        loss=out["loss"].sum() / steps,
        target_clip_frac=out["target_clipped"].sum() / steps,
        mean=jnp.sum(filled * value) / replay.size,
    )
    return QHead(params, target, opt_state), stats


# ----------------------------------------------------------------------------------------------
# Training: one seed; runner.py vmaps it over seeds
# ----------------------------------------------------------------------------------------------
class Step(NamedTuple):  # what the rollout records at each step
    obs: jax.Array  # raw observation (normalised on use with the rollout's frozen statistics)
    action: jax.Array  # a ~ mu(.|s)
    reward: jax.Array  # the (scaled) environment reward
    done: jax.Array  # 1 where the step ends an episode (terminated or truncated)
    truncated: jax.Array  # 1 where it ends by the time limit
    final_obs: jax.Array  # the true next observation (before any reset)


class Transition(NamedTuple):  # a rollout, [T, E], as the estimator and the replay buffer read it
    obs: jax.Array
    action: jax.Array
    log_mu: jax.Array  # log mu(a|s), as of collection
    log_pi: jax.Array  # log pi(a|s), as of collection
    value: jax.Array  # V(s), as of collection
    reward: jax.Array  # (scaled) env reward, plus gamma * V(final obs) at a truncation
    done: jax.Array
    env_reward: jax.Array  # (scaled) env reward alone, for the replay buffer
    truncated: jax.Array
    final_obs: jax.Array


class Batch(NamedTuple):  # what the PPO update reads
    obs: jax.Array  # normalised (the loss applies the torso)
    action: jax.Array
    log_old: jax.Array  # log mu, or log pi with weight_on_adv
    value: jax.Array  # V as of collection (for clip_vloss)
    advantage: jax.Array
    vs: jax.Array


class TrainState(NamedTuple):
    params: dict  # pi, mu (not with --mu-form closed), v, q, q_target, q_hat, q_hat_target
    opt_state: dict  # ppo (pi and V together), mu (not with --mu-form closed), q, q_hat
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
    iteration: Any  # TrainState -> (TrainState, metrics): steps 1-7
    rollout: Any  # TrainState -> (TrainState, Transition [T, E], episode stats)
    fit_q: Any  # (TrainState, lr) -> (TrainState, stats)
    variance_rewards: Any  # TrainState -> r_hat over the replay buffer
    fit_q_hat: Any  # (TrainState, r_hat, lr) -> (TrainState, stats)
    update_mu: Any  # (TrainState, lr) -> (TrainState, stats); None with --mu-form closed (no mu network)
    log_mu: Any  # (TrainState, normalised obs, action) -> log of the behaviour (mixture included) at action
    mu_dist: Any  # (TrainState, normalised obs) -> mu's distribution before mixing (network or closed form)
    q_value: Any  # (QNet, params, normalised obs, action) -> Q(s,a) in value space
    variance_probe: Any  # (TrainState, key) -> probe metrics
    train_interval: Any  # (TrainState, num_active) -> (TrainState, metrics of the interval)
    iters_per_interval: int
    num_iterations: int
    actor: nn.Module
    critic: nn.Module
    q_net: nn.Module
    q_hat_net: nn.Module
    torso: torsos.Torso  # what turns observations into the heads' input (features)


LAST_VALUE_METRICS = ("r_max", "r_min", "r_hat_max")  # reported as of the end of an interval
BPO_PHASE_METRICS = (
    "q_loss",
    "q_target_clip_frac",
    "q_mean",
    "q_hat_loss",
    "q_hat_target_clip_frac",
    "q_hat_mean",
    "r_hat_mean",
    "mu_loss",
)  # not computed (nan) with --no-bpo


def make_train(args: Args, env: envs.Env) -> Trainer:
    spec = env.action_spec
    batch_size = args.num_envs * args.num_steps
    num_minibatches = batch_size // args.minibatch_size
    num_iterations = args.total_timesteps // batch_size
    iters_per_interval = max(1, min(args.eval_every // batch_size, num_iterations))
    # --torso: mlp (the observation flattened), or a CNN shared by every network or one in each (torsos.py)
    torso = torsos.make(args.torso, args.torso_shared, env.obs_shape, args.kernel_init)
    actor = torso.network(Actor(spec, args.hidden_sizes, args.actor_activation, args.kernel_init, args.log_std_init))
    critic = torso.network(
        Critic(args.critic_hidden_sizes or args.hidden_sizes, args.critic_activation, args.kernel_init)
    )
    q_args = (
        spec,
        args.q_hidden_sizes,
        args.critic_activation,
        args.q_kernel_init,
        args.q_layer_norm,
        args.q_zero_init,
    )
    q_net = torso.network(QNet(*q_args, positive=False))
    q_hat_net = torso.network(QNet(*q_args, positive=args.q_hat_head == "softplus"))
    # The behaviour (eq. 18-23): mu a network, or in closed form (no network, no step 7); acting with
    # (1 - mu_mix) pi + mu_mix mu unless mu_mix is 1 as a number (a swept mu_mix always mixes)
    closed = args.mu_form == "closed"
    if closed and not spec.discrete:
        raise runner.ConfigError(
            f"--mu-form closed needs discrete actions ({env.id} has continuous ones): a closed-form mu "
            "∝ pi q_hat^(beta/2) has no tractable normaliser or sampler there; use --mu-form network"
        )
    mixing = behaviour_mixes(args)
    # Every network: Adam with global-norm clipping. pi and V (one optimizer, as in ppo.py): with
    # anneal_lr the rate decays linearly per optimizer step over minibatches x epochs x
    # iterations. mu and the Q heads (tx_phase): their rate, phase_lr, is applied in apply_update and
    # decays with training progress, so all reach zero at the end of training (the reference decays
    # each by its own step count against the PPO update's total, so mu's and the Q heads' rates
    # reach zero early).
    decayed_lr = optax.linear_schedule(args.learning_rate, 0.0, num_iterations * args.num_epochs * num_minibatches)
    pi_v_lr = lambda count: jnp.where(args.anneal_lr, decayed_lr(count), args.learning_rate)  # noqa: E731
    tx_pi_v = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.adam(pi_v_lr, eps=args.adam_eps))
    tx_phase = optax.chain(optax.clip_by_global_norm(args.max_grad_norm), optax.scale_by_adam(eps=args.adam_eps))

    def normalize(state, obs):
        return envs.normalize_obs(state.obs_rms, obs) if args.normalize_obs else obs

    def inputs(state, obs):
        """What the networks read at raw observations: normalised, then the torso's features (a shared
        CNN is differentiated only inside the PPO loss: ppo_update)."""
        return torso.features(state.params, normalize(state, obs))

    def init(key):
        k_pi, k_v, k_env, k_train = jax.random.split(key, 4)  # as ppo.py: --no-bpo draws its numbers
        k_q, k_q_hat = jax.random.split(jax.random.fold_in(key, 1))
        shared = torso.init(jax.random.fold_in(key, 2), env.obs_shape)  # {"torso": ...} or {}, as ppo.py
        dummy_obs = torso.features(shared, jnp.zeros(env.obs_shape))
        dummy_action = None if spec.discrete else jnp.zeros(spec.n)
        pi, v = actor.init(k_pi, dummy_obs), critic.init(k_v, dummy_obs)
        q, q_hat = q_net.init(k_q, dummy_obs, dummy_action), q_hat_net.init(k_q_hat, dummy_obs, dummy_action)
        params = dict(pi=pi, mu=pi, v=v, q=q, q_target=q, q_hat=q_hat, q_hat_target=q_hat, **shared)
        opt_state = dict(
            ppo=tx_pi_v.init({"pi": pi, "v": v, **shared}),
            mu=tx_phase.init(pi),
            q=tx_phase.init(q),
            q_hat=tx_phase.init(q_hat),
        )
        if closed:  # no mu network: nothing of it in the state (or the compiled program)
            del params["mu"], opt_state["mu"]
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, args.num_envs))
        inf = jnp.float32(jnp.inf)
        return TrainState(
            params,
            opt_state,
            replay_init(args.replay_size, env.obs_shape, spec, env.obs_dtype),
            env_state,
            obs,
            envs.rms_init(env.obs_shape),
            envs.reward_scaler_init(args.num_envs),
            k_train,
            jnp.int32(0),
            -inf,
            inf,
            -inf,
        )

    # One iteration: steps 1-7 -------------------------------------------------------------------
    def iteration(state):
        lr_now = pi_v_lr(state.iteration * args.num_epochs * num_minibatches)
        phase_lr = jnp.where(
            args.anneal_lr, args.learning_rate * (1.0 - state.iteration / num_iterations), args.learning_rate
        )
        state, traj, (done, ep_return, ep_length, discounted_return) = rollout(state)  # 1.
        last_value = critic.apply(state.params["v"], inputs(state, state.obs))
        vs, adv, rho, clipped = trajectory_clipped_returns(
            traj.reward,
            traj.value,
            traj.done,
            last_value,
            traj.log_pi,
            traj.log_mu,
            args.gamma,
            args.gae_lambda,
            args.clip_rho,
            args.clip_c,
        )  # 2.
        # weight_on_adv: the surrogate's ratio against pi_old, rho folded into the advantage
        batch = Batch(
            normalize(state, traj.obs),
            traj.action,
            jnp.where(args.weight_on_adv, traj.log_pi, traj.log_mu),
            traj.value,
            jnp.where(args.weight_on_adv, adv * rho, adv),
            vs,
        )
        if args.freeze_pi:  # policy evaluation only: pi and V stay as initialised
            stats = frozen_pi_stats(state, batch)
        else:
            state, stats = ppo_update(state, batch)  # 3.
        if args.no_bpo:  # mu is pi for the next rollout; steps 4-7 are skipped
            if not closed:
                state = state._replace(params={**state.params, "mu": state.params["pi"]})
            stats.update({k: jnp.float32(jnp.nan) for k in BPO_PHASE_METRICS})
        else:
            data = fqe_inputs(state)  # what 4.-6. read, once (pi is not updated by them)
            state, q_stats = fit_q(state, phase_lr, data)  # 4.
            r_hat = variance_rewards(state, data)  # 5.
            state, q_hat_stats = fit_q_hat(state, r_hat, phase_lr, data)  # 6.
            if closed:  # 7. (none: mu is computed from pi and q_hat wherever it is needed)
                mu_stats = {"mu_loss": jnp.float32(jnp.nan)}
            else:
                state, mu_stats = update_mu(state, phase_lr)  # 7.
            stats.update(**q_stats, **q_hat_stats, **mu_stats)
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
            **clipped,
            learning_rate=lr_now,
            explained_variance=1.0 - residual.var() / (vs.var() + 1e-8),
            ratio_mean=ratio.mean(),
            ratio_max=ratio.max(),
            kl_mu_pi=jnp.mean(traj.log_mu - traj.log_pi),  # E_mu[log mu - log pi] = KL(mu || pi)
            ess=ratio.sum() ** 2 / (ratio.size * jnp.sum(ratio**2)),  # effective sample size / n
            r_max=state.r_max,
            r_min=state.r_min,
            r_hat_max=state.r_hat_max,
            episodes=done.sum(),
            return_sum=jnp.sum(done * ep_return),
            length_sum=jnp.sum(done * ep_length),
        )
        if args.verbose >= 2:  # the rollout's steps, and its importance ratios pi/mu as of collection
            stats.update(training.step_statistics(traj.reward, traj.value, vs, batch.advantage))
            stats.update(
                hist_advantage=training.histogram(batch.advantage),
                hist_ratio=training.histogram(traj.log_pi - traj.log_mu, log=True),
            )
        return state, training.at_verbosity(stats, args.verbose)  # --verbose 0: the rest is never computed

    # 1. Rollout with mu --------------------------------------------------------------------------
    def rollout(state):
        """num_steps steps of num_envs environments with mu; log mu, log pi and V are stored and
        the transitions appended to the replay buffer. Normalisation statistics stay frozen here."""
        p = state.params

        def step(carry, t):
            env_state, obs, scaler, noise, key = carry
            key, k_act, k_env = jax.random.split(key, 3)
            obs_n = inputs(state, obs)
            mu_d = mu_dist(state, obs_n)
            if args.noise_hold_steps > 1:  # one noise draw per environment, held for noise_hold_steps steps (eq. 16)
                noise = jnp.where(t % args.noise_hold_steps == 0, jax.random.normal(k_act, noise.shape), noise)
            held = noise if args.noise_hold_steps > 1 else None
            if mixing:  # (1 - mu_mix) pi + mu_mix mu (eq. 19)
                action = behaviour_sample(spec, actor.apply(p["pi"], obs_n), mu_d, args.mu_mix, k_act, held)
            elif args.noise_hold_steps > 1:
                action = mu_d[0] + jnp.exp(mu_d[1]) * noise
            else:
                action = sample(spec, mu_d, k_act)
            ts = jax.vmap(env.step)(jax.random.split(k_env, args.num_envs), env_state, action)
            done = ts.terminated | ts.truncated
            reward = ts.reward
            reward = reward * args.reward_scale  # Brax's reward_scaling; evaluation returns stay unscaled
            scaler, discounted_return = envs.track_returns(scaler, reward, done, args.gamma)
            if args.normalize_reward:
                reward = envs.scale_reward(scaler, reward)
            recorded = Step(
                obs, action, reward, done.astype(jnp.float32), ts.truncated.astype(jnp.float32), ts.final_obs
            )
            episodes = (done, ts.episode_return, ts.episode_length, discounted_return)
            return (ts.state, ts.obs, scaler, noise, key), (recorded, episodes)

        noise = jnp.zeros((args.num_envs, spec.n))
        (env_state, obs, scaler, _, key), (steps, episodes) = jax.lax.scan(
            step, (state.env_state, state.obs, state.reward_scaler, noise, state.key), jnp.arange(args.num_steps)
        )
        # mu, pi and V are fixed during the rollout, so log mu, log pi and V are computed once for all
        # [T, E] observations after it (a batched pass, not one per step; with mu = pi, log mu and log
        # pi are then the same numbers, bitwise). A truncated episode did not end: its reward
        # bootstraps from V of the TRUE final observation (eq. 4).
        obs_n = inputs(state, steps.obs)
        bootstrap = args.gamma * steps.truncated * critic.apply(p["v"], inputs(state, steps.final_obs))
        traj = Transition(
            obs=steps.obs,
            action=steps.action,
            log_mu=log_mu(state, obs_n, steps.action),
            log_pi=log_prob(spec, actor.apply(p["pi"], obs_n), steps.action),
            value=critic.apply(p["v"], obs_n),
            reward=steps.reward + bootstrap,
            done=steps.done,
            env_reward=steps.reward,
            truncated=steps.truncated,
            final_obs=steps.final_obs,
        )
        flat = lambda x: x.reshape((batch_size,) + x.shape[2:])  # noqa: E731
        replay = replay_add(
            state.replay,
            obs=flat(traj.obs),
            action=flat(traj.action),
            reward=flat(traj.env_reward),
            done=flat(traj.done),
            truncated=flat(traj.truncated),
            next_obs=flat(traj.final_obs),
            log_mu=flat(traj.log_mu),
        )
        state = state._replace(
            env_state=env_state,
            obs=obs,
            reward_scaler=scaler,
            key=key,
            replay=replay,
            r_max=jnp.maximum(state.r_max, traj.env_reward.max()),
            r_min=jnp.minimum(state.r_min, traj.env_reward.min()),
        )
        return state, traj, episodes

    # 3. PPO update of pi and V -------------------------------------------------------------------
    def ppo_update(state, batch):
        """num_epochs passes over the batch in shuffled minibatches."""
        progress = state.iteration / num_iterations
        clip_coef = jnp.where(args.anneal_clip, args.clip_coef * (1.0 - progress), args.clip_coef)
        # with BPO on, the entropy bonus is mu's network's; pi's with --no-bpo or a closed-form mu
        ent_coef = args.ent_coef if args.no_bpo or closed else 0.0
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)

        def loss(params, mb):  # the torso inside the differentiated loss: a shared one learns from pi's and V's
            mb = mb._replace(obs=torso.features(params, mb.obs))
            return ppo_loss(params, actor.apply, critic.apply, spec, mb, clip_coef, ent_coef, args)

        grad_fn = jax.grad(loss, has_aux=True)

        def minibatch_step(carry, mb):
            params, opt_state = carry
            grads, stats = grad_fn(params, mb)
            updates, opt_state = tx_pi_v.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), stats

        def epoch(carry, key):
            perm = training.permutation(key, batch_size)
            mbs = jax.tree.map(lambda x: x[perm].reshape((num_minibatches, -1) + x.shape[1:]), flat)
            return jax.lax.scan(minibatch_step, carry, mbs)

        key, k_perm = jax.random.split(state.key)
        pi_v = {"pi": state.params["pi"], "v": state.params["v"], **torso.shared_params(state.params)}
        (pi_v, opt), stats = jax.lax.scan(
            epoch, (pi_v, state.opt_state["ppo"]), jax.random.split(k_perm, args.num_epochs)
        )
        stats = jax.tree.map(jnp.mean, stats)
        stats["clip_coef"] = jnp.float32(clip_coef)
        return state._replace(
            params={**state.params, **pi_v}, opt_state={**state.opt_state, "ppo": opt}, key=key
        ), stats

    def frozen_pi_stats(state, batch):
        """With --freeze-pi: the PPO losses of the whole batch at the frozen pi and V, no update."""
        clip_coef = jnp.where(
            args.anneal_clip, args.clip_coef * (1.0 - state.iteration / num_iterations), args.clip_coef
        )
        flat = jax.tree.map(lambda x: x.reshape((batch_size,) + x.shape[2:]), batch)
        flat = flat._replace(obs=torso.features(state.params, flat.obs))
        pi_v = {"pi": state.params["pi"], "v": state.params["v"]}
        _, stats = ppo_loss(pi_v, actor.apply, critic.apply, spec, flat, clip_coef, 0.0, args)
        return {**stats, "clip_coef": jnp.float32(clip_coef)}

    # 4. and 6. Fitted Q evaluation of pi on the replay buffer (fqe) -------------------------------
    def fqe_inputs(state) -> FQEData:
        rb, pi = state.replay, state.params["pi"]
        obs, next_obs = inputs(state, replay_obs(rb.obs)), inputs(state, replay_obs(rb.next_obs))
        w_td = jnp.clip(jnp.exp(log_prob(spec, actor.apply(pi, obs), rb.action) - rb.log_mu), 0.1, 10.0)
        return FQEData(
            obs=obs, next_obs=next_obs, pi_next=actor.apply(pi, next_obs), mask=1.0 - rb.done + rb.truncated, w_td=w_td
        )

    def fit_q(state, lr, data=None):  # 4.
        key, k = jax.random.split(state.key)
        p = state.params
        data = fqe_inputs(state) if data is None else data
        head, stats = fqe(
            args,
            spec,
            q_net,
            tx_phase,
            QHead(p["q"], p["q_target"], state.opt_state["q"]),
            data,
            state.replay,
            state.replay.reward,
            args.gamma,
            state.r_min,
            state.r_max,
            lr,
            k,
        )
        state = state._replace(
            params={**p, "q": head.params, "q_target": head.target},
            opt_state={**state.opt_state, "q": head.opt_state},
            key=key,
        )
        return state, {f"q_{k}": v for k, v in stats.items()}

    # 5. Variance rewards ------------------------------------------------------------------------
    def variance_rewards(state, data=None):
        rb, q = state.replay, state.params["q"]
        data = fqe_inputs(state) if data is None else data
        if args.variance_reward == "reference":
            return variance_reward_reference(rb.reward, q_value(q_net, q, data.obs, rb.action, args.symlog_targets))
        # V_pi(s') = E_{a'~pi} Q(s', a'): over every action (discrete), or of one a' ~ pi(.|s')
        if spec.discrete:
            q_next = q_value(q_net, q, data.next_obs, None, args.symlog_targets)
            v_next = jnp.sum(jax.nn.softmax(data.pi_next) * q_next, -1)
        else:
            a_next = sample(spec, data.pi_next, jax.random.fold_in(state.key, 5))  # its own stream
            v_next = q_value(q_net, q, data.next_obs, a_next, args.symlog_targets)
        if args.mu_target == "vtrace":  # W's reward (eq. 22): the squared TD error of Q
            q_sa = q_value(q_net, q, data.obs, rb.action, args.symlog_targets)
            # Var_{a'~pi} Q(s', a') (discrete; continuous: 0, the one sample a' carries it)
            spread = (
                jnp.sum(jax.nn.softmax(data.pi_next) * (q_next - v_next[:, None]) ** 2, -1) if spec.discrete else 0.0
            )
            return variance_reward_vtrace(rb.reward, q_sa, v_next, spread, data.mask, args.gamma)
        return variance_reward(rb.reward, v_next, data.mask, args.gamma)

    def fit_q_hat(state, r_hat, lr, data=None):  # 6.
        filled = jnp.arange(args.replay_size) < state.replay.size
        r_hat_max = jnp.maximum(state.r_hat_max, jnp.max(jnp.where(filled, r_hat, -jnp.inf)))
        key, k = jax.random.split(state.key)
        p = state.params
        data = fqe_inputs(state) if data is None else data
        head = QHead(p["q_hat"], p["q_hat_target"], state.opt_state["q_hat"])
        head, stats = fqe(
            args, spec, q_hat_net, tx_phase, head, data, state.replay, r_hat, args.gamma**2, 1e-8, r_hat_max, lr, k
        )
        state = state._replace(
            params={**p, "q_hat": head.params, "q_hat_target": head.target},
            opt_state={**state.opt_state, "q_hat": head.opt_state},
            key=key,
            r_hat_max=r_hat_max,
        )
        return state, {
            **{f"q_hat_{k}": v for k, v in stats.items()},
            "r_hat_mean": jnp.sum(filled * r_hat) / state.replay.size,
        }

    # 7. Behaviour update of mu towards pi q_hat^(beta/2) -------------------------------------------
    def q_hat_for_mu(state, obs, action=None):
        """q_hat(s, a) as mu's target reads it: floored at q_hat_floor (eq. 18b: values below the head's
        accuracy tilt by noise) and, with clip_targets, capped at r_hat_max / (1 - gamma^2) (discrete,
        no action: at every action); no cap before the first variance reward (r_hat_max = -inf).
        With --mu-target vtrace the head is W's."""
        q = q_value(q_hat_net, state.params["q_hat"], obs, action, args.symlog_targets)
        lo = args.q_hat_floor
        hi = jnp.where(state.r_hat_max > -jnp.inf, state.r_hat_max / (1.0 - args.gamma**2), jnp.inf)
        return jnp.where(args.clip_targets, jnp.clip(q, lo, hi), jnp.maximum(q, lo))

    def tilt_baseline(state, obs, pi_dist, key=None):
        """V_pi(s) = E_{a~pi} Q(s, a), the baseline of the vtrace tilt (eq. 21): exact over discrete
        actions; the mean of Q over TILT_BASELINE_SAMPLES draws of pi (with `key`) for continuous ones
        (which adds Var_pi(Q(s, .)) / TILT_BASELINE_SAMPLES to every action's tilt at s)."""
        q = state.params["q"]
        if spec.discrete:
            return jnp.sum(jax.nn.softmax(pi_dist) * q_value(q_net, q, obs, None, args.symlog_targets), -1)
        draws = jax.vmap(lambda k: sample(spec, pi_dist, k))(jax.random.split(key, TILT_BASELINE_SAMPLES))
        return jnp.mean(jax.vmap(lambda a: q_value(q_net, q, obs, a, args.symlog_targets))(draws), 0)

    def tilt_for_mu(state, obs, action=None, v=None):
        """The tilt of mu's target, mu ∝ pi tilt^(beta/2) (eq. 14, 15, 18): q_hat as q_hat_for_mu reads
        it or, with --mu-target vtrace, U = (Q - V_pi)^2 + W (eq. 21) with W read from q_hat's head as
        q_hat_for_mu reads it and v = V_pi(s) (tilt_baseline). Discrete, no action: every action's."""
        head = q_hat_for_mu(state, obs, action)
        if args.mu_target != "vtrace":
            return head
        q = q_value(q_net, state.params["q"], obs, action, args.symlog_targets)
        return vtrace_tilt(q, v if action is not None else v[..., None], head)

    def mu_dist(state, obs):
        """mu before any mixing, at normalised observations: its network or, with --mu-form closed, the
        logits log pi + (beta/2) log tilt (eq. 18), pi's own before the first fit of q_hat's head
        (r_hat_max = -inf; a network mu starts as a copy of pi) and with --no-bpo."""
        if not closed:
            return actor.apply(state.params["mu"], obs)
        pi_logits = actor.apply(state.params["pi"], obs)
        if args.no_bpo:
            return pi_logits
        v = tilt_baseline(state, obs, pi_logits) if args.mu_target == "vtrace" else None
        logits = mu_logits_closed(pi_logits, tilt_for_mu(state, obs, None, v), args.mu_temper)
        return jnp.where(state.r_hat_max > -jnp.inf, logits, pi_logits)

    def log_mu(state, obs, action):
        """log of the behaviour that acts (eq. 19) at `action`: log mu, or of the mixture with pi."""
        if not mixing:
            return log_prob(spec, mu_dist(state, obs), action)
        pi_dist = actor.apply(state.params["pi"], obs)
        return behaviour_log_prob(spec, pi_dist, mu_dist(state, obs), args.mu_mix, action)

    def update_mu(state, lr):
        """mu_epochs passes over the replay buffer's states: eq. 14 (discrete) or 15 (continuous) with
        beta = mu_temper (eq. 18), q_hat floored at q_hat_floor and, with clip_targets, capped at
        r_hat_max / (1 - gamma^2) (with --mu-target vtrace: W, in the tilt U of eq. 21)."""
        rb, p = state.replay, state.params
        key, k_mb, k_a = jax.random.split(state.key, 3)
        obs = inputs(state, replay_obs(rb.obs))

        # pi, Q and q_hat do not change in this phase: pi(.|s), the tilt's baseline V_pi(s) and
        # (discrete) the tilt at every action once per state
        pi_all = actor.apply(p["pi"], obs)
        v_all = None
        if args.mu_target == "vtrace":
            v_all = tilt_baseline(state, obs, pi_all, jax.random.fold_in(k_a, 1))  # its own stream
        tilt_all = tilt_for_mu(state, obs, None, v_all) if spec.discrete else None

        def loss_fn(mu, idx, valid, k):
            o = obs[idx]
            mu_dist, pi_dist = actor.apply(mu, o), jax.tree.map(lambda x: x[idx], pi_all)
            if spec.discrete:
                log_pi = jax.nn.log_softmax(pi_dist)
                per_state = mu_loss_discrete(mu_dist, log_pi, tilt_all[idx], args.ent_coef, args.mu_temper)
            else:
                per_state = mu_loss_continuous(
                    spec,
                    mu_dist,
                    pi_dist,
                    lambda a: tilt_for_mu(state, o, a, None if v_all is None else v_all[idx]),
                    k,
                    args.ent_coef,
                    args.mu_policy_loss == "kl_qhat",
                    args.mu_temper,
                )
            return jnp.sum(valid * per_state) / jnp.sum(valid)

        def minibatch_step(carry, x):
            mu, opt_state = carry
            idx, valid, k = x
            loss, grads = jax.value_and_grad(loss_fn)(mu, idx, valid, k)
            mu, opt_state = apply_update(tx_phase, mu, opt_state, grads, lr)
            return (mu, opt_state), dict(loss=loss, steps=jnp.ones(()))

        def maybe_step(carry, x):  # minibatches holding no filled slot do nothing
            skip = lambda c, x: (c, dict(loss=jnp.zeros(()), steps=jnp.zeros(())))  # noqa: E731
            return jax.lax.cond(jnp.sum(x[1]) > 0, minibatch_step, skip, carry, x)

        idx, valid = replay_minibatches(k_mb, rb.size, args.replay_size, args.mu_minibatch_size, args.mu_epochs)
        (mu, opt), out = jax.lax.scan(
            maybe_step, (p["mu"], state.opt_state["mu"]), (idx, valid, jax.random.split(k_a, idx.shape[0]))
        )
        stats = {"mu_loss": out["loss"].sum() / jnp.maximum(out["steps"].sum(), 1.0)}
        return state._replace(params={**p, "mu": mu}, opt_state={**state.opt_state, "mu": opt}, key=key), stats

    # The evaluation interval: iterations, then one evaluation of pi (and the probe) ---------------
    if args.variance_probe:  # segments until gamma^t < 0.01 (the discounted tail left out is under 1% of a
        # constant reward's), at most an episode; a shape, so gamma cannot be swept with the probe on
        to_one_percent = int(np.ceil(np.log(0.01) / np.log(args.gamma))) if args.gamma < 1 else env.max_episode_steps
        probe_horizon = args.variance_probe_horizon or min(env.max_episode_steps, to_one_percent)
    tabular_mdp = envs.tabular.make_mdp(env.id) if env.id in envs.TABULAR_IDS else None

    def probe(state, key):
        def log_target(obs, pi_dist, key):
            """mu's target at a state, up to a constant per state (eq. 14, 15, 18): a function of the
            action (discrete, None: every action's)."""
            v = tilt_baseline(state, obs, pi_dist, key) if args.mu_target == "vtrace" else None

            def at(action):
                log_pi = jax.nn.log_softmax(pi_dist) if spec.discrete else log_prob(spec, pi_dist, action)
                return log_pi + args.mu_temper / 2 * jnp.log(tilt_for_mu(state, obs, action, v))

            return at

        normalized = lambda obs: inputs(state, obs)  # noqa: E731
        out = variance_probe(
            args,
            env,
            actor,
            critic,
            state.params,
            normalized,
            lambda obs: mu_dist(state, obs),
            log_target,
            probe_horizon,
            key,
        )
        if tabular_mdp is not None:  # and the exact figures
            p = state.params

            def behaviour_probs(obs):  # the behaviour's table (eq. 19), the mixture's if it mixes
                o = normalized(obs)
                mu_logits = mu_dist(state, o)
                return jax.nn.softmax(
                    mixed_logits(actor.apply(p["pi"], o), mu_logits, args.mu_mix) if mixing else mu_logits
                )

            out.update(
                exact_probe(
                    args,
                    tabular_mdp,
                    lambda obs: jax.nn.softmax(actor.apply(p["pi"], normalized(obs))),
                    behaviour_probs,
                    lambda obs: q_value(q_hat_net, p["q_hat"], normalized(obs), None, args.symlog_targets),
                    lambda obs: critic.apply(p["v"], normalized(obs)),
                )
            )
        return out

    def train_interval(state, num_active):
        """iters_per_interval iterations (only the first num_active run: the last interval may be
        shorter, with no recompilation), then eval_episodes episodes of the mode of pi (never mu)
        and, with --variance-probe, the probe. Metrics are means over the interval
        (training.interval_metrics)."""
        skip = training.skip_iteration(iteration, state)
        state, stats = jax.lax.scan(
            lambda s, i: jax.lax.cond(i < num_active, iteration, skip, s), state, jnp.arange(iters_per_interval)
        )
        metrics = training.interval_metrics(stats, num_active, LAST_VALUE_METRICS)
        key, k_eval = jax.random.split(state.key)
        act = lambda obs: mode(spec, actor.apply(state.params["pi"], inputs(state, obs)))  # noqa: E731
        returns = training.evaluate(env, act, args.eval_episodes, k_eval)
        # eval_key: the evaluation's key, which params.msgpack keeps so that evaluate.py repeats it
        metrics.update(eval_return=returns.mean(), eval_return_std=returns.std(), eval_key=k_eval)
        if args.variance_probe:  # its own stream: the training's numbers do not depend on it
            metrics.update(probe(state, jax.random.fold_in(k_eval, 1)))
        return state._replace(key=key), metrics

    def q_value_of(net, params, obs, action=None):
        return q_value(net, params, obs, action, args.symlog_targets)

    return Trainer(
        init,
        iteration,
        rollout,
        fit_q,
        variance_rewards,
        fit_q_hat,
        None if closed else update_mu,
        log_mu,
        mu_dist,
        q_value_of,
        probe,
        train_interval,
        iters_per_interval,
        num_iterations,
        actor,
        critic,
        q_net,
        q_hat_net,
        torso,
    )


# ----------------------------------------------------------------------------------------------
# Diagnostics: the variance probe (--variance-probe N)
# ----------------------------------------------------------------------------------------------
def variance_probe(args, env, actor, critic, params, normalize, mu_dist, log_target, horizon: int, key) -> dict:
    """The claim BPO rests on, measured (docs/algorithm.md eq. 17): the discounted return of the
    policy pi over the first `horizon` steps from fresh start states, estimated from
    n = args.variance_probe segments in three ways with the same random numbers:
      on-policy, a ~ pi:          G = sum_t gamma^t r_t
      importance-weighted, a ~ mu: G = sum_t gamma^t (prod_(j<=t) pi_j/mu_j) r_t   (unclipped)
                                   and with the weights clipped as in training;
      V-trace, a ~ mu:             vs_0 = V(s_0) + sum_t gamma^t (prod_(j<=t) pi_j/mu_j) delta_t,
                                   delta_t = r_t + gamma V(s_t+1) - V(s_t), V(s_t+1) = 0 where the
                                   segment ends (eq. 17b: the unclipped lambda = 1 target, with the
                                   learned V as its baseline; on-policy it is G itself).
    All are unbiased for the same quantity (unclipped); BPO's mu should make the second's variance
    smaller. With mu = pi the first two are the same numbers. Environment rewards, unscaled;
    `normalize` maps raw observations to the networks' inputs. The ratios are nan (undefined) where
    the on-policy returns do not vary beyond float rounding: std(G) <= sqrt(horizon) * eps * mean|G|
    (eq. 17), e.g. once pi balances CartPole. Also: CV^2 = Var(G) / E[G]^2 of the on-policy
    estimate, a 95% bootstrap interval of probe_var_ratio, and KL(mu || mu's target) averaged over
    the on-policy segments' states, `log_target(obs, pi_dist, key)` giving, as a function of the
    action, the target's log-density up to a constant per state (log pi + (beta/2) log tilt, eq. 14,
    15, 18). `mu_dist(obs)` is mu's distribution at normalised observations before any mixing (its
    network, or the closed form); the segments a ~ mu act with (1 - mu_mix) pi + mu_mix mu (eq. 19),
    and the KL is mu's (before mixing: what step 7 fits; 0 up to rounding for the closed form)."""
    spec, n = env.action_spec, args.variance_probe
    mixing = behaviour_mixes(args)
    k_reset, k_steps, k_boot, k_kl = jax.random.split(key, 4)
    obs0, env_state0 = jax.vmap(env.reset)(jax.random.split(k_reset, n))
    value = lambda obs: critic.apply(params["v"], normalize(obs)) / args.reward_scale  # noqa: E731  (env units)

    def kl_to_target(obs, k):
        """KL(mu(.|s) || target(.|s)), per state: exact over discrete actions; with 8 samples of mu
        (and 8 of pi for the normaliser E_pi[sqrt(q_hat)]) for continuous ones."""
        mu_d, pi_dist = mu_dist(obs), actor.apply(params["pi"], obs)
        target = log_target(obs, pi_dist, jax.random.fold_in(k, 2))
        if spec.discrete:
            log_mu = jax.nn.log_softmax(mu_d)
            log_p = jax.nn.log_softmax(target(None))
            return jnp.sum(jnp.exp(log_mu) * (log_mu - log_p), -1)
        k_mu, k_pi = jax.random.split(k)
        a_mu = jax.vmap(lambda kk: sample(spec, mu_d, kk))(jax.random.split(k_mu, 8))
        a_pi = jax.vmap(lambda kk: sample(spec, pi_dist, kk))(jax.random.split(k_pi, 8))
        log_mu = jax.vmap(lambda a: log_prob(spec, mu_d, a))(a_mu)
        log_p = jax.vmap(target)(a_mu)
        log_z = jax.nn.logsumexp(jax.vmap(lambda a: target(a) - log_prob(spec, pi_dist, a))(a_pi), 0)
        return jnp.mean(log_mu - log_p, 0) + log_z - jnp.log(8.0)

    def act(obs, pi_dist, key, on_policy):
        """(a, log of the acting policy at a): a ~ pi, or a ~ the behaviour (eq. 19)."""
        if on_policy:
            action = sample(spec, pi_dist, key)
            return action, log_prob(spec, pi_dist, action)
        mu_d = mu_dist(obs)
        if not mixing:
            action = sample(spec, mu_d, key)
            return action, log_prob(spec, mu_d, action)
        action = behaviour_sample(spec, pi_dist, mu_d, args.mu_mix, key)
        return action, behaviour_log_prob(spec, pi_dist, mu_d, args.mu_mix, action)

    def segments(on_policy):
        def step(carry, x):
            obs, env_state, alive, discount, w, clip_carry, g, g_w, g_clip, g_vtrace, kl = carry
            k, t = x
            k_act, k_env = jax.random.split(k)
            pi_dist = actor.apply(params["pi"], normalize(obs))
            action, log_b = act(normalize(obs), pi_dist, k_act, on_policy)
            ratio = jnp.exp(log_prob(spec, pi_dist, action) - log_b)
            ts = jax.vmap(env.step)(jax.random.split(k_env, n), env_state, action)
            w = w * ratio
            w_clip, clip_carry = probe_clipped_weight(clip_carry, ratio, args.clip_rho, args.clip_c)
            r = alive * discount * ts.reward
            g, g_w, g_clip = g + r, g_w + w * r, g_clip + w_clip * r
            ended = ts.terminated | ts.truncated
            v_next = jnp.where(ended | (t == horizon - 1), 0.0, value(ts.obs))
            g_vtrace = g_vtrace + alive * discount * w * (ts.reward + args.gamma * v_next - value(obs))
            kl = kl + alive * kl_to_target(normalize(obs), jax.random.fold_in(k_kl, t))
            alive = alive * (1.0 - ended)  # the segment ends with its episode
            carry = (ts.obs, ts.state, alive, discount * args.gamma, w, clip_carry, g, g_w, g_clip, g_vtrace, kl)
            return carry, alive

        z = jnp.zeros(n)
        carry = (
            obs0,
            env_state0,
            jnp.ones(n),
            jnp.ones(n),
            jnp.ones(n),
            (jnp.full(n, jnp.nan), jnp.ones(n)),
            z,
            z,
            z,
            z,
            z,
        )
        carry, alive = jax.lax.scan(step, carry, (jax.random.split(k_steps, horizon), jnp.arange(horizon)))
        *_, g, g_w, g_clip, g_vtrace, kl = carry
        states = n + jnp.sum(alive[:-1])  # the states the segments visited
        return g, g_w, g_clip, value(obs0) + g_vtrace, jnp.sum(kl) / states

    g_pi, _, _, _, kl_mu_target = segments(on_policy=True)
    _, g_mu, g_mu_clip, g_vtrace, _ = segments(on_policy=False)
    # Var is shift-invariant: of the returns less their first, so that returns that are all one
    # number have variance exactly 0 whatever the rounding of their mean (a sum of n floats)
    var = lambda g: (g - g[0]).var(ddof=1)  # noqa: E731
    var_pi, var_mu, var_clip, var_vtrace = var(g_pi), var(g_mu), var(g_mu_clip), var(g_vtrace)
    se_diff = jnp.sqrt((var_pi + var_mu) / n)
    # Var(G) no larger than the rounding of a float sum of `horizon` terms (random-walk size
    # sqrt(horizon) eps/2 |G|, here with a factor 2 of margin) is no variance: ratio undefined
    resolution = (np.sqrt(horizon) * jnp.finfo(g_pi.dtype).eps * jnp.abs(g_pi).mean()) ** 2
    ratio = lambda var, var_pi=var_pi: jnp.where(var_pi > resolution, var / var_pi, jnp.nan)  # noqa: E731

    def resampled_ratio(k):  # the two samples drawn again, each with replacement from itself
        k_pi, k_mu = jax.random.split(k)
        return ratio(var(g_mu[jax.random.randint(k_mu, (n,), 0, n)]), var(g_pi[jax.random.randint(k_pi, (n,), 0, n)]))

    boot = jax.lax.map(resampled_ratio, jax.random.split(k_boot, PROBE_BOOTSTRAP))
    lo, hi = jnp.nanpercentile(boot, jnp.array([2.5, 97.5]))
    return dict(
        probe_pi_mean=g_pi.mean(),
        probe_pi_var=var_pi,
        probe_mu_mean=g_mu.mean(),
        probe_mu_var=var_mu,
        probe_var_ratio=ratio(var_mu),
        probe_se_diff=se_diff,
        # undefined (nan) where neither estimate varies beyond rounding: their means differ by rounding only
        probe_bias_z=jnp.where(
            (var_pi > resolution) | (var_mu > resolution), (g_mu.mean() - g_pi.mean()) / se_diff, jnp.nan
        ),
        probe_mu_clipped_mean=g_mu_clip.mean(),
        probe_mu_clipped_var=var_clip,
        probe_var_ratio_clipped=ratio(var_clip),
        probe_var_ratio_lo=lo,
        probe_var_ratio_hi=hi,
        probe_cv2=var_pi / g_pi.mean() ** 2,
        probe_vtrace_ratio=ratio(var_vtrace),
        probe_kl_mu_target=kl_mu_target,
    )


def exact_probe(args, mdp, pi_probs, mu_probs, head, value) -> dict:
    """On a tabular environment (envs/tabular), where the answer is known: the networks evaluated at
    every (state, t) and the exact figures of those tables (envs/tabular/exact_jax.py `probe_exact`,
    eq. 17c): the learned mu's exact variance ratio against mu*'s (of the current pi's exact q_hat)
    and against the exact target of its settings (--mu-target, --mu-temper, --mu-mix), the learned
    q_hat head's relative error (q_hat, or W with --mu-target vtrace), KL(mu || mu*) and the V-trace
    ratios. Each argument maps a batch of raw observations to pi's and the behaviour's probabilities
    (the mixture's, if it mixes), q_hat's head at every action (in value space) and V. q_hat and V
    are brought back to the environment's reward units (reward_scale; not with normalize_reward)."""
    tables = lambda f: policy_tables(f, mdp)  # noqa: E731
    return probe_exact(
        mdp,
        tables(pi_probs),
        tables(mu_probs),
        tables(head) / args.reward_scale**2,
        args.gamma,
        tables(value) / args.reward_scale,
        args.mu_target,
        args.mu_temper,
        args.mu_mix if behaviour_mixes(args) else 1.0,
        args.q_hat_floor / args.reward_scale**2,
    )


def probe_warning(row: dict) -> str | None:
    """The probe's two means estimate one quantity: a row where they differ by over 3 standard
    errors is worth a line on the console (runner.run prints it)."""
    z = row.get("probe_bias_z", 0.0)
    if abs(z) > 3:
        return (
            f"the variance probe's importance-weighted mean differs from the on-policy one by {z:.1f} standard "
            "errors (unbiased estimates should agree within about 3)"
        )
    return None


PROBE_BOOTSTRAP = 200  # resamples of the probe's segments for the interval of probe_var_ratio
PROBE_COLUMNS = (
    "probe_pi_mean",
    "probe_pi_var",
    "probe_mu_mean",
    "probe_mu_var",
    "probe_var_ratio",
    "probe_se_diff",
    "probe_bias_z",
    "probe_mu_clipped_mean",
    "probe_mu_clipped_var",
    "probe_var_ratio_clipped",
    "probe_var_ratio_lo",
    "probe_var_ratio_hi",
    "probe_cv2",
    "probe_vtrace_ratio",
    "probe_kl_mu_target",
)  # with --variance-probe N
EXACT_PROBE_COLUMNS = (
    "probe_exact_ratio",
    "probe_exact_ratio_opt",
    "q_hat_rel_error",
    "kl_mu_opt",
    "probe_exact_vtrace_ratio",
    "probe_exact_vtrace_ratio_opt",
    "probe_exact_vtrace_ratio_v",
    "probe_exact_var_pi",
    "probe_exact_J",
    "probe_exact_ratio_target",
    "probe_exact_vtrace_ratio_target",
    "kl_mu_target_exact",
    "probe_exact_ratio_vopt",
    "probe_exact_vtrace_ratio_vopt",
)  # with --variance-probe N on a tabular environment
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
    # BPO diagnostics: importance weights pi/mu of the rollout, the FQE and mu phases
    "ratio_mean",
    "ratio_max",
    "rho_clip_frac",
    "c_clip_frac",
    "kl_mu_pi",
    "ess",
    "q_loss",
    "q_hat_loss",
    "mu_loss",
    "q_mean",
    "q_hat_mean",
    "r_hat_mean",
    "q_target_clip_frac",
    "q_hat_target_clip_frac",
    "r_max",
    "r_min",
    "r_hat_max",
    "effective_horizon",
)  # c_clip_frac: the fraction of (t, k) ratio products clipped


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Args(runner.RunArgs):
    """BPO's hyperparameters; the run's own flags (env id, seeds, outputs, ...) are runner.RunArgs.
    The defaults are the reference's `cartpole_ppo` + `ppo_bpo_zero1.0_traj` settings run for 150k
    steps (about a minute for 4 seeds on a 2-core CPU)."""

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
    """decay every learning rate linearly to 0 over training (pi and V per optimizer step, mu and
    the Q heads by training progress)"""
    adam_eps: float = 1e-5
    """Adam epsilon"""
    max_grad_norm: float = 0.5
    """global-norm gradient clipping threshold of every optimizer"""
    gamma: float = 0.98
    """discount factor"""
    gae_lambda: float = 0.8
    """lambda of the trajectory-clipped lambda-returns"""
    clip_coef: float = 0.2
    """PPO surrogate clipping range epsilon"""
    anneal_clip: bool = True
    """decay the clipping range linearly to 0 over training"""
    clip_vloss: bool = False
    """clip the value loss as PureJaxRL and CleanRL do:
    max((V - vs)^2, (V_old + clip(V - V_old, +-clip_coef) - vs)^2)"""
    norm_adv: bool = True
    """normalise advantages within each minibatch"""
    ent_coef: float = 0.0
    """entropy bonus coefficient, applied to mu's loss (as in the reference), to pi's with --no-bpo"""
    vf_coef: float = 0.5
    """value loss coefficient (the loss is vf_coef * mean((V - vs)^2))"""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """hidden layer widths of pi and mu (and of V, unless critic_hidden_sizes is given)"""
    critic_hidden_sizes: tuple[int, ...] = ()
    """hidden layer widths of V; empty: the same as hidden_sizes"""
    actor_activation: Literal["tanh", "relu", "swish"] = "tanh"
    """activation of pi's and mu's hidden layers"""
    critic_activation: Literal["tanh", "relu", "swish"] = "tanh"
    """activation of the hidden layers of V, Q and q_hat"""
    kernel_init: Literal["orthogonal", "lecun_normal"] = "lecun_normal"
    """weight init of pi, mu, V: orthogonal (gain sqrt 2; 0.01 actor head, 1 critic head) or lecun_normal;
    a CNN torso's too (every network's)"""
    torso: Literal["mlp", "minatar-cnn", "nature-cnn", "auto"] = "mlp"
    """what turns an observation into the MLP heads' input (torsos.py): mlp, the observation flattened;
    minatar-cnn, MinAtar's convolution (16 filters 3x3, stride 1); nature-cnn, the BPO reference's
    featurizer (Nature-DQN's 3 convolutions, images of at least 36x36); auto, the convolutional one for
    image observations (MinAtar: minatar-cnn), mlp for vectors"""
    torso_shared: bool = True
    """with a CNN torso: one CNN feeds pi, V, mu, Q and q_hat, trained by the PPO loss of pi and V only
    (the reference's featurizer; FQE and mu's loss read its features as fixed); --no-torso-shared: each
    network has its own, trained by its own loss"""
    noise_hold_steps: int = 0
    """hold each Gaussian exploration noise draw for this many rollout steps, per environment (the
    reference's use_sde with sde_sample_freq); 0 or 1 draws new noise every step"""
    log_std_init: float = 0.0
    """initial log standard deviation of the Gaussian pi and mu (continuous actions)"""
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
    # --- BPO ---
    freeze_pi: bool = False
    """BPO as pure policy evaluation: pi and V keep their initial parameters (the PPO update is
    skipped), while Q, q_hat and mu train as usual: the setting of BPO's variance guarantee"""
    variance_reward: Literal["unbiased", "reference"] = "unbiased"
    """q_hat's reward r_hat: unbiased, r^2 + 2 gamma r V_pi(s'); or the reference's 2 r Q(s,a) - r^2,
    the same for deterministic rewards and biased by -2 Var(R) for stochastic ones (docs/algorithm.md eq. 2)"""
    no_bpo: bool = False
    """PPO inside this script (the reference's `bpo: False`): mu is pi at every rollout, the Q, q_hat
    and mu phases are skipped and the entropy bonus is pi's; trains exactly as ppo.py"""
    clip_rho: float = 1.0
    """truncation of the importance ratio in the TD-error weight: rho = min(pi/mu, clip_rho)"""
    clip_c: float = 1.0
    """truncation of the product of ratios along the trajectory: min(clip_c, prod pi/mu)"""
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
    mu_form: Literal["network", "closed"] = "network"
    """the behaviour policy mu: network, a network fitted towards pi q_hat^(beta/2) (step 7); closed,
    mu's logits log pi + (beta/2) log q_hat computed from pi and q_hat wherever mu is needed, with no
    mu network and no step 7 (discrete actions; the entropy bonus is then pi's) (docs/algorithm.md eq. 18)"""
    mu_temper: float = 1.0
    """beta in [0, 1]: mu ∝ pi q_hat^(beta/2), for both forms (1: pi sqrt(q_hat); 0: pi, on-policy data,
    exactly so with --mu-form closed) (eq. 18)"""
    mu_mix: float = 1.0
    """b in [0, 1]: rollouts act with (1 - b) pi + b mu, and log mu is that mixture's (1: mu alone;
    0: pi) (eq. 19)"""
    mu_target: Literal["second-moment", "vtrace"] = "second-moment"
    """what mu's tilt is: second-moment, q_hat = E[G^2 | s, a] (mu* for the importance-sampling
    estimate); vtrace, U = (Q - V_pi)^2 + W with W = Var(G | s, a) fitted by q_hat's head on the squared
    TD error of Q with discount gamma^2 (for the V-trace target, whose baseline is V) (eq. 21-23)"""
    weight_td: bool = True
    """weight FQE's TD loss by clip(pi/mu, 0.1, 10), normalised to mean 1"""
    clip_targets: bool = True
    """clip FQE targets to [min(r_min, 0), max(r_max, 0)] / (1 - discount), and q_hat in mu's target"""
    symlog_targets: bool = True
    """Q and q_hat predict symlog of their value, regress on symlog(target)"""
    q_hat_floor: float = 1e-6
    """q_hat (W with --mu-target vtrace) below this is read as this in mu's tilt, in the units of
    reward_scale: a hedge, since values below the head's accuracy tilt mu by noise (1e-6: the
    reference's floor, the least allowed; sweepable; docs/algorithm.md eq. 18b)"""
    q_hat_head: Literal["softplus", "linear"] = "softplus"
    """q_hat's output: softplus(x) + 1e-6 (positive, the reference's; its gradient vanishes as q_hat
    nears 0, so q_hat stalls above small targets) or linear (unbiased there; mu's target floors
    q_hat at --q-hat-floor either way)"""
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
    variance_probe: int = 0
    """at every evaluation, estimate pi's discounted return from this many segments on-policy and
    importance-weighted under mu, and report both means and variances (0: off)"""
    variance_probe_horizon: int = 0
    """steps per probe segment; 0: until gamma^t < 0.01, at most an episode"""


# fmt: off
# Presets, applied in order: a base (cartpole_ppo, mujoco_ppo, ...) then a BPO add-on (ppo_bpo...);
# where each value comes from: docs/presets.md.
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
        normalize_obs=False,  # as the reference
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
    # MuJoCo Playground's DM Control Suite PPO settings (what they are and how they differ: docs/presets.md)
    "playground_dm_control": dict(
        total_timesteps=60_000_000, num_envs=2048, num_steps=480, minibatch_size=30_720, num_epochs=16,
        learning_rate=1e-3, anneal_lr=False, adam_eps=1e-8, max_grad_norm=float("inf"), gamma=0.995,
        gae_lambda=0.95, clip_coef=0.3, anneal_clip=False, clip_vloss=False, norm_adv=True, ent_coef=0.01,
        vf_coef=0.25, hidden_sizes=(32, 32, 32, 32), critic_hidden_sizes=(256, 256, 256, 256, 256),
        actor_activation="swish", critic_activation="swish", kernel_init="lecun_normal",
        use_sde=False, log_std_init=-0.365, reward_scale=10.0, normalize_obs=True,
        normalize_reward=False, clip_actions=True, max_episode_steps=0, eval_every=5 * 983_040,
        # BPO phases (ours): the replay buffer holds one rollout (docs/presets.md)
        q_hidden_sizes=(256, 256), weight_td=True, clip_targets=True, replay_size=983_040,
        fqe_minibatch_size=30_720, mu_minibatch_size=15_360, fqe_epochs=20, mu_epochs=20,
    ),
    # PureJaxRL's PPO settings for gymnax's MinAtar games (as ppo.py's minatar_ppo); BPO phases ours:
    # the replay buffer holds one rollout, minibatches of PPO's size (docs/presets.md)
    "minatar_ppo": dict(
        total_timesteps=10_000_000, num_envs=64, num_steps=128, num_epochs=4, minibatch_size=1024,
        learning_rate=5e-3, anneal_lr=True, adam_eps=1e-5, max_grad_norm=0.5, gamma=0.99, gae_lambda=0.95,
        clip_coef=0.2, anneal_clip=False, clip_vloss=True, norm_adv=True, ent_coef=0.01, vf_coef=0.25,
        hidden_sizes=(64, 64), critic_hidden_sizes=(), actor_activation="relu", critic_activation="relu",
        kernel_init="orthogonal", normalize_obs=False, eval_every=10 * 8192,
        q_hidden_sizes=(64, 64), weight_td=True, clip_targets=True, replay_size=8192,
        fqe_minibatch_size=1024, mu_minibatch_size=1024, fqe_epochs=10, mu_epochs=10,
    ),
    "ppo_bpo": _PPO_BPO,
    "ppo_bpo_zero": _ZERO,
    "ppo_bpo_zero1.0": dict(_ZERO, clip_rho=1.0, clip_c=1.0),
    "ppo_bpo_zero1.0_1.5": dict(_ZERO, clip_rho=1.5, clip_c=1.0),
    "ppo_bpo_zero1.0_1.4": dict(_ZERO, clip_rho=1.4, clip_c=1.0),
    "ppo_bpo_zero1.0_traj": dict(_ZERO, clip_rho=1.0, clip_c=1.0),
    "ppo_bpo_zero1.5_traj": dict(_ZERO, clip_rho=1.5, clip_c=1.5),
}
# fmt: on


# What a Brax, a Playground or a MinAtar env id gets without --preset
PRESETS.update(
    {env_id: dict(preset, **envs.tabular.BPO_PRESETS[env_id]) for env_id, preset in envs.tabular.PRESETS.items()}
)

SUITE_PRESETS = {
    "brax": ["mujoco_ppo", "ppo_bpo_zero1.0_traj"],
    "playground": ["playground_dm_control", "ppo_bpo_zero1.0_traj"],
    "minatar": ["minatar_ppo", "ppo_bpo_zero1.0_traj"],
}

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
    "clip_rho",
    "clip_c",
    "weight_on_adv",
    "weight_td",
    "clip_targets",
    "symlog_reg_coef",
    "polyak_tau",
    "mu_temper",
    "mu_mix",
    "q_hat_floor",
)


# Flags added after runs of this script were made, and the value such a run behaved as: its
# config.json lacks them, and --resume fills them in (runner.resumed_args).
OLD_RUN_VALUES = dict(
    freeze_pi=False,
    variance_reward="reference",
    q_hat_head="softplus",
    mu_form="network",
    mu_temper=1.0,
    mu_mix=1.0,
    mu_target="second-moment",
    q_hat_floor=1e-6,
    torso="mlp",
    torso_shared=True,
)


def parse_args(argv: list[str] | None = None) -> Args:
    return runner.parse_args(Args, PRESETS, SUITE_PRESETS, argv, __doc__, OLD_RUN_VALUES)


def validate(args: Args) -> None:
    """runner.py's checks, then BPO's own."""
    runner.validate(args)
    if args.freeze_pi and args.no_bpo:
        raise runner.ConfigError("--freeze-pi with --no-bpo would train nothing (pi is frozen and there is no mu)")
    if args.critic_hidden_sizes and min(args.critic_hidden_sizes) <= 0:
        raise runner.ConfigError(f"--critic-hidden-sizes must be positive widths, got {args.critic_hidden_sizes}")
    runner.check_range(args, "reward_scale", lo=0.0, lo_open=True)
    for name in ("replay_size", "fqe_minibatch_size", "mu_minibatch_size"):
        if getattr(args, name) <= 0:
            raise runner.ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("fqe_epochs", "mu_epochs", "variance_probe_horizon"):
        if getattr(args, name) < 0:
            raise runner.ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    for name in ("clip_rho", "clip_c"):
        runner.check_range(args, name, lo=0.0, lo_open=True, inf_ok=True)  # inf: no truncation
    runner.check_range(args, "polyak_tau", lo=0.0, hi=1.0)
    for name in ("mu_temper", "mu_mix"):
        runner.check_range(args, name, lo=0.0, hi=1.0)
    runner.check_range(args, "q_hat_floor", lo=1e-6)
    if args.mu_target == "vtrace" and args.variance_reward == "reference":
        raise runner.ConfigError(
            "--variance-reward reference is q_hat's reward; with --mu-target vtrace q_hat's head fits W "
            "on the squared TD error instead (drop one of the two)"
        )
    if args.variance_probe == 1 or args.variance_probe < 0:
        raise runner.ConfigError(f"--variance-probe must be 0 (off) or at least 2 segments, got {args.variance_probe}")
    runner.check_range(args, "symlog_reg_coef", lo=0.0)
    if not args.q_hidden_sizes or min(args.q_hidden_sizes) <= 0:
        raise runner.ConfigError(f"--q-hidden-sizes must be one or more positive widths, got {args.q_hidden_sizes}")


def run(args: Args) -> dict:
    return runner.run(
        args,
        "bpo_traj",
        validate,
        make_train,
        runner.verbose_columns(args, METRIC_COLUMNS)
        + (PROBE_COLUMNS if args.variance_probe else ())
        + (EXACT_PROBE_COLUMNS if args.variance_probe and envs.is_tabular(args.env_id) else ()),
        SWEEPABLE,
        probe_warning,
    )


if __name__ == "__main__":
    runner.main(parse_args, run)
