"""Finite MDPs as environments: tabular tasks whose variances are known exactly (envs/tabular/exact.py).

A `TabularMDP` holds numpy arrays:

    P[s, a, s']   transition probabilities           r[s, a]     mean rewards
    d0[s]         start distribution                 horizon H   episode length
    term[s, a]    the episode ends after the transition (s, a) with this probability (0: never)
    reward_noise  "none" (R = r), "bernoulli" (R ~ Bernoulli(r), r in [0, 1]) or "gaussian" (R ~ N(r, reward_std^2))

The episode is t = 0, ..., H - 1: at step t the agent in state s_t takes a_t, receives R_t, and the
next state s_{t+1} ~ P[s_t, a_t] is drawn; the episode ends after step t with probability
term[s_t, a_t], and always after step H - 1 (R_t, s_{t+1} and the end are independent given s_t, a_t).
`raw_env(mdp)` is this process as a RawEnv (jax): observation = one-hot(s_t) (S entries) followed by
one-hot(t) (H entries), float32, so that stationary networks can represent the time-dependent Q_t,
q_hat_t and mu_t; the observation of the step that reaches t = H (an episode's final observation)
has an all-zero time part. Both ends are terminations (terminated=True, never truncated):
`envs.make` gives them the time limit H, and with_time_limit marks truncated only where the raw
environment did not terminate.

Registered ids (`TABULAR_IDS`, built by `make_mdp`), with the exact figures of the uniform pi at the
preset's gamma (`python -m envs.tabular ENV_ID`): var_pi = Var(G) on-policy, and the variance under
mu* ∝ pi sqrt(q_hat) divided by var_pi, of the per-decision importance-sampling estimate (IS) and of
the unclipped V-trace target (lambda = 1, exact V); envs/tabular/exact.py defines all three.

    id                  S   A    H  gamma   var_pi     IS ratio   V-trace ratio
    tabular-sparse     10   3   20  0.9     48.55      0.2424     inf (9.15)
    tabular-constant    5   2  100  0.98    184.8      0.99961    1.00047
    tabular-bandit      1   3    1  0.99    0.2456     0.7220     1.129
    tabular-deepsea-5  25   2    5  0.99    0.02765    0.01711    inf (15.5)
    tabular-deepsea-8  64   2    8  0.99    0.003348   0.03885    inf (2.64)

inf: mu* gives probability 0 to actions that pi takes and whose q_hat is 0 (zero-reward actions at
the last step, where q_hat = E[R^2]). The IS estimate never needs them (their return is 0), but
V-trace's delta there is -V_t(s) != 0, so its variance grows without bound as mu approaches mu*
(at mu* itself V-trace is biased). In brackets: mu ∝ pi sqrt(max(q_hat, 1e-6)), the floor of
docs/algorithm.md eq. (14).

`PRESETS` and `BPO_PRESETS` hold training settings per id (the scripts' field names).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

TABULAR_IDS = ("tabular-sparse", "tabular-constant", "tabular-bandit", "tabular-deepsea-5", "tabular-deepsea-8")
REWARD_NOISES = ("none", "bernoulli", "gaussian")


class TabularMDP(NamedTuple):
    """A finite-horizon MDP (numpy, float64); build one with `tabular_mdp`, which checks it."""

    P: np.ndarray  # [S, A, S'] transition probabilities
    r: np.ndarray  # [S, A] mean rewards E[R | s, a]
    d0: np.ndarray  # [S] start distribution
    horizon: int  # H: the episode ends after step H - 1 at the latest
    term: np.ndarray  # [S, A] probability that the episode ends after the transition (s, a)
    reward_noise: str = "none"  # "none", "bernoulli" or "gaussian"
    reward_std: np.ndarray | None = None  # [S, A] standard deviation of a Gaussian reward

    @property
    def num_states(self) -> int:
        return self.r.shape[0]

    @property
    def num_actions(self) -> int:
        return self.r.shape[1]


def tabular_mdp(P, r, d0, horizon: int, term=None, reward_noise: str = "none", reward_std=None) -> TabularMDP:
    """A checked TabularMDP: float64 arrays, rows of P and d0 summing to 1, term in [0, 1] (zeros if
    None), Bernoulli means in [0, 1], a Gaussian's reward_std given and >= 0."""
    P, r, d0 = (np.asarray(x, np.float64) for x in (P, r, d0))
    S, A = r.shape
    term = np.zeros((S, A)) if term is None else np.asarray(term, np.float64)
    if P.shape != (S, A, S) or d0.shape != (S,) or term.shape != (S, A):
        raise ValueError(
            f"shapes: P {P.shape}, r {r.shape}, d0 {d0.shape}, term {term.shape}; need [S, A, S], [S, A], [S], [S, A]"
        )
    if P.min() < 0 or not np.allclose(P.sum(-1), 1) or d0.min() < 0 or not np.isclose(d0.sum(), 1):
        raise ValueError("P[s, a] and d0 must be probability distributions")
    if horizon < 1 or term.min() < 0 or term.max() > 1:
        raise ValueError(f"need horizon >= 1 and term in [0, 1], got horizon {horizon}")
    if reward_noise not in REWARD_NOISES:
        raise ValueError(f"reward_noise {reward_noise!r} is not one of {', '.join(REWARD_NOISES)}")
    if reward_noise == "bernoulli" and (r.min() < 0 or r.max() > 1):
        raise ValueError("Bernoulli rewards need means r in [0, 1]")
    if reward_noise == "gaussian":
        if reward_std is None or np.min(reward_std) < 0:
            raise ValueError("Gaussian rewards need reward_std >= 0")
        reward_std = np.broadcast_to(np.asarray(reward_std, np.float64), (S, A)).copy()
    else:
        reward_std = None
    return TabularMDP(P, r, d0, int(horizon), term, reward_noise, reward_std)


