"""ppo.py against a peer library's PPO: Rejax (PyPI `rejax`), on the same task with the same settings.

    pip install -r benchmarks/requirements-peers.txt       # requirements.txt plus rejax
    python benchmarks/peers.py                              # 16 seeds x 500k steps, CartPole-v1
    python benchmarks/peers.py --num-seeds 2 --total-timesteps 50000 --out runs/peers.json
    python benchmarks/peers.py --matched-eval               # Rejax evaluates as ppo.py does

Both train CartPole-v1 with PureJaxRL's settings (ppo.py's `--preset purejaxrl_cartpole`: 4 envs x
128 steps, 4 epochs x 4 minibatches of 128, lr 2.5e-4 annealed, ent 0.01, clipped value loss, clip
0.2, gamma 0.99, lambda 0.95, max_grad_norm 0.5, tanh 64x64), every seed at once with vmap, one
after the other in this process: Rejax first (`jax.jit(jax.vmap(algo.train))`, its README's way),
then ppo.py through its Python API (`ppo.parse_args` and `ppo.run`, i.e. `runner.run`, writing its
outputs into a temporary folder). Each setting is mapped onto Rejax's PPO config explicitly, and both
configurations are printed side by side, with the settings Rejax cannot express.

Evaluation is counted in both, each library's own default: Rejax's eval callback (128 episodes of
the sampled policy every `eval_freq` = 4096 env steps, and one before training) runs inside its
compiled `train`; ppo.py evaluates 10 episodes of the deterministic policy every `--eval-every`
env steps inside its compiled interval (runner.py). Rejax's default evaluates far more (at 500k
steps, 123 x 128 episodes of up to 500 steps against ppo.py's 52 x 10): `--matched-eval` puts it on
ppo.py's schedule and episode count, for the comparison without that difference. Both are timed the
same way:
- compile: Rejax `lower` + `compile` of the whole vmapped `train`; ppo.py runner's
  `compile_seconds` (the seeds' jitted `init` and `lower` + `compile` of the vmapped interval);
- training: wall time until the results are on the host (Rejax: one call, `block_until_ready`;
  ppo.py: runner's `train_seconds`, the sum of its intervals; the checkpoints it saves, on by
  default as a user runs it, are outside that sum and reported beside it);
- env steps/s = seeds x env steps per seed / training seconds;
- final return: mean over seeds of each seed's last evaluation.

gymnax 1.0 made `Environment.step` return six values (obs, state, reward, terminated, truncated,
info); Rejax 0.1.3 still unpacks five, so its environment goes through `FiveTupleStep` (below).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

ENV_ID = "CartPole-v1"
PPO_PRESET = "purejaxrl_cartpole"
REJAX_EVAL_EPISODES = 128  # hard-coded in Rejax's default eval callback (rejax/algos/algorithm.py)


# ----------------------------------------------------------------------------------------------
# The gymnax adapter
# ----------------------------------------------------------------------------------------------
class FiveTupleStep:
    """A gymnax (>= 1.0) environment whose `step` returns the pre-1.0 five values
    (obs, state, reward, done, info), done = terminated or truncated.

    Rejax 0.1.3 calls `env.step(key, state, action, params)` in two places and unpacks five values
    in both: the rollout (`VectorizedEnvMixin.vmap_step`, used by `PPO.collect_trajectories`) and
    evaluation (`rejax.evaluate.evaluate_single`). gymnax 1.0's `step` returns six (terminated and
    truncated apart). Before gymnax 1.0, `done` included the time limit, so `terminated | truncated`
    is the value Rejax was written for. `step` still auto-resets as gymnax's does, and `info` keeps
    gymnax's `terminated`, `truncated` and `final_observation`. Everything else (`reset`,
    `default_params`, `action_space`, `observation_space`, ...) is the wrapped environment's: Rejax
    calls no other method that changed (not `step_env`)."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found on the adapter. `env` and dunders are refused so that
        # copy.deepcopy (Rejax deep-copies its config) does not recurse before `env` is set.
        if name == "env" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action, params)
        return obs, state, reward, jnp.logical_or(terminated, truncated), info


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bench:
    """Rejax's PPO and ppo.py on CartPole-v1 with PureJaxRL's settings (ppo.py's --preset
    purejaxrl_cartpole): env steps/s, compile times, final returns and their ratio."""

    num_seeds: int = 16
    """seeds each library trains together (vmapped): seed, seed+1, ..., seed+num_seeds-1"""
    seed: int = 0
    """first seed (both libraries get jax.random.PRNGKey(seed + i) for seed i)"""
    total_timesteps: int = 500_000
    """environment steps per seed; ppo.py runs whole iterations of 4 x 128 = 512 steps (499,712 for
    500k), and Rejax is given that same number"""
    eval_every: int = 10_000
    """ppo.py's --eval-every: env steps per seed between its evaluations (its default)"""
    eval_episodes: int = 10
    """ppo.py's --eval-episodes: deterministic-policy episodes per evaluation (its default)"""
    checkpoint_every: int = 10
    """ppo.py's --checkpoint-every (its default, as a user runs it: a checkpoint every 10
    evaluation intervals and at the end); 0 turns checkpoints off"""
    rejax_eval_freq: int = 4096
    """Rejax's eval_freq: env steps per seed between its evaluations (its default)"""
    rejax_eval_episodes: int = REJAX_EVAL_EPISODES
    """episodes per Rejax evaluation (its default callback's 128; another number runs the same
    callback, rejax.evaluate.evaluate, with that many)"""
    rejax_initial_eval: bool = True
    """Rejax also evaluates before training (its default, skip_initial_evaluation=False)"""
    matched_eval: bool = False
    """Rejax evaluates on ppo.py's schedule instead of its own: every ppo.py interval (whole
    iterations of --eval-every), --eval-episodes episodes, none before training (overrides the
    three --rejax-eval flags; Rejax's evaluation policy stays its sampled one)"""
    ppo_output_dir: str = ""
    """keep ppo.py's run outputs (metrics.csv, summary.json, ...) in this folder; default: a
    temporary folder, deleted at the end"""
    out: str = ""
    """if set, write every figure, both configurations and the notes to this JSON file"""


