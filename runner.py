"""The host side of a training run, shared by ppo.py, bpo.py and bpo_traj.py.

Each script holds its whole algorithm: the networks, the estimator, the losses and `make_train`,
which builds the compiled pieces of one seed (`init`, the iteration, `evaluate`, `train_chunk`).
Everything that is not the algorithm lives here, once:

- the command line: presets applied in order, then tyro flags (`parse_args`), `--resume` with the
  saved configuration, the checks every script shares (`validate`), the environment (`make_env`);
- the run (`run`): the output folder, `config.json`, the seeds' initial states, compiling the
  vmapped `train_chunk` once, calling it once per evaluation interval, `metrics.csv` rows as they
  arrive, progress lines, TensorBoard, `summary.json`, `params.msgpack` and `curves.png`;
- long runs: checkpoints of the complete training state with orbax-checkpoint, exact resume, and a
  per-seed divergence guard (a seed that goes non-finite is frozen and flagged, the others train
  on with exactly the numbers they would have had);
- interruption: Ctrl-C (SIGINT) or SIGTERM stop the run at the end of the interval in flight, save
  a checkpoint, and every output then describes the same, last completed interval; the process
  exits non-zero with the command that resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import json
import os
import resource
import signal
import sys
import shutil
import time
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs

OUTPUT_FILES = ("config.json", "metrics.csv", "summary.json", "params.msgpack", "curves.png")
OUTPUT_FOLDERS = ("checkpoints", "tb")
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


class ConfigError(ValueError):
    """Bad input, reported as one line before anything is compiled."""


# ----------------------------------------------------------------------------------------------
# Command line: presets, flags, checks, the environment
# ----------------------------------------------------------------------------------------------
def from_reference_names(values: dict) -> dict:
    """Presets may use the reference's names: use_sde with sde_sample_freq is noise_hold_steps."""
    values = dict(values)
    if "use_sde" in values:
        use_sde, freq = values.pop("use_sde"), values.pop("sde_sample_freq", 1)
        values["noise_hold_steps"] = freq if use_sde else 0
    return values


def apply_presets(args, presets: dict[str, dict], names) -> Any:
    """`args` with the named presets applied in order (a later preset wins where two set a field)."""
    for name in names:
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(presets)}")
        args = dataclasses.replace(args, **from_reference_names(presets[name]))
    return dataclasses.replace(args, preset=tuple(names))


def parse_args(args_type, presets: dict[str, dict], suite_presets: dict[str, list[str]], argv, description: str):
    """Presets first (their values become the defaults `--help` shows), then every other flag.
    A Brax or Playground env id given without --preset gets `suite_presets["brax"]` or
    `suite_presets["playground"]` (CartPole settings would not do). With --resume DIR, the run's
    saved configuration is the default instead, and no flag may change it but a larger
    --total-timesteps (and --checkpoint-every, --tensorboard)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="*", default=None)
    pre.add_argument("--env-id", default=args_type.env_id)
    pre.add_argument("--resume", default=None)
    known = pre.parse_known_args(argv)[0]
    if known.resume is not None:
        return resumed_args(args_type, known.resume, argv, description)
    names = known.preset
    if names is None:
        suite = "brax" if envs.is_brax(known.env_id) else "playground" if envs.is_playground(known.env_id) else None
        names = list(suite_presets.get(suite, []))
        if names:
            print(f"{known.env_id} is a {suite.title()} task: using --preset {' '.join(names)} (pass --preset to choose)")
    default = apply_presets(args_type(), presets, names)
    return tyro.cli(args_type, args=argv, default=default, description=description)


RESUME_MAY_CHANGE = ("resume", "output_dir", "overwrite", "total_timesteps", "checkpoint_every", "tensorboard")


def resumed_args(args_type, folder: str, argv, description: str):
    """The configuration saved in folder/config.json, with the flags given; a one-line error for a
    flag that would change the run."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"--resume {folder!r}: no config.json there (is it the output folder of a run?)")
    with open(path) as f:
        config = json.load(f)
    saved, fields = config["args"], {f.name for f in dataclasses.fields(args_type)}
    if set(saved) != fields:
        differ = sorted(set(saved) ^ fields)
        raise ConfigError(f"--resume {folder!r}: a run of {config['algo']}.py, whose flags differ from this "
                          f"script's ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})")
    saved = args_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    saved = dataclasses.replace(saved, resume=folder, output_dir=folder)
    args = tyro.cli(args_type, args=argv, default=saved, description=description)
    for name in sorted(fields - set(RESUME_MAY_CHANGE)):
        if getattr(args, name) != getattr(saved, name):
            raise ConfigError(f"--resume: {_flag(name)} {getattr(args, name)} differs from the run's "
                              f"{getattr(saved, name)}; only a larger --total-timesteps may change it")
    if args.total_timesteps < saved.total_timesteps:
        raise ConfigError(f"--resume: --total-timesteps {args.total_timesteps} is less than the run's "
                          f"{saved.total_timesteps} (it may only grow)")
    if args.output_dir != folder:
        raise ConfigError(f"--resume writes into {folder!r}; --output-dir {args.output_dir!r} differs")
    return args


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(args, name: str, lo=None, hi=None, lo_open=False, hi_open=False) -> None:
    """One flag's domain, lo <= value <= hi (strict where *_open); a one-line error naming it."""
    v = getattr(args, name)
    if (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi)):
        return
    if lo == 0 and hi is None:
        raise ConfigError(f"{_flag(name)} must be {'positive' if lo_open else '>= 0'}, got {v}")
    left = ("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}")
    right = ("inf" if hi is None else f"{hi:g}") + (")" if hi_open else "]")
    raise ConfigError(f"{_flag(name)} must be in {left}, {right}, got {v}")