def reward_variance(mdp: TabularMDP) -> np.ndarray:
    """Var(R | s, a) [S, A]: 0, r (1 - r) (Bernoulli) or reward_std^2 (Gaussian)."""
    if mdp.reward_noise == "bernoulli":
        return mdp.r * (1 - mdp.r)
    if mdp.reward_noise == "gaussian":
        return mdp.reward_std**2
    return np.zeros_like(mdp.r)


# ----------------------------------------------------------------------------------------------
# The registered MDPs
# ----------------------------------------------------------------------------------------------
SPARSE_SEED = 2024


def sparse_mdp() -> TabularMDP:
    """tabular-sparse: a random MDP (numpy default_rng(SPARSE_SEED)), 10 states, 3 actions, H = 20,
    every P[s, a] a Dirichlet(0.3) draw (a few likely successors), reward 10 on 3 of the 30 (s, a)
    pairs (10%) and 0 elsewhere, start uniform over the states. Use gamma 0.9.

    Exact figures, uniform pi, gamma 0.9: J = 10.15, var_pi = 48.55, ratio_mu_star = 0.2424,
    ratio_vtrace_mu_star = inf (mu* never takes the 6 zero-reward actions of the 3 states with a
    reward at t = H - 1; 9.15 with q_hat floored at 1e-6). At gamma 0.99: 157.7, 0.2687, inf."""
    rng = np.random.default_rng(SPARSE_SEED)
    S, A = 10, 3
    P = rng.dirichlet(np.full(S, 0.3), size=(S, A))
    r = np.zeros(S * A)
    r[rng.choice(S * A, size=3, replace=False)] = 10.0
    return tabular_mdp(P, r.reshape(S, A), np.full(S, 1 / S), horizon=20)


def constant_mdp() -> TabularMDP:
    """tabular-constant, the negative control with CartPole's structure: reward 1 every step until
    the episode ends. 5 states (a pole's lean, 0 = far left, 2 = upright, 4 = far right), action 0
    pushes left, 1 right: s' = s -+ 1 with probability 0.6, s with 0.3, s +- 1 with 0.1 (clipped to
    0..4); the episode ends after a step with probability term[s, a] = 0.010 upright, 0.012 one
    step off, 0.015 at the edges (0.02 pushing further out), or at H = 100; start uniform over
    states 1-3. Use gamma 0.98 (CartPole's preset).

    Exact figures, uniform pi, gamma 0.98: J = 28.99, var_pi = 184.8, ratio_mu_star = 0.99961 (mu*
    gains 0.039%: the termination rates differ across states and actions just enough for q_hat to
    differ a little; tuned to stay within 0.1% of 1), ratio_vtrace_mu_star = 1.00047. At gamma 0.99:
    447.1, 0.99960, 1.00047."""
    S, A = 5, 2
    P = np.zeros((S, A, S))
    for s in range(S):
        for a, push in ((0, -1), (1, 1)):
            for move, p in ((push, 0.6), (0, 0.3), (-push, 0.1)):
                P[s, a, min(max(s + move, 0), S - 1)] += p
    lean = np.array([0.015, 0.012, 0.01, 0.012, 0.015])
    term = np.stack([lean, lean], 1)
    term[0, 0] = term[S - 1, 1] = 0.02
    return tabular_mdp(P, np.ones((S, A)), np.array([0, 1, 1, 1, 0]) / 3, horizon=100, term=term)


