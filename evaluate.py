"""Evaluate and watch a trained policy: a run of ppo.py, bpo.py or bpo_traj.py, again.

    python evaluate.py runs/bpo_CartPole-v1_20261124-101500                  # its final evaluation, repeated
    python evaluate.py runs/bpo_hopper_20261124-101500 --episodes 100        # more episodes, the first ones the same
    python evaluate.py runs/bpo_hopper_20261124-101500 --policy mu --stochastic   # BPO's behaviour policy, sampled
    python evaluate.py runs/ppo_hopper_20261124-101500 --seeds 0,3 --video --video-episodes 2

It reads the run's config.json and its parameters (params.msgpack, or with --checkpoint the latest
checkpoint), rebuilds the networks with the script that trained them, and runs --episodes episodes
of every chosen seed (in a sweep: of every member) in one compiled program, vmapped over them. It
prints a table of each seed's returns and their interquartile mean (IQM) over seeds with a
percentile-bootstrap interval (as compare.py), and writes <output-dir>/eval.json.

Keys: by default each seed's episodes are drawn with the key of that seed's last evaluation in the
run, which params.msgpack (and a checkpoint) keeps, so with the run's --eval-episodes the returns
are those of summary.json's final_eval_return, and with more episodes the first --eval-episodes of
them are the run's (`training.evaluate`). `--eval-seed S` draws fresh episodes instead (seed i's key:
fold_in(PRNGKey(S), i)).

`--video` writes one video per chosen seed of its first --video-episodes episodes (the same
episodes as the evaluation's first) to <output-dir>/videos/ (watch.py: MuJoCo environments through
mujoco.Renderer, headless with MUJOCO_GL=egl when no display is set; gymnax's classic control and
MinAtar through gymnax's visualisers). Videos never change the evaluation's numbers.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
import runner
import training
import watch  # before anything imports MuJoCo (none of the above does): it chooses MuJoCo's OpenGL backend

runner.configure_jax()

ALGOS = ("ppo", "bpo", "bpo_traj")


@dataclass(frozen=True)
class Args:
    run: tyro.conf.Positional[str]
    """the output folder of a ppo.py, bpo.py or bpo_traj.py run"""
    episodes: int = 0
    """episodes per seed; 0: the run's --eval-episodes (with the run's keys: its final evaluation)"""
    policy: Literal["pi", "mu"] = "pi"
    """the policy: pi, or BPO's behaviour policy mu (bpo.py and bpo_traj.py runs)"""
    stochastic: bool = False
    """sample actions from the policy instead of taking the mode of its distribution (as evaluations do)"""
    seeds: str = ""
    """the seeds to evaluate, comma-separated (e.g. 0,3); empty: every seed of the run"""
    checkpoint: bool = False
    """the parameters of the run's latest checkpoint instead of params.msgpack"""
    eval_seed: int | None = None
    """draw fresh episodes from this seed instead of the keys of the run's last evaluation"""
    video: bool = False
    """write a video of each chosen seed's first --video-episodes episodes to <output-dir>/videos/"""
    video_episodes: int = 1
    """episodes per video"""
    output_dir: str | None = None
    """where eval.json (and videos/) go; default: the run's folder"""
    confidence: float = 0.95
    """confidence level of the bootstrap interval of the IQM"""
    resamples: int = 2000
    """bootstrap resamples"""
    seed: int = 0
    """seed of the bootstrap"""


class EvalError(ValueError):
    """Bad input: one line, before anything is compiled."""


@dataclass
class Loaded:
    """A run, read from its folder: its script, arguments and parameters of the chosen rows."""

    module: object
    config: dict
    args: object
    rows: list  # (member, seed) of each chosen row
    params: dict  # [rows, ...]
    obs_rms: dict  # [rows, ...]
    eval_keys: np.ndarray | None  # [rows, 2]: the key of each row's last evaluation in the run
    source: str  # params.msgpack or checkpoints/<iteration>