# ----------------------------------------------------------------------------------------------
# ppo.py
# ----------------------------------------------------------------------------------------------
def ppo_argv(bench: Bench) -> list[str]:
    """ppo.py's flags for this benchmark (the output folder is added by run_ppo)."""
    return [
        "--preset",
        PPO_PRESET,
        "--env-id",
        ENV_ID,
        "--seed",
        str(bench.seed),
        "--num-seeds",
        str(bench.num_seeds),
        "--total-timesteps",
        str(bench.total_timesteps),
        "--eval-every",
        str(bench.eval_every),
        "--eval-episodes",
        str(bench.eval_episodes),
        "--checkpoint-every",
        str(bench.checkpoint_every),
    ]


def run_ppo(bench: Bench) -> dict:
    """ppo.py as a user runs it, through runner.run; figures from its summary.json and metrics.csv."""
    import csv

    import ppo

    out = bench.ppo_output_dir or tempfile.mkdtemp(prefix="peers_ppo_")
    args = ppo.parse_args(ppo_argv(bench) + ["--output-dir", out, "--overwrite"])
    try:
        summary = ppo.run(args)
        with open(os.path.join(out, "metrics.csv"), newline="") as f:
            rows = list(csv.DictReader(f))
    finally:
        if not bench.ppo_output_dir:
            shutil.rmtree(out, ignore_errors=True)
    if not summary.get("completed"):
        raise SystemExit("peers.py: ppo.py's run did not complete (interrupted?)")
    batch = args.num_envs * args.num_steps
    evals = len({r["env_steps"] for r in rows})
    # CartPole pays 1 per step, so an evaluation's mean return x its episodes is the env steps it took.
    eval_steps = sum(float(r["eval_return"]) for r in rows) * args.eval_episodes / len(summary["seeds"])
    checkpoint_seconds = summary["checkpoints_saved"] * (summary["checkpoint_seconds_mean"] or 0.0)
    steps_total = summary["env_steps"] * len(summary["seeds"])
    return dict(
        command="python ppo.py " + " ".join(ppo_argv(bench)),
        args=dataclasses.asdict(args),
        compile_seconds=summary["compile_seconds"],
        train_seconds=summary["train_seconds"],
        env_steps_per_seed=summary["env_steps"],
        env_steps_per_second=summary["env_steps_per_second"],
        final_eval_return=summary["final_eval_return"],
        final_eval_return_mean=summary["final_eval_return_mean"],
        evaluations=evals,
        eval_episodes=args.eval_episodes,
        eval_policy="deterministic (argmax of pi)",
        eval_env_steps_per_seed=eval_steps,
        checkpoints_saved=summary["checkpoints_saved"],
        checkpoint_seconds=checkpoint_seconds,
        env_steps_per_second_with_checkpoints=steps_total / (summary["train_seconds"] + checkpoint_seconds),
        iterations=summary["env_steps"] // batch,
        output_dir=bench.ppo_output_dir or None,
    )