BANDIT_P = (0.1, 0.3, 0.9)


def bandit_mdp() -> TabularMDP:
    """tabular-bandit: one step (H = 1), 3 arms, Bernoulli rewards with p = BANDIT_P = (0.1, 0.3, 0.9).
    gamma plays no part (0.99 in the preset).

    Exact figures, uniform pi: J = 13/30, var_pi = 0.2456, ratio_mu_star = 0.7220
    (q_hat = E[R^2] = p, mu* ∝ sqrt(p)), ratio_vtrace_mu_star = 1.129."""
    A = len(BANDIT_P)
    return tabular_mdp(np.ones((1, A, 1)), np.array([BANDIT_P]), np.ones(1), horizon=1, reward_noise="bernoulli")


# gymnax's DeepSea(size).action_mapping: jax.random.bernoulli(jax.random.key(0), 0.5, (size, size)),
# copied so that building the MDP needs no jax (tests/test_tabular.py checks the copy against gymnax).
DEEP_SEA_ACTION_MAPPING = {
    5: ((0, 0, 1, 1, 0), (1, 1, 0, 0, 1), (0, 1, 0, 0, 0), (0, 0, 0, 0, 1), (1, 0, 0, 0, 0)),
    8: (
        (0, 0, 1, 1, 0, 1, 1, 0),
        (0, 1, 0, 1, 0, 0, 0, 0),
        (0, 0, 0, 1, 1, 0, 0, 0),
        (0, 0, 0, 0, 1, 1, 1, 0),
        (1, 0, 1, 0, 0, 1, 1, 1),
        (1, 1, 0, 0, 0, 1, 1, 1),
        (0, 0, 0, 1, 1, 0, 0, 0),
        (1, 0, 1, 1, 1, 1, 1, 0),
    ),
}
DEEP_SEA_MOVE_COST = 0.01  # gymnax's unscaled_move_cost: each right move costs 0.01 / N


def deep_sea_mdp(size: int) -> TabularMDP:
    """tabular-deepsea-N: gymnax's DeepSea-bsuite (bsuite's deep_sea) with its default parameters
    (deterministic=True, randomize_actions=True, sample_action_map=False) as a tabular MDP.
    State s = row * N + column on the N x N grid, start (0, 0), H = N. At (row, column) the action
    equal to DEEP_SEA_ACTION_MAPPING[N][row][column] is "right" (gymnax's fixed per-cell mapping,
    drawn once with key 0 and the same in every episode; with the uniform pi the figures do not
    depend on the mapping): column + 1 (at most N - 1), the other action column - 1 (at least 0);
    every step goes one row down and the episode ends after row N - 1 (term = 1 on the last row,
    whose successors are drawn in the last row; the solver never uses them). Reward
    1{column = N - 1 and right} - 0.01 / N * 1{right}: the treasure at the bottom right, and a cost
    for every right move, so the best return is 1 - 0.01 = 0.99. Use gamma 0.99.

    Exact figures, uniform pi, gamma 0.99 (var_pi, ratio_mu_star, ratio_vtrace_mu_star):
    N = 5: 0.02765, 0.01711, inf (15.5 with q_hat floored at 1e-6);
    N = 8: 0.003348, 0.03885, inf (2.64).
    inf: in the last row mu* never moves left (q_hat = 0 there) while V-trace's delta is -V != 0.
    Without the move cost mu* would follow the treasure path alone: ratio_mu_star = 0 exactly."""
    if size not in DEEP_SEA_ACTION_MAPPING:
        raise ValueError(f"DeepSea size {size} has no stored action mapping; sizes: {sorted(DEEP_SEA_ACTION_MAPPING)}")
    N, S = size, size * size
    right_action = np.asarray(DEEP_SEA_ACTION_MAPPING[size])
    P, r, term = np.zeros((S, 2, S)), np.zeros((S, 2)), np.zeros((S, 2))
    for row in range(N):
        for col in range(N):
            s = row * N + col
            for a in range(2):
                right = a == right_action[row, col]
                next_col = min(col + 1, N - 1) if right else max(col - 1, 0)
                P[s, a, min(row + 1, N - 1) * N + next_col] = 1.0
                r[s, a] = float(right and col == N - 1) - right * DEEP_SEA_MOVE_COST / N
                term[s, a] = float(row == N - 1)
    d0 = np.zeros(S)
    d0[0] = 1.0
    return tabular_mdp(P, r, d0, horizon=N, term=term)