def load(a: Args) -> Loaded:
    """The run in a.run with the rows a.seeds chooses; EvalError for bad input."""
    path = os.path.join(a.run, "config.json")
    if not os.path.isdir(a.run):
        raise EvalError(f"{a.run!r} is not a folder")
    if not os.path.isfile(path):
        raise EvalError(f"{a.run!r} is not the output folder of a run (no config.json there)")
    with open(path) as f:
        config = json.load(f)
    algo = config.get("algo")
    if algo not in ALGOS:
        raise EvalError(f"{path}: algo {algo!r} is not one of {', '.join(ALGOS)}")
    if a.policy == "mu" and algo == "ppo":
        raise EvalError("--policy mu: a ppo.py run has no behaviour policy (mu is BPO's: bpo.py, bpo_traj.py)")
    module = importlib.import_module(algo)
    fields = {f.name for f in dataclasses.fields(module.Args)}
    unknown = sorted(set(config["args"]) - fields)  # flags added since the run take their defaults
    if unknown:
        raise EvalError(f"{a.run!r}: flags that today's {algo}.py does not have ({', '.join(unknown[:4])})")
    args = module.Args(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["args"].items()})
    members = config.get("members") or [{}]
    all_rows = [(k, s) for k in range(len(members)) for s in config["seeds"]]
    chosen = _chosen_seeds(a.seeds, config["seeds"])
    index = [i for i, (_, s) in enumerate(all_rows) if s in chosen]
    if a.checkpoint:
        params, obs_rms, eval_keys, source = _from_checkpoint(a.run, module, args, config, len(all_rows))
    else:
        params_path = os.path.join(a.run, "params.msgpack")
        if not os.path.isfile(params_path):
            raise EvalError(
                f"{a.run!r} holds no parameters (no params.msgpack: the run stopped before its first "
                "evaluation?); --checkpoint reads the latest checkpoint"
            )
        with open(params_path, "rb") as f:
            saved = flax.serialization.msgpack_restore(f.read())
        params, obs_rms, eval_keys, source = saved["params"], saved["obs_rms"], saved.get("eval_key"), "params.msgpack"
    take = lambda tree: jax.tree.map(lambda x: np.asarray(x)[np.asarray(index)], tree)
    return Loaded(
        module,
        config,
        args,
        [all_rows[i] for i in index],
        take(params),
        take(obs_rms),
        None if eval_keys is None else take(np.asarray(eval_keys, np.uint32)),
        source,
    )


def _chosen_seeds(text: str, seeds: list[int]) -> list[int]:
    if not text.strip():
        return list(seeds)
    try:
        chosen = [int(s) for s in text.replace(" ", ",").split(",") if s]
    except ValueError:
        raise EvalError(f"--seeds {text!r}: give seeds as integers, e.g. --seeds 0,3") from None
    unknown = [s for s in chosen if s not in seeds]
    if unknown:
        raise EvalError(f"--seeds: the run trained seeds {', '.join(map(str, seeds))}, not {unknown[0]}")
    return chosen


def _from_checkpoint(folder, module, args, config, num_rows):
    """params, obs_rms and evaluation keys of the latest checkpoint (orbax), of every row."""
    ckpt_dir = os.path.join(folder, "checkpoints")
    steps = [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise EvalError(f"--checkpoint: {folder!r} has no checkpoint (checkpoints/ is missing or empty)")
    env = runner.make_env(args)
    members = config.get("members") or [{}]
    sweep = runner.Sweep(tuple(members[0]), members)
    hp = runner.sweep_inputs(sweep, len(config["seeds"]))
    values = runner.with_values(module.make_train, args, env)
    keys = jnp.stack([jax.random.PRNGKey(s) for _ in members for s in config["seeds"]])
    like = jax.eval_shape(jax.vmap(lambda key, hp: values(hp).init(key)), keys, hp)
    state, meta = runner.restore_checkpoint(folder, like)  # the newest intact one, verified
    eval_keys = meta.get("eval_keys")
    return state.params, state.obs_rms._asdict(), eval_keys, f"checkpoints/{meta.get('done_iters', max(steps))}"


def check(a: Args) -> None:
    for name in ("episodes", "video_episodes", "resamples"):
        if getattr(a, name) < (0 if name == "episodes" else 1):
            raise EvalError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    if not 0 < a.confidence < 1:
        raise EvalError(f"--confidence must be in (0, 1), got {a.confidence}")


def keys_of(loaded: Loaded, a: Args) -> tuple[jax.Array, str]:
    """Each row's key, and where it comes from."""
    if a.eval_seed is None and loaded.eval_keys is not None:
        return jnp.asarray(loaded.eval_keys), "the keys of the run's last evaluation"
    base = 0 if a.eval_seed is None else a.eval_seed
    why = "" if a.eval_seed is not None else " (the run kept no evaluation keys)"
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(base), s) for _, s in loaded.rows])
    return keys, f"fresh keys from --eval-seed {base}{why}"


def evaluate(a: Args) -> dict:
    check(a)
    loaded = load(a)
    args, module = loaded.args, loaded.module
    env_id = envs.canonical_id(args.env_id)
    if a.video:
        watch.check_renderable(env_id)
    out = a.output_dir or a.run
    env = runner.make_env(args)
    trainer = module.make_train(args, env)
    episodes = a.episodes or args.eval_episodes
    policy = watch.policy(module, trainer, args, a.policy, a.stochastic)
    keys, key_source = keys_of(loaded, a)

    def returns_of(p, rms, key):  # the returns, their mean and std computed as the run computes them
        returns = training.evaluate(env, policy(p, rms), episodes, key, a.stochastic)
        return returns, returns.mean(), returns.std()

    t0 = time.perf_counter()
    returns = jax.device_get(jax.jit(jax.vmap(returns_of))(loaded.params, loaded.obs_rms, keys))  # [rows, ...]
    seconds = time.perf_counter() - t0

    summary = _read_summary(a.run)
    result = report(a, loaded, returns, episodes, key_source, summary)
    result["seconds"] = seconds
    if a.video:
        result["videos"] = videos(a, loaded, env, policy, keys, out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.join(out, 'eval.json')}")
    return result


