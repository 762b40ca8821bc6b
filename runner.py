"""The host side of a training run, shared by ppo.py, bpo.py and bpo_traj.py.

Each script holds its whole algorithm: the networks, the estimator, the losses and `make_train`,
which builds the compiled pieces of one seed (`init`, the iteration, `evaluate`, `train_chunk`).
Everything that is not the algorithm lives here, once:

- the command line: presets applied in order, then tyro flags (`parse_args`), the checks every
  script shares (`validate`), the environment (`make_env`);
- the run (`run`): the output folder, `config.json`, the seeds' initial states, compiling the
  vmapped `train_chunk` once, calling it once per evaluation interval, `metrics.csv` rows as they
  arrive, progress lines, `summary.json`, `params.msgpack` and `curves.png`;
- interruption: Ctrl-C (SIGINT) or SIGTERM stop the run at the end of the interval in flight, and
  every output then describes the same, last completed interval; the process exits non-zero.
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
import time
from typing import Any, Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs

OUTPUT_FILES = ("config.json", "metrics.csv", "summary.json", "params.msgpack", "curves.png")
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


def parse_args(args_type, presets: dict[str, dict], brax_presets: list[str], argv, description: str):
    """Presets first (their values become the defaults `--help` shows), then every other flag.
    A Brax env id given without --preset gets `brax_presets` (CartPole settings would not do)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="*", default=None)
    pre.add_argument("--env-id", default=args_type.env_id)
    known = pre.parse_known_args(argv)[0]
    names = known.preset
    if names is None:
        names = list(brax_presets) if envs.is_brax(known.env_id) else []
        if names:
            print(f"{known.env_id} is a Brax task: using --preset {' '.join(names)} (pass --preset to choose)")
    default = apply_presets(args_type(), presets, names)
    return tyro.cli(args_type, args=argv, default=default, description=description)


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
    for name in ("max_episode_steps", "noise_hold_steps"):
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

    steps = sorted({r["env_steps"] for r in rows})
    by_seed: dict[int, dict] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["env_steps"]] = r["eval_return"]
    curves = np.array([[s.get(x, np.nan) for x in steps] for s in by_seed.values()])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, np.nanmean(curves, 0), label=f"mean over {len(curves)} seeds")
    ax.fill_between(steps, np.nanmin(curves, 0), np.nanmax(curves, 0), alpha=0.25, label="min-max over seeds")
    ax.set(xlabel="environment steps (per seed)", ylabel="eval return", title=title)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
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
# The run
# ----------------------------------------------------------------------------------------------
def run(args, algo: str, validate_args: Callable, make_train: Callable, metric_columns: tuple[str, ...]) -> dict:
    """Check the arguments, train every seed, write every output; returns the summary.

    `make_train(args, env)` returns the script's trainer: `init(key) -> state`,
    `train_chunk(state, num_active) -> (state, metrics)` (num_active <= iters_per_chunk iterations
    and one evaluation; metrics holds metric_columns[2:]), `iters_per_chunk`, `num_iterations`.
    `state.params` (and `state.obs_rms`) are what params.msgpack saves."""
    validate_args(args)
    env = make_env(args)
    env_id = envs.canonical_id(args.env_id)
    out = prepare_output_dir(args, algo)
    trainer = make_train(args, env)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    batch = args.num_envs * args.num_steps
    stop = _StopRequest()
    rows: list[dict] = []
    done_iters = 0

    with stop.installed():
        try:
            t0 = time.perf_counter()
            state = jax.block_until_ready(init_seeds(trainer.init, seeds))
            chunk = jax.jit(jax.vmap(trainer.train_chunk, in_axes=(0, None))).lower(state, jnp.int32(0)).compile()
            compile_seconds = time.perf_counter() - t0
        except KeyboardInterrupt:  # a second Ctrl-C during compilation: nothing was computed
            stop.signal = stop.signal or signal.SIGINT
        if stop.signal is not None:
            if not os.listdir(out):
                os.rmdir(out)
            print(f"{signal.Signals(stop.signal).name} before training began: nothing computed, nothing written")
            return dict(algo=algo, env_id=env_id, seeds=seeds, completed=False, interrupted=True, env_steps=0)

        device = jax.devices()[0]
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(dict(algo=algo, args=dataclasses.asdict(args), env_id=env_id, seeds=seeds,
                           versions=versions(), device=f"{device.platform}: {device.device_kind}"), f, indent=2)
        t_train = time.perf_counter()
        with open(os.path.join(out, "metrics.csv"), "w", newline="") as csv_file:
            writer = csv.DictWriter(csv_file, fieldnames=metric_columns)
            writer.writeheader()
            try:
                while done_iters < trainer.num_iterations and stop.signal is None:
                    n = min(trainer.iters_per_chunk, trainer.num_iterations - done_iters)
                    # Dispatch is asynchronous: `state` is rebound only once the interval's metrics
                    # are on the host and written, so it always matches metrics.csv.
                    next_state, metrics = chunk(state, jnp.int32(n))
                    metrics = jax.device_get(metrics)
                    with _signals_deferred() as caught:
                        state, done_iters = next_state, done_iters + n
                        for i, seed in enumerate(seeds):
                            row = {"seed": seed, "env_steps": done_iters * batch}
                            row.update({k: float(metrics[k][i]) for k in metric_columns[2:]})
                            writer.writerow(row)
                            rows.append(row)
                        csv_file.flush()
                    stop.signal = stop.signal or (caught[0] if caught else None)
                    elapsed = time.perf_counter() - t_train
                    train_return = metrics["train_return"][np.isfinite(metrics["train_return"])]
                    print(f"[{algo} {env_id}] {done_iters * batch:>10,}/{trainer.num_iterations * batch:,} steps"
                          f" | {done_iters * batch * len(seeds) / elapsed:>9,.0f} steps/s"
                          f" | train return {train_return.mean() if train_return.size else float('nan'):8.2f}"
                          f" | eval return {np.mean(metrics['eval_return']):8.2f}"
                          f" | {elapsed:6.1f}s", flush=True)
            except KeyboardInterrupt:  # the second Ctrl-C: the interval in flight is dropped
                stop.signal = signal.SIGINT
        train_seconds = time.perf_counter() - t_train

        with _signals_deferred():
            summary = write_outputs(out, algo, env_id, seeds, state, rows, done_iters, batch, trainer.num_iterations,
                                    compile_seconds, train_seconds, interrupted=stop.signal is not None)
    return summary


def write_outputs(out, algo, env_id, seeds, state, rows, done_iters, batch, num_iterations, compile_seconds,
                  train_seconds, interrupted) -> dict:
    """summary.json, params.msgpack and curves.png for the last completed interval, and the
    console's closing table."""
    final = [r["eval_return"] for r in rows[-len(seeds):]] if rows else []
    summary = dict(
        algo=algo, env_id=env_id, seeds=seeds, final_eval_return=final,
        final_eval_return_mean=float(np.mean(final)) if final else None,
        env_steps=done_iters * batch,
        env_steps_per_second=done_iters * batch * len(seeds) / train_seconds,
        compile_seconds=compile_seconds, train_seconds=train_seconds,
        peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        completed=not interrupted and done_iters == num_iterations,
        interrupted=interrupted,
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # Parameters of every seed (leading axis = seed) and their observation statistics, as of the
    # last completed interval. Load with flax.serialization.msgpack_restore(open(path, "rb").read()).
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
    if interrupted:
        print(f"interrupted after {done_iters * batch:,} of {num_iterations * batch:,} env steps per seed: "
              f"every output describes that point", flush=True)
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