_BUILDERS = {
    "tabular-sparse": sparse_mdp,
    "tabular-constant": constant_mdp,
    "tabular-bandit": bandit_mdp,
    "tabular-deepsea-5": lambda: deep_sea_mdp(5),
    "tabular-deepsea-8": lambda: deep_sea_mdp(8),
}


def make_mdp(env_id: str) -> TabularMDP:
    """The TabularMDP of a registered id (TABULAR_IDS)."""
    if env_id not in _BUILDERS:
        raise ValueError(f"unknown tabular env id {env_id!r}; choose one of {', '.join(TABULAR_IDS)}")
    return _BUILDERS[env_id]()


# ----------------------------------------------------------------------------------------------
# The environment (jax)
# ----------------------------------------------------------------------------------------------
class TabularState(NamedTuple):
    s: Any  # int32 state
    t: Any  # int32 step of the episode (0 at the start)


def observe(s, t, num_states: int, horizon: int):
    """one-hot(s) [S] followed by one-hot(t) [H], float32; t = H (after the last step) gives zeros."""
    import jax
    import jax.numpy as jnp

    return jnp.concatenate([jax.nn.one_hot(s, num_states), jax.nn.one_hot(t, horizon)]).astype(jnp.float32)


def cumulative(p: np.ndarray) -> np.ndarray:
    """The cumulative sums of distributions p[..., K] for inverse-CDF sampling, float32: the first k
    with u < cum[k], u ~ U[0, 1), has probability p[k]. From the last positive entry on, cum is
    exactly 1, so float rounding never selects an outcome of probability 0."""
    cum = np.cumsum(p, -1)
    last = (p > 0) * np.arange(p.shape[-1])  # index of the last positive entry, per distribution
    after_last = np.arange(p.shape[-1]) >= last.max(-1, keepdims=True)
    return np.where(after_last, 1.0, cum / cum[..., -1:]).astype(np.float32)


def raw_env(mdp: TabularMDP):
    """The MDP as a RawEnv (see envs/core.py): reset draws s_0 ~ d0 with t = 0; step draws
    s' ~ P[s, a], R (the mean r[s, a], or a Bernoulli or Gaussian sample), and ends the episode
    (terminated) with probability term[s, a], or when t + 1 = H. One uniform draw per step serves
    s', the end and a Bernoulli reward (inverse CDF; a single call of the random number
    generator keeps the compiled programs small: each call is inlined)."""
    import jax
    import jax.numpy as jnp

    from envs.core import ActionSpec, RawEnv

    S, A, H = mdp.num_states, mdp.num_actions, mdp.horizon
    cum_P, cum_d0 = jnp.asarray(cumulative(mdp.P)), jnp.asarray(cumulative(mdp.d0))
    r, term = jnp.asarray(mdp.r, jnp.float32), jnp.asarray(mdp.term, jnp.float32)
    std = jnp.asarray(mdp.reward_std if mdp.reward_std is not None else np.zeros((S, A)), jnp.float32)

    def draw(u, cum):  # the first k with u < cum[k]
        return jnp.sum(u >= cum[:-1]).astype(jnp.int32)

    def reset(key):
        s = draw(jax.random.uniform(key), cum_d0)
        t = jnp.int32(0)
        return observe(s, t, S, H), TabularState(s, t)

    def step(key, state, action):
        u = jax.random.uniform(key, (3,))
        s, a = state.s, jnp.asarray(action, jnp.int32)
        s_next = draw(u[0], cum_P[s, a])
        if mdp.reward_noise == "bernoulli":
            reward = (u[2] < r[s, a]).astype(jnp.float32)
        elif mdp.reward_noise == "gaussian":
            reward = r[s, a] + std[s, a] * jax.random.normal(jax.random.fold_in(key, 1))
        else:
            reward = r[s, a]
        t = state.t + 1
        terminated = (t >= H) | (u[1] < term[s, a])
        return observe(s_next, t, S, H), TabularState(s_next, t), reward, terminated

    return RawEnv(reset, step, (S + H,), ActionSpec(discrete=True, n=A))