def _read_summary(folder: str) -> dict | None:
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def report(a: Args, loaded: Loaded, returns: tuple, episodes: int, key_source: str, summary) -> dict:
    """The table (printed) and eval.json's contents; returns: (returns [rows, episodes], means, stds)."""
    import compare

    config, sweep = loaded.config, bool(loaded.config.get("members"))
    seeds = config["seeds"]
    same_as_run = (
        episodes == loaded.args.eval_episodes
        and a.eval_seed is None
        and loaded.eval_keys is not None
        and a.policy == "pi"
        and not a.stochastic
        and loaded.source == "params.msgpack"
        and summary is not None
    )
    print(
        f"{config['algo']}.py on {config['env_id']}: {a.policy}{' (sampled)' if a.stochastic else ' (mode)'}, "
        f"{episodes} episodes per seed, parameters of {loaded.source}, {key_source}"
    )
    head = f"{'member':>6} " * sweep + f"{'seed':>6} {'mean':>10} {'std':>9} {'min':>9} {'max':>9}"
    print(head + (f" {'run final eval':>15}" if same_as_run else ""))
    rows = []
    returns, means, stds = returns
    for i, (k, s) in enumerate(loaded.rows):
        r = returns[i]
        row = dict(seed=s, returns=r.tolist(), mean=float(means[i]), std=float(stds[i]))
        if sweep:
            row["member"] = k
        line = f"{k:>6} " * sweep + f"{s:>6} {means[i]:>10.2f} {stds[i]:>9.2f} {r.min():>9.2f} {r.max():>9.2f}"
        if same_as_run:
            final = summary["final_eval_return"]
            run_value = (final[k] if sweep else final)[seeds.index(s)]
            row["run_final_eval_return"] = run_value
            line += f" {run_value if run_value is None else format(run_value, '.2f'):>15}"
        rows.append(row)
        print(line)
    groups = []
    bootstrap = dict(confidence=a.confidence, resamples=a.resamples, seed=a.seed)
    for k in sorted({k for k, _ in loaded.rows}):
        means = np.array([row["mean"] for row, (m, _) in zip(rows, loaded.rows) if m == k])
        lo, hi = compare.iqm_interval(means, compare.Args(runs=(), **bootstrap))
        group = dict(iqm=float(compare.iqm(means)), interval=[float(lo), float(hi)], seeds=len(means))
        if sweep:
            group["member"] = k
            group["values"] = config["members"][k]
        groups.append(group)
        label = f"member {k} ({runner.member_label(config['members'][k])}): " if sweep else ""
        print(
            f"{label}IQM over {len(means)} seeds of the mean return: {group['iqm']:.2f} "
            f"[{lo:.2f}, {hi:.2f}] ({a.confidence:.0%} bootstrap interval)"
        )
    return dict(
        run=a.run,
        algo=config["algo"],
        env_id=config["env_id"],
        policy=a.policy,
        stochastic=a.stochastic,
        episodes=episodes,
        parameters=loaded.source,
        keys=key_source,
        rows=rows,
        iqm=groups if sweep else groups[0],
        confidence=a.confidence,
    )


def videos(a: Args, loaded: Loaded, env, policy, keys, out: str) -> list[str]:
    """One video per chosen row: its first --video-episodes episodes, as evaluated."""
    render = watch.renderer(loaded.args.env_id, loaded.args.env_backend)
    rec = jax.jit(
        jax.vmap(
            lambda p, rms, key: watch.record(env, policy(p, rms), a.video_episodes, key, render.extract, a.stochastic)
        )
    )(loaded.params, loaded.obs_rms, keys)
    rec = jax.device_get(rec)
    sweep = bool(loaded.config.get("members"))
    paths = []
    for i, (k, s) in enumerate(loaded.rows):
        row = watch.Recording(*jax.tree.map(lambda x: x[i], tuple(rec)))
        label = (f"member {k} " if sweep else "") + f"seed {s}  "
        frames = watch.episode_frames(row, a.video_episodes, render.render, label)
        name = f"eval_{a.policy}{'_sampled' if a.stochastic else ''}" + (f"_member{k}" if sweep else "") + f"_seed{s}"
        paths.append(watch.write_video(os.path.join(out, "videos", name), frames, render.fps))
        print(f"video of seed {s}: {paths[-1]} ({len(frames)} frames, returns {np.round(row.episode_returns, 2)})")
    return paths


def parse(argv: list[str] | None = None) -> Args:
    return tyro.cli(Args, args=argv, description=__doc__)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    try:
        evaluate(a)
    except (EvalError, runner.ConfigError, envs.UnknownEnvError, watch.NotRenderable) as e:
        raise SystemExit(f"evaluate.py: error: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