def validate(args) -> None:
    """The checks every script shares, each failure a one-line message naming the flags."""
    envs.canonical_id(args.env_id)  # raises with the list of valid ids
    backends = envs.BRAX_BACKENDS if envs.is_brax(args.env_id) else envs.PLAYGROUND_BACKENDS
    if (envs.is_brax(args.env_id) or envs.is_playground(args.env_id)) and args.env_backend not in backends:
        raise ConfigError(f"--env-backend {args.env_backend!r} is not one of {', '.join(backends)}")
    for name in ("num_seeds", "total_timesteps", "num_envs", "num_steps", "num_epochs",
                 "minibatch_size", "eval_every", "eval_episodes"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"{_flag(name)} must be positive, got {getattr(args, name)}")
    for name in ("max_episode_steps", "noise_hold_steps", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise ConfigError(f"{_flag(name)} must be >= 0, got {getattr(args, name)}")
    for name in ("learning_rate", "max_grad_norm", "adam_eps"):
        check_range(args, name, lo=0.0, lo_open=True)
    for name in ("gamma", "gae_lambda"):
        check_range(args, name, lo=0.0, hi=1.0)
    for name in ("clip_coef", "ent_coef", "vf_coef"):
        check_range(args, name, lo=0.0)
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise ConfigError(f"--hidden-sizes must be one or more positive widths, got {args.hidden_sizes}")
    batch = args.num_envs * args.num_steps
    if batch % args.minibatch_size:
        raise ConfigError(
            f"--num-envs {args.num_envs} x --num-steps {args.num_steps} = {batch} is not divisible "
            f"by --minibatch-size {args.minibatch_size}")
    if args.total_timesteps < batch:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is less than one rollout "
            f"(--num-envs {args.num_envs} x --num-steps {args.num_steps} = {batch})")


def make_env(args) -> envs.Env:
    """The environment the (validated) arguments name, with its time limit and action clipping."""
    env_id = envs.canonical_id(args.env_id)
    try:
        env = envs.make(env_id, args.env_backend, args.max_episode_steps or None, args.clip_actions)
    except ModuleNotFoundError as e:  # an optional suite (MuJoCo Playground) that is not installed
        raise ConfigError(str(e))
    if args.noise_hold_steps > 1 and env.action_spec.discrete:
        raise ConfigError(f"--noise-hold-steps {args.noise_hold_steps} needs continuous actions; {env_id} has discrete ones")
    return env