# ----------------------------------------------------------------------------------------------
# Rejax
# ----------------------------------------------------------------------------------------------
def make_rejax(args, bench: Bench):
    """Rejax's PPO configured from ppo.py's resolved arguments, setting by setting; returns the
    algorithm and what the schedule and iteration count were derived from."""
    import gymnax
    import optax
    from rejax import PPO
    from rejax.evaluate import evaluate

    batch = args.num_envs * args.num_steps
    num_minibatches = batch // args.minibatch_size
    eval_freq, eval_episodes, initial_eval = bench.rejax_eval_freq, bench.rejax_eval_episodes, bench.rejax_initial_eval
    if bench.matched_eval:  # ppo.py's interval: whole iterations (runner.py's iters_per_interval)
        eval_freq = max(1, min(args.eval_every // batch, args.total_timesteps // batch)) * batch
        eval_episodes, initial_eval = args.eval_episodes, False
    # Rejax's train runs ceil(total / eval_freq) evaluation intervals of ceil(eval_freq / batch)
    # iterations each. It is given ppo.py's own number of steps (whole iterations).
    total = (args.total_timesteps // batch) * batch
    iters_per_eval = math.ceil(eval_freq / batch)
    iterations = math.ceil(total / eval_freq) * iters_per_eval
    updates = iterations * args.num_epochs * num_minibatches
    # Rejax has no annealing flag; its learning_rate goes straight into optax.adam, which takes a
    # schedule: ppo.py's own (linear to 0 per optimizer step over the whole run).
    lr = optax.linear_schedule(args.learning_rate, 0.0, updates) if args.anneal_lr else args.learning_rate
    env, env_params = gymnax.make(ENV_ID)
    algo = PPO.create(
        env=FiveTupleStep(env),
        env_params=env_params,
        total_timesteps=total,
        eval_freq=eval_freq,
        skip_initial_evaluation=not initial_eval,
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        num_epochs=args.num_epochs,
        num_minibatches=num_minibatches,
        learning_rate=lr,
        max_grad_norm=args.max_grad_norm,
        gamma=args.gamma,
        gae_lambda=args.gae_lambda,
        clip_eps=args.clip_coef,
        vf_coef=2.0 * args.vf_coef,  # Rejax: vf_coef * 0.5 * squared error; ppo.py: vf_coef * squared error
        ent_coef=args.ent_coef,
        normalize_observations=args.normalize_obs,
        normalize_rewards=args.normalize_reward,
        agent_kwargs=dict(activation=args.actor_activation, hidden_layer_sizes=tuple(args.hidden_sizes)),
    )
    if eval_episodes != REJAX_EVAL_EPISODES:
        env_, params_ = algo.env, algo.env_params

        def eval_callback(algo, ts, rng):  # Rejax's default callback, another number of episodes
            return evaluate(algo.make_act(ts), rng, env_, params_, eval_episodes, params_.max_steps_in_episode)

        algo = algo.replace(eval_callback=eval_callback)
    return algo, dict(
        total_timesteps=total,
        iterations=iterations,
        updates=updates,
        num_minibatches=num_minibatches,
        eval_freq=eval_freq,
        eval_episodes=eval_episodes,
        initial_eval=initial_eval,
        iters_per_eval=iters_per_eval,
        matched_eval=bench.matched_eval,
    )


def run_rejax(algo, seeds: list[int]) -> dict:
    """Compile and run Rejax's vmapped train once, the way its README does (jit of vmap)."""
    keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
    t0 = time.perf_counter()
    train = jax.jit(jax.vmap(algo.train)).lower(keys).compile()
    compile_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts, (lengths, returns) = jax.block_until_ready(train(keys))
    train_seconds = time.perf_counter() - t0
    steps = np.asarray(ts.global_step)  # per seed: num_envs per env step
    lengths, returns = np.asarray(lengths), np.asarray(returns)  # [seed, evaluation, episode]
    final = returns[:, -1].mean(-1)
    return dict(
        compile_seconds=compile_seconds,
        train_seconds=train_seconds,
        env_steps_per_seed=int(steps[0]),
        env_steps_per_second=float(steps.sum()) / train_seconds,
        final_eval_return=final.tolist(),
        final_eval_return_mean=float(final.mean()),
        evaluations=int(returns.shape[1]),
        eval_episodes=int(returns.shape[2]),
        eval_policy="sampled from pi (Rejax's act)",
        eval_env_steps_per_seed=float(lengths.sum() / len(seeds)),
    )


# ----------------------------------------------------------------------------------------------
# The two configurations, side by side
# ----------------------------------------------------------------------------------------------
def config_rows(args, algo, derived: dict, bench: Bench, time_limit: int) -> list[dict]:
    """(setting, ppo.py, Rejax, status, note): status is `same` (the same value or code path),
    `equivalent` (written differently, the same mathematics) or `differs` (Rejax cannot express
    ppo.py's setting, or each library's own default is kept on purpose)."""
    batch = args.num_envs * args.num_steps
    lr = (
        f"{args.learning_rate:g} -> 0 linear per optimizer step over "
        f"{(args.total_timesteps // batch) * args.num_epochs * (batch // args.minibatch_size):,} steps"
        if args.anneal_lr
        else f"{args.learning_rate:g}"
    )
    rj_lr = (
        f"optax.linear_schedule({args.learning_rate:g}, 0, {derived['updates']:,})"
        if args.anneal_lr
        else f"{algo.learning_rate:g}"
    )

    def row(setting, ours, theirs, status=None, note=""):
        return dict(
            setting=setting,
            ppo=str(ours),
            rejax=str(theirs),
            status=status or ("same" if str(ours).split("=")[-1] == str(theirs).split("=")[-1] else "differs"),
            note=note,
        )

    return [
        row(
            "environment",
            f"{ENV_ID} (gymnax step_env + envs/ time limit {time_limit})",
            f"gymnax.make({ENV_ID!r}) via FiveTupleStep, max_steps_in_episode={algo.env_params.max_steps_in_episode}",
            "same",
            "same dynamics, 500-step limit, auto-reset",
        ),
        row(
            "seeds (vmapped)",
            f"num_seeds={args.num_seeds}",
            f"vmap over {args.num_seeds} keys",
            "same",
            "both PRNGKey(seed + i)",
        ),
        row(
            "env steps per seed",
            f"{(args.total_timesteps // batch) * batch:,}",
            f"{derived['iterations'] * batch:,}",
            "same" if derived["iterations"] == args.total_timesteps // batch else "differs",
            ""
            if derived["iterations"] == args.total_timesteps // batch
            else "Rejax runs whole eval intervals of ceil(eval_freq / batch) iterations: more steps "
            "(env steps/s use each one's own count)",
        ),
        row("parallel envs", f"num_envs={args.num_envs}", f"num_envs={algo.num_envs}"),
        row("rollout length", f"num_steps={args.num_steps}", f"num_steps={algo.num_steps}"),
        row("epochs", f"num_epochs={args.num_epochs}", f"num_epochs={algo.num_epochs}"),
        row(
            "minibatches",
            f"minibatch_size={args.minibatch_size} ({batch // args.minibatch_size} minibatches)",
            f"num_minibatches={algo.num_minibatches} (minibatch_size {algo.minibatch_size})",
            "same",
        ),
        row(
            "learning rate",
            lr,
            rj_lr,
            "same",
            "Rejax has no anneal flag: its learning_rate goes into optax.adam, given ppo.py's schedule",
        ),
        row(
            "Adam epsilon",
            f"adam_eps={args.adam_eps:g}",
            "1e-08 (optax default, not configurable)",
            "differs",
            "cannot be set in Rejax",
        ),
        row(
            "gradient clipping",
            f"max_grad_norm={args.max_grad_norm:g}: global norm over pi and V together",
            f"max_grad_norm={algo.max_grad_norm:g}: optax.clip, each gradient entry to +-{algo.max_grad_norm:g}, "
            "per network",
            "differs",
            "Rejax's max_grad_norm clips element-wise, not by norm",
        ),
        row(
            "optimizer",
            "one Adam over pi and V",
            "one Adam per network (actor_ts, critic_ts)",
            "equivalent",
            "Adam is element-wise; only the clipping above couples the two",
        ),
        row("gamma", f"gamma={args.gamma:g}", f"gamma={algo.gamma:g}"),
        row("GAE lambda", f"gae_lambda={args.gae_lambda:g}", f"gae_lambda={algo.gae_lambda:g}"),
        row(
            "surrogate clip",
            f"clip_coef={args.clip_coef:g} (anneal_clip={args.anneal_clip})",
            f"clip_eps={algo.clip_eps:g} (constant)",
            "same" if not args.anneal_clip else "differs",
        ),
        row(
            "value loss",
            f"clip_vloss={args.clip_vloss}, vf_coef={args.vf_coef:g} x mean(max(sq, clipped sq))",
            f"vf_coef={algo.vf_coef:g} x 0.5 x mean(max(sq, clipped sq)), clipped by clip_eps",
            "equivalent" if args.clip_vloss else "differs",
            "the same loss (PureJaxRL's vf_coef 0.5 on 0.5 x MSE)",
        ),
        row("entropy bonus", f"ent_coef={args.ent_coef:g}", f"ent_coef={algo.ent_coef:g}"),
        row(
            "advantage normalisation",
            f"norm_adv={args.norm_adv} (per minibatch)",
            "always, per minibatch",
            "same" if args.norm_adv else "differs",
        ),
        row(
            "networks",
            f"separate actor and critic, hidden {tuple(args.hidden_sizes)}, {args.actor_activation}",
            f"DiscretePolicy + VNetwork, hidden_layer_sizes {tuple(algo.actor.hidden_layer_sizes)}, "
            f"{getattr(algo.actor.activation, '__name__', algo.actor.activation)}",
            "same",
        ),
        row(
            "weight init",
            f"kernel_init={args.kernel_init} (gain sqrt 2; heads 0.01 and 1), zero bias",
            "flax Dense default: lecun_normal, zero bias (not configurable)",
            "differs",
            "cannot be set in Rejax; does not change the compute",
        ),
        row(
            "observation normalisation",
            f"normalize_obs={args.normalize_obs}",
            f"normalize_observations={algo.normalize_observations}",
        ),
        row(
            "reward normalisation",
            f"normalize_reward={args.normalize_reward}",
            f"normalize_rewards={algo.normalize_rewards}",
        ),
        row(
            "time-limit truncation",
            "bootstrapped from V(true final obs) (eq. 4; no flag to turn off)",
            "treated as termination (done = terminated or truncated), as PureJaxRL",
            "differs",
            "cannot be matched without editing either",
        ),
        row(
            "evaluation",
            f"every eval_every={args.eval_every:,} steps (every "
            f"{max(1, min(args.eval_every // batch, args.total_timesteps // batch))} "
            f"iterations), {args.eval_episodes} episodes, deterministic policy, none at step 0",
            f"every eval_freq={algo.eval_freq:,} steps ({derived['iters_per_eval']} iterations), "
            f"{derived['eval_episodes']} episodes, sampled policy"
            f"{', plus one at step 0' if not algo.skip_initial_evaluation else ''}",
            "differs",
            (
                "--matched-eval: Rejax on ppo.py's schedule and episode count; the policies still differ"
                if bench.matched_eval
                else "each library's default"
            )
            + "; counted in both timings",
        ),
        row(
            "checkpoints",
            f"checkpoint_every={args.checkpoint_every}" + (" (+ one at the end)" if args.checkpoint_every else ""),
            "none (Rejax has none)",
            "differs" if args.checkpoint_every else "same",
            "ppo.py's saves are outside its train_seconds; reported beside it",
        ),
    ]


def print_table(rows: list[dict]) -> None:
    w = [
        max(len(r[k]) for r in rows + [dict(setting="setting", ppo="ppo.py", rejax="Rejax PPO", status="")])
        for k in ("setting", "ppo", "rejax")
    ]
    print(
        f"{'setting':<{w[0]}}  {'ppo.py (--preset ' + PPO_PRESET + ')':<{w[1]}}  "
        f"{'Rejax PPO.create(...)':<{w[2]}}  status"
    )
    for r in rows:
        print(f"{r['setting']:<{w[0]}}  {r['ppo']:<{w[1]}}  {r['rejax']:<{w[2]}}  {r['status']}")
    notes = [r for r in rows if r["note"]]
    print("\nnotes:")
    for r in notes:
        print(f"  {r['setting']}: {r['note']}")


def versions() -> dict:
    out = {}
    for pkg in ("rejax", "jax", "jaxlib", "flax", "optax", "gymnax", "distrax"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    out["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")  # the compilation options of both
    return out


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    bench = tyro.cli(Bench, args=argv, prog="peers.py")
    # ppo.py first: importing it applies runner.configure_jax(), the CPU compilation options,
    # before anything starts XLA (which importing rejax does), so both libraries compile with the
    # same options (XLA_FLAGS printed).
    import ppo
    import runner
    from throughput import write_json

    try:
        import rejax  # noqa: F401
    except ModuleNotFoundError:
        raise SystemExit("peers.py: error: rejax is not installed: pip install -r benchmarks/requirements-peers.txt")

    for name in ("num_seeds", "total_timesteps", "rejax_eval_freq", "rejax_eval_episodes"):
        if getattr(bench, name) <= 0:
            raise SystemExit(
                f"peers.py: error: --{name.replace('_', '-')} must be positive, got {getattr(bench, name)}"
            )
    args = ppo.parse_args(ppo_argv(bench))
    try:
        ppo.validate(args)
    except runner.ConfigError as e:
        raise SystemExit(f"peers.py: error: {e}")
    seeds = list(range(bench.seed, bench.seed + bench.num_seeds))
    algo, derived = make_rejax(args, bench)
    rows = config_rows(args, algo, derived, bench, runner.make_env(args).max_episode_steps)
    device = jax.devices()[0]
    vers = versions()
    print(
        f"Rejax {vers['rejax']} vs ppo.py on {ENV_ID}, {len(seeds)} seeds x {bench.total_timesteps:,} steps, "
        f"{device.platform}: {device.device_kind} (jax {vers['jax']}, gymnax {vers['gymnax']}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, for both)\n"
    )
    print_table(rows)

    print(f"\n== Rejax: jax.jit(jax.vmap(algo.train)), {len(seeds)} seeds ==", flush=True)
    rj = run_rejax(algo, seeds)
    print(
        f"compile {rj['compile_seconds']:.1f}s | train {rj['train_seconds']:.1f}s | "
        f"{rj['env_steps_per_second']:,.0f} env steps/s | final eval return {rj['final_eval_return_mean']:.1f}",
        flush=True,
    )

    print(
        f"\n== ppo.py: runner.run (checkpoints "
        f"{'every ' + str(bench.checkpoint_every) + ' intervals' if bench.checkpoint_every else 'off'}) ==",
        flush=True,
    )
    ours = run_ppo(bench)
    if not bench.ppo_output_dir:
        print("(that temporary folder is deleted now; --ppo-output-dir keeps the outputs)")

    ratio = ours["env_steps_per_second"] / rj["env_steps_per_second"]
    ratio_ckpt = ours["env_steps_per_second_with_checkpoints"] / rj["env_steps_per_second"]
    print("\n== Result (evaluation counted in both, inside each one's timed training) ==")
    print(
        f"{'':8} {'env steps/s':>12} {'compile s':>10} {'train s':>9} {'steps/seed':>11} {'final return':>13} "
        f"{'evals x episodes':>17} {'eval steps/seed':>16}"
    )
    for name, r in (("Rejax", rj), ("ppo.py", ours)):
        print(
            f"{name:8} {r['env_steps_per_second']:>12,.0f} {r['compile_seconds']:>10.1f} {r['train_seconds']:>9.1f} "
            f"{r['env_steps_per_seed']:>11,} {r['final_eval_return_mean']:>13.1f} "
            f"{str(r['evaluations']) + ' x ' + str(r['eval_episodes']):>17} {r['eval_env_steps_per_seed']:>16,.0f}"
        )
    if derived["matched_eval"]:
        print("\n--matched-eval: Rejax evaluated on ppo.py's schedule (not its default).", end="")
    print(
        f"\nRejax evaluates {rj['evaluations']} times x {rj['eval_episodes']} episodes ({rj['eval_policy']}); "
        f"ppo.py {ours['evaluations']} times x {ours['eval_episodes']} episodes ({ours['eval_policy']})."
    )
    if bench.checkpoint_every:
        print(
            f"ppo.py saved {ours['checkpoints_saved']} checkpoints ({ours['checkpoint_seconds']:.1f}s, outside its "
            f"train time); with them: {ours['env_steps_per_second_with_checkpoints']:,.0f} env steps/s, "
            f"{ratio_ckpt:.2f}x Rejax"
        )
    else:
        print("ppo.py ran without checkpoints (--checkpoint-every 0).")
    print(f"ppo.py / Rejax env steps/s: {ratio:.2f}x (goal >= 1.5x)")

    result = dict(
        env_id=ENV_ID,
        seeds=seeds,
        bench=dataclasses.asdict(bench),
        device=f"{device.platform}: {device.device_kind}",
        versions=vers,
        rejax=rj,
        ppo=ours,
        ratio_env_steps_per_second=ratio,
        ratio_env_steps_per_second_with_checkpoints=ratio_ckpt,
        ratio_compile_seconds=ours["compile_seconds"] / rj["compile_seconds"],
        rejax_derived=derived,
        config=rows,
        evaluation_counted="both: Rejax's eval callback inside its compiled train ("
        + ("on ppo.py's schedule, --matched-eval" if bench.matched_eval else "its defaults")
        + "); ppo.py's evaluation every --eval-every steps inside its compiled interval",
        ppo_checkpoints="on" if bench.checkpoint_every else "off",
    )
    if bench.out:
        write_json(bench.out, result)
        print(f"figures in {bench.out}")
    return result


if __name__ == "__main__":
    main()