def make_tabular(env_id: str):
    """The raw environment of a registered id and its horizon H (the time limit to give it)."""
    mdp = make_mdp(env_id)
    return raw_env(mdp), mdp.horizon


# ----------------------------------------------------------------------------------------------
# Training settings per id (the scripts' field names): ppo.py, bpo.py and bpo_traj.py add them to their PRESETS
# ----------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # rollouts of 2 episodes per environment (H = 20); 8 x 40 = 320 = 4 minibatches of 80
    "tabular-sparse": dict(
        env_id="tabular-sparse",
        gamma=0.9,
        total_timesteps=204_800,
        num_envs=8,
        num_steps=40,
        minibatch_size=80,
        num_epochs=10,
        eval_every=10_240,
    ),
    # CartPole's cartpole_ppo shape: 8 x 32 = 256 = 1 minibatch, gamma 0.98
    "tabular-constant": dict(
        env_id="tabular-constant",
        gamma=0.98,
        total_timesteps=102_400,
        num_envs=8,
        num_steps=32,
        minibatch_size=256,
        num_epochs=20,
        eval_every=10_240,
    ),
    # one-step episodes: 8 x 16 = 128 = 2 minibatches of 64
    "tabular-bandit": dict(
        env_id="tabular-bandit",
        gamma=0.99,
        total_timesteps=25_600,
        num_envs=8,
        num_steps=16,
        minibatch_size=64,
        num_epochs=4,
        eval_every=2_560,
    ),
    # rollouts of 4 episodes per environment (H = N): 8 x 20 = 160 = 4 minibatches of 40
    "tabular-deepsea-5": dict(
        env_id="tabular-deepsea-5",
        gamma=0.99,
        total_timesteps=102_400,
        num_envs=8,
        num_steps=20,
        minibatch_size=40,
        num_epochs=10,
        eval_every=10_240,
    ),
    # 8 x 32 = 256 = 4 minibatches of 64; a uniform pi reaches the treasure once in 256 episodes
    "tabular-deepsea-8": dict(
        env_id="tabular-deepsea-8",
        gamma=0.99,
        total_timesteps=409_600,
        num_envs=8,
        num_steps=32,
        minibatch_size=64,
        num_epochs=10,
        eval_every=20_480,
    ),
}
# The BPO phases (bpo.py, bpo_traj.py), cut like cartpole_ppo's: a replay buffer of 4 rollouts, FQE
# minibatches of a quarter of it and mu minibatches of an eighth, 10 passes each.
_PHASES = dict(fqe_epochs=10, mu_epochs=10)
BPO_PRESETS: dict[str, dict] = {
    "tabular-sparse": dict(replay_size=1280, fqe_minibatch_size=320, mu_minibatch_size=160, **_PHASES),
    "tabular-constant": dict(replay_size=1024, fqe_minibatch_size=256, mu_minibatch_size=128, **_PHASES),
    "tabular-bandit": dict(replay_size=512, fqe_minibatch_size=128, mu_minibatch_size=64, **_PHASES),
    "tabular-deepsea-5": dict(replay_size=640, fqe_minibatch_size=160, mu_minibatch_size=80, **_PHASES),
    "tabular-deepsea-8": dict(replay_size=1024, fqe_minibatch_size=256, mu_minibatch_size=128, **_PHASES),
}