def init_seeds(init: Callable, seeds: list[int]):
    """The initial states of the seeds, stacked on a leading axis. Each seed is initialised on its
    own (one compiled init, called per seed), so seed i starts exactly as seed i run alone, and no
    QR is batched: jaxlib's batched CPU QR (orthogonal init under vmap) can deadlock its thread
    pool on a small machine."""
    init = jax.jit(init)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[init(jax.random.PRNGKey(s)) for s in seeds])


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def prepare_output_dir(args, algo: str) -> str:
    """The run's folder: new, empty, or (with --overwrite) emptied of a previous run's outputs."""
    out = args.output_dir or os.path.join(
        "runs", f"{algo}_{envs.canonical_id(args.env_id)}_{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output-dir {out!r} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not args.overwrite:
            raise ConfigError(f"output directory {out!r} exists and is not empty (pass --overwrite to reuse it)")
        for name in OUTPUT_FILES:  # a previous run's files must not stand beside this run's
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, name))
        for name in OUTPUT_FOLDERS:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, ".write_test"), "w"):
            pass
        os.remove(os.path.join(out, ".write_test"))
    except OSError as e:
        raise ConfigError(f"--output-dir {out!r} cannot be written: {e.strerror}")
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
    from matplotlib.ticker import EngFormatter

    steps = sorted({r["env_steps"] for r in rows})
    by_seed: dict[int, dict] = {}
    for r in rows:  # a diverged seed's rows hold no return: its curve stops
        by_seed.setdefault(r["seed"], {})[r["env_steps"]] = r.get("eval_return") if not r["diverged"] else np.nan
    curves = np.array([[s.get(x, np.nan) for x in steps] for s in by_seed.values()])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, np.nanmean(curves, 0), label=f"mean over {len(curves)} seeds")
    ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.25, label="min-max over seeds")
    ax.set(xlabel="environment steps (per seed)", ylabel="eval return", title=title)
    ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 1.5M: readable ticks
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _StopRequest:
    """SIGINT and SIGTERM ask the run to stop at the end of the interval in flight: the compiled
    program cannot be interrupted midway, and stopping between intervals keeps every output at the
    same, last completed interval. A second Ctrl-C stops at once (the interval in flight is lost)."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the interval in flight "
              "(Ctrl-C again to stop now and lose it)", flush=True)

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


@contextlib.contextmanager
def _signals_deferred():
    """While outputs are written, a signal is noted, not raised: no half-written file."""
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# ----------------------------------------------------------------------------------------------
# Checkpoints (orbax-checkpoint) and divergence
# ----------------------------------------------------------------------------------------------
KEEP_CHECKPOINTS = 3  # the latest few; older ones are deleted


def checkpoint_manager(out: str):
    """orbax's manager of `<out>/checkpoints/<done iterations>/`: each save is written to a
    temporary folder and renamed when complete, so a crash while saving leaves the previous
    checkpoint as the latest usable one."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=KEEP_CHECKPOINTS, enable_async_checkpointing=False,
                                           create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out, "checkpoints")), options=options)


def save_checkpoint(manager, step: int, state, meta: dict) -> float:
    """The complete training state of every seed (parameters, target networks, optimizer states,
    replay buffers, environments, statistics, keys, iteration counters) and what the host needs
    to go on writing the same outputs (meta). Returns the seconds it took."""
    import orbax.checkpoint as ocp

    t0 = time.perf_counter()
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_without_empty(state)),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    manager.wait_until_finished()
    return time.perf_counter() - t0


def restore_checkpoint(manager, like):
    """(state, meta) of the latest checkpoint; `like` gives the state's structure, shapes and types."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"--resume: no checkpoint in {manager.directory}")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_without_empty(like)),
                                                             meta=ocp.args.JsonRestore()))
    state = jax.tree.map(lambda x, r: x if r is None else r, like, restored.state, is_leaf=lambda r: r is None)
    return state, restored.meta


def _without_empty(tree):
    """orbax refuses zero-size arrays (Brax keeps some in its states): they are left out of a
    checkpoint (None) and taken from the freshly initialised state on restore."""
    return jax.tree.map(lambda x: x if x.size else None, tree)


def directory_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


DIVERGENCE_METRICS = ("eval_return", "pg_loss", "v_loss")  # nan or inf here: the seed diverged


def guarded(train_chunk: Callable) -> Callable:
    """train_chunk, whose metrics also say (under "finite") whether the seed's parameters and
    watched metrics are all finite: the check is compiled into the same program."""

    def chunk(state, num_active):
        state, metrics = train_chunk(state, num_active)
        ok = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state.params) if jnp.issubdtype(x.dtype, jnp.floating)]
        ok += [jnp.isfinite(metrics[k]) for k in DIVERGENCE_METRICS if k in metrics]
        return state, {**metrics, "finite": jnp.all(jnp.stack(ok))}

    return chunk


def keep_frozen(frozen: np.ndarray, new, old):
    """`new`, except that the frozen seeds keep `old` (their last finite state)."""
    mask = jnp.asarray(frozen)
    return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), o, n), new, old)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
def run(args, algo: str, validate_args: Callable, make_train: Callable, metric_columns: tuple[str, ...]) -> dict:
    """Check the arguments, train every seed, write every output; returns the summary.

    `make_train(args, env)` returns the script's trainer: `init(key) -> state`,
    `train_chunk(state, num_active) -> (state, metrics)` (num_active <= iters_per_chunk iterations
    and one evaluation; metrics holds metric_columns[2:]), `iters_per_chunk`, `num_iterations`.
    `state.params` (and `state.obs_rms`) are what params.msgpack saves. The seeds are vmapped
    under the axis name "seeds"."""
    validate_args(args)
    env = make_env(args)
    env_id = envs.canonical_id(args.env_id)
    resuming = args.resume is not None
    out = args.resume if resuming else prepare_output_dir(args, algo)
    if resuming:
        with open(os.path.join(out, "config.json")) as f:
            saved_algo = json.load(f)["algo"]
        if saved_algo != algo:
            raise ConfigError(f"--resume {out!r}: a run of {saved_algo}.py, not of {algo}.py")
    trainer = make_train(args, env)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    batch = args.num_envs * args.num_steps
    columns = tuple(metric_columns) + ("diverged",)
    stop = _StopRequest()
    manager = checkpoint_manager(out) if args.checkpoint_every > 0 or resuming else None

    with stop.installed():
        try:
            t0 = time.perf_counter()
            state = jax.block_until_ready(init_seeds(trainer.init, seeds))
            chunk = jax.jit(jax.vmap(guarded(trainer.train_chunk), in_axes=(0, None), axis_name="seeds"))
            chunk = chunk.lower(state, jnp.int32(0)).compile()
            compile_seconds = time.perf_counter() - t0
        except KeyboardInterrupt:  # a second Ctrl-C during compilation: nothing was computed
            stop.signal = stop.signal or signal.SIGINT
        if stop.signal is not None:
            if not resuming and not os.listdir(out):
                os.rmdir(out)
            print(f"{signal.Signals(stop.signal).name} before training began: nothing computed, nothing written")
            return dict(algo=algo, env_id=env_id, seeds=seeds, completed=False, interrupted=True, env_steps=0)

        progress = dict(done_iters=0, num_rows=0, diverged={}, train_seconds=0.0, checkpoint_seconds=[])
        rows: list[dict] = []
        if resuming:
            state, progress = restore_checkpoint(manager, state)
            rows = truncate_metrics(os.path.join(out, "metrics.csv"), progress["num_rows"])
            print(f"resuming {out} at {progress['done_iters'] * batch:,} env steps per seed")
        device = jax.devices()[0]
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(dict(algo=algo, args=dataclasses.asdict(args), env_id=env_id, seeds=seeds,
                           versions=versions(), device=f"{device.platform}: {device.device_kind}"), f, indent=2)
        tb = tensorboard_writer(out, args, progress["done_iters"] * batch) if args.tensorboard else None
        frozen = np.array([str(s) in progress["diverged"] for s in seeds])
        done_iters, saved_at = progress["done_iters"], progress["done_iters"]
        t_train = time.perf_counter()
        with open(os.path.join(out, "metrics.csv"), "a" if resuming else "w", newline="") as csv_file:
            writer = csv.DictWriter(csv_file, fieldnames=columns)
            if not resuming:
                writer.writeheader()
            try:
                while done_iters < trainer.num_iterations and stop.signal is None:
                    n = min(trainer.iters_per_chunk, trainer.num_iterations - done_iters)
                    # Dispatch is asynchronous: `state` is rebound only once the interval's metrics
                    # are on the host and written, so it always matches metrics.csv.
                    next_state, metrics = chunk(state, jnp.int32(n))
                    metrics = jax.device_get(metrics)
                    newly = ~metrics.pop("finite") & ~frozen
                    with _signals_deferred() as caught:
                        steps = (done_iters + n) * batch
                        for i in np.flatnonzero(newly):
                            progress["diverged"][str(seeds[i])] = steps
                            print(f"seed {seeds[i]} diverged (non-finite parameters, losses or returns) by "
                                  f"{steps:,} env steps: frozen at {done_iters * batch:,} steps; the other seeds "
                                  "train on", flush=True)
                        frozen = frozen | newly
                        state = keep_frozen(frozen, next_state, state) if frozen.any() else next_state
                        done_iters += n
                        new_rows = metric_rows(seeds, steps, metrics, columns, frozen)
                        writer.writerows(new_rows)
                        csv_file.flush()
                        rows += new_rows
                        if tb is not None:
                            log_tensorboard(tb, new_rows, columns, steps)
                        progress.update(done_iters=done_iters, num_rows=len(rows),
                                        train_seconds=progress["train_seconds"] + time.perf_counter() - t_train)
                        due = args.checkpoint_every * trainer.iters_per_chunk
                        if args.checkpoint_every and done_iters - saved_at >= due:
                            progress["checkpoint_seconds"].append(save_checkpoint(manager, done_iters, state, progress))
                            saved_at = done_iters
                        t_train = time.perf_counter()
                    if caught:  # a signal that came while the rows were written: handled now
                        stop(caught[0], None)
                    for r in new_rows:  # bpo.py's variance probe: its two means should agree
                        if abs(r.get("probe_bias_z", 0.0)) > 3:
                            print(f"seed {r['seed']} at {steps:,} steps: the variance probe's importance-weighted mean "
                                  f"differs from the on-policy one by {r['probe_bias_z']:.1f} standard errors "
                                  "(unbiased estimates should agree within about 3)", flush=True)
                    print_progress(algo, env_id, rows[-len(seeds):], done_iters, trainer.num_iterations, batch,
                                   progress["train_seconds"], len(seeds))
            except KeyboardInterrupt:  # the second Ctrl-C: the interval in flight is dropped
                stop.signal = signal.SIGINT

        with _signals_deferred():
            if args.checkpoint_every and saved_at != done_iters:
                progress["checkpoint_seconds"].append(save_checkpoint(manager, done_iters, state, progress))
            if tb is not None:
                tb.close()
            latest = manager.latest_step() if manager else None
            checkpoint_mb = directory_mb(os.path.join(out, "checkpoints", str(latest))) if latest is not None else None
            summary = write_outputs(out, algo, env_id, seeds, state, rows, progress, batch, trainer.num_iterations,
                                    compile_seconds, checkpoint_mb,
                                    interrupted=stop.signal is not None and done_iters < trainer.num_iterations)
    if summary["interrupted"]:
        script = os.path.basename(sys.argv[0]) if sys.argv[0].endswith(".py") else f"{algo}.py"
        how = (f"resume with: python {script} --resume {out}" if manager
               else "no checkpoint was saved (--checkpoint-every 0): it cannot be resumed")
        print(f"interrupted after {summary['env_steps']:,} of {trainer.num_iterations * batch:,} env steps per "
              f"seed; every output describes that point; {how}", flush=True)
    return summary


def metric_rows(seeds, steps, metrics, columns, frozen) -> list[dict]:
    """One row per seed; a diverged (frozen) seed's row holds no numbers, only the flag."""
    rows = []
    for i, seed in enumerate(seeds):
        row = {"seed": seed, "env_steps": steps, "diverged": int(frozen[i])}
        if not frozen[i]:
            row.update({k: float(metrics[k][i]) for k in columns[2:-1]})
        rows.append(row)
    return rows


def truncate_metrics(path: str, num_rows: int) -> list[dict]:
    """Keep the header and the first num_rows rows of metrics.csv, byte for byte (rows written after
    the checkpoint are computed again, to the same numbers), and return those rows."""
    with open(path, newline="") as f:
        lines = f.readlines()
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.writelines(lines[: 1 + num_rows])
    os.replace(tmp, path)
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    return [{**r, "seed": int(r["seed"]), "env_steps": int(r["env_steps"]), "diverged": int(r["diverged"])} for r in rows]


def print_progress(algo, env_id, last_rows, done_iters, num_iterations, batch, train_seconds, num_seeds):
    healthy = [r for r in last_rows if not r["diverged"]]
    train = [r["train_return"] for r in healthy if np.isfinite(r["train_return"])]
    evals = [r["eval_return"] for r in healthy]
    note = f" ({len(healthy)} of {num_seeds} seeds)" if len(healthy) < num_seeds else ""
    print(f"[{algo} {env_id}] {done_iters * batch:>10,}/{num_iterations * batch:,} steps"
          f" | {done_iters * batch * num_seeds / max(train_seconds, 1e-9):>9,.0f} steps/s"
          f" | train return {np.mean(train) if train else float('nan'):8.2f}"
          f" | eval return {np.mean(evals) if evals else float('nan'):8.2f}{note}"
          f" | {train_seconds:6.1f}s", flush=True)


def tensorboard_writer(out: str, args, start_step: int):
    """tensorboardX's writer of `<out>/tb` (no TensorFlow needed), the configuration as text. On
    resume, events at or after the checkpoint's step are purged (they are written again)."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(os.path.join(out, "tb"), purge_step=start_step or None)
    if not start_step:
        config = json.dumps(dataclasses.asdict(args), indent=2)
        writer.add_text("config", "    " + config.replace("\n", "\n    "), 0)
    return writer


def log_tensorboard(writer, rows: list[dict], columns, steps: int) -> None:
    """Every metric of every seed (`<metric>/seed_<i>`) and its mean over the healthy seeds
    (`<metric>/mean`), at env steps per seed."""
    healthy = [r for r in rows if not r["diverged"]]
    for k in columns[2:-1]:
        for r in healthy:
            writer.add_scalar(f"{k}/seed_{r['seed']}", r[k], steps)
        values = [r[k] for r in healthy if np.isfinite(r[k])]
        if values:
            writer.add_scalar(f"{k}/mean", float(np.mean(values)), steps)
    writer.add_scalar("diverged_seeds", len(rows) - len(healthy), steps)
    writer.flush()


def write_outputs(out, algo, env_id, seeds, state, rows, progress, batch, num_iterations, compile_seconds,
                  checkpoint_mb, interrupted) -> dict:
    """summary.json, params.msgpack and curves.png for the last completed interval, and the
    console's closing table."""
    done_iters, train_seconds, diverged = progress["done_iters"], progress["train_seconds"], progress["diverged"]
    last = {r["seed"]: r for r in rows[-len(seeds):]} if rows else {}
    final = [None if str(s) in diverged or s not in last else last[s]["eval_return"] for s in seeds]
    finite = [x for x in final if x is not None]
    summary = dict(
        algo=algo, env_id=env_id, seeds=seeds,
        final_eval_return=final,  # null for a diverged seed
        final_eval_return_mean=float(np.mean(finite)) if finite else None,
        final_eval_return_seeds=len(finite),  # how many seeds the mean covers
        diverged=diverged,  # seed -> env steps by which it had diverged
        env_steps=done_iters * batch,
        env_steps_per_second=done_iters * batch * len(seeds) / max(train_seconds, 1e-9),
        compile_seconds=compile_seconds, train_seconds=train_seconds,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        checkpoints_saved=len(progress["checkpoint_seconds"]),
        checkpoint_seconds_mean=float(np.mean(progress["checkpoint_seconds"])) if progress["checkpoint_seconds"] else None,
        checkpoint_mb=checkpoint_mb,  # the latest checkpoint's size on disk
        completed=not interrupted and done_iters == num_iterations,
        interrupted=interrupted,
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # Parameters of every seed (leading axis = seed) and their observation statistics, as of the
    # last completed interval (a diverged seed's: as of its last finite state).
    # Load with flax.serialization.msgpack_restore(open(path, "rb").read()).
    with open(os.path.join(out, "params.msgpack"), "wb") as f:
        f.write(flax.serialization.msgpack_serialize(jax.device_get(
            {"seeds": np.asarray(seeds), "params": state.params, "obs_rms": state.obs_rms._asdict()})))
    if rows:
        plot_curves(rows, os.path.join(out, "curves.png"), f"{algo} on {env_id}")

    print(f"\n{'seed':>6} {'final eval return':>18} {'final train return':>19}")
    for s in seeds:  # a train return is nan where no episode ended in the interval
        if str(s) in diverged:
            print(f"{s:>6} {'diverged by ' + format(diverged[str(s)], ',') + ' steps':>38}")
        elif s in last:
            print(f"{s:>6} {last[s]['eval_return']:>18.2f} {last[s]['train_return']:>19.2f}")
    print(f"\nmean final eval return {summary['final_eval_return_mean']} over {len(finite)} of {len(seeds)} seeds | "
          f"{summary['env_steps_per_second']:,.0f} env steps/s | compile {compile_seconds:.1f}s | "
          f"train {train_seconds:.1f}s | peak memory {summary['peak_memory_mb']:.0f} MB\noutputs in {out}")
    return summary


def main(parse: Callable, run_fn: Callable, argv=None) -> None:
    """The scripts' entry point: one-line errors for bad input, a non-zero exit when interrupted."""
    prog = os.path.basename(sys.argv[0])
    try:
        summary = run_fn(parse(argv))
    except (ConfigError, envs.UnknownEnvError) as e:
        raise SystemExit(f"{prog}: error: {e}")
    if summary.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
