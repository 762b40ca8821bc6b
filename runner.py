"""The host side of a training run, shared by ppo.py, bpo.py and bpo_traj.py.

Each script holds its whole algorithm: the networks, the estimator, the losses and `make_train`,
which builds the compiled pieces of one seed (`init`, the iteration, `train_interval`).
Everything that is not the algorithm lives here, once:

- the command line: presets applied in order, then tyro flags (`parse_args`), `--resume` with the
  saved configuration, the checks every script shares (`validate`), the environment (`make_env`);
- the run (`run`): the output folder, `config.json`, the seeds' initial states, compiling the
  vmapped `train_interval` once, calling it once per evaluation interval, `metrics.csv` rows as they
  arrive, progress lines, TensorBoard, `summary.json`, `params.msgpack` and `curves.png`;
- long runs: checkpoints of the complete training state with orbax-checkpoint, exact resume, and a
  per-seed divergence guard (a seed that goes non-finite is frozen and flagged, the others train
  on with exactly the numbers they would have had);
- interruption: Ctrl-C (SIGINT) or SIGTERM stop the run at the end of the interval in flight, save
  a checkpoint, and every output then describes the same, last completed interval; the process
  exits non-zero with the command that resumes it;
- the flags that control a run rather than the algorithm (`RunArgs`, which each script's `Args`
  inherits), and jax's CPU compilation options (`configure_jax`, which each script calls).

The compiled pieces the scripts share (the minibatch shuffle, evaluation, the interval's
statistics) are in training.py.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import itertools
import json
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Callable, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs

# ----------------------------------------------------------------------------------------------
# jax's CPU compilation options, set by each script's call of configure_jax()
# ----------------------------------------------------------------------------------------------
# XLA's CPU backend hands matmuls, elementwise ops and reductions to YNNPACK "library fusions". For
# the small networks here, its fusions of elementwise ops and reductions into the matmuls (tanh,
# LayerNorm) are slower than XLA's own loops: YNNPACK for the matmuls alone makes bpo.py's training
# program about 1.2x as fast on a CPU (docs/performance.md). GPU programs are not affected.
CPU_XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
CPU_THREEFRY_UNROLLED = False  # set by configure_jax()


def configure_jax() -> None:
    """The CPU compilation options measured faster here (docs/performance.md), for the jax they
    were measured on (0.10.2) and not with BPO_XLA_DEFAULTS=1; each script calls this once, at
    import, before anything is computed. Two changes, neither of the numbers' meaning:

    - XLA_FLAGS gains CPU_XLA_FLAG (YNNPACK for matmuls only), unless XLA_FLAGS already names that
      option. XLA reads its flags when it creates its CPU client, at the first computation, so
      setting them at import is in time; an unknown flag would be a fatal error, hence the version.
    - jax's random generator (threefry2x32: every key split and draw) is lowered on the CPU as it is
      on every other platform, its 5 rounds unrolled, instead of a rolled while loop per call whose
      overhead costs ppo.py about 5% on a CPU. The same integers: bitwise the same numbers
      (tests/test_cpu_flags.py). It registers a lowering in jax's private modules.
    Calling it again does nothing more."""
    global CPU_THREEFRY_UNROLLED
    if jax.__version__ != "0.10.2" or os.environ.get("BPO_XLA_DEFAULTS") == "1":
        return
    if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_XLA_FLAG}".strip()
    if not CPU_THREEFRY_UNROLLED:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32

        mlir.register_lowering(threefry2x32.threefry2x32_p, threefry2x32._threefry2x32_lowering_rule, platform="cpu")
        CPU_THREEFRY_UNROLLED = True


def donate_state() -> bool:
    """Whether the compiled interval takes over the training state's buffers (jax.jit's
    donate_argnums): on a GPU or TPU, so the state (replay buffers included) is not held twice in
    device memory; not on a CPU, where memory is the host's and the recorded figures were measured.
    The same numbers either way. BPO_DONATE=1 or 0 forces it."""
    forced = os.environ.get("BPO_DONATE", "")
    return forced == "1" if forced in ("0", "1") else jax.default_backend() != "cpu"


OUTPUT_FILES = ("config.json", "metrics.csv", "summary.json", "params.msgpack", "curves.png")
OUTPUT_FOLDERS = ("checkpoints", "tb")
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


class ConfigError(ValueError):
    """Bad input, reported as one line before anything is compiled."""


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """The flags every script shares that choose and control a run, not the algorithm: each
    script's `Args` inherits them and adds its hyperparameters (tyro lists these first)."""

    preset: tuple[str, ...] = ()
    """named presets applied in order before any other flag (see PRESETS; docs/presets.md); later flags override them"""
    env_id: str = "CartPole-v1"
    """environment id: gymnax (CartPole-v1, Pendulum-v1, ...), Brax (ant, hopper, ...), Playground
    (CheetahRun, ...) or a tabular MDP (tabular-deepsea-8, ...)"""
    env_backend: str = "mjx"
    """physics backend: Brax's mjx, generalized, positional or spring; Playground's mjx"""
    seed: int = 0
    """first seed; the run trains seeds seed, seed+1, ..., seed+num_seeds-1"""
    num_seeds: int = 4
    """independent seeds trained together (vmapped) in one program"""
    eval_every: int = 10_000
    """environment steps per seed between evaluations (and metric rows)"""
    eval_episodes: int = 10
    """episodes of the deterministic policy pi (never BPO's mu) per evaluation"""
    output_dir: str | None = None
    """where outputs go; default runs/<script>_<env>_<time>"""
    overwrite: bool = False
    """allow writing into an existing non-empty output directory (a previous run's outputs are removed)"""
    checkpoint_every: int = 10
    """save a checkpoint of every seed's complete training state every this many evaluation
    intervals, at the end, and when stopped by Ctrl-C or SIGTERM (the latest 3 are kept); 0: never"""
    resume: str | None = None
    """continue the run in this output folder from its latest checkpoint, with its saved
    configuration: no other flag may change it, but a larger --total-timesteps extends it"""
    tensorboard: bool = False
    """also write every metric of every seed, and their means, to <output-dir>/tb (tensorboardX)"""
    sweep: tuple[str, ...] = ()
    """KEY=V1,V2,... [KEY=V1,V2,...]: train the grid product of these values (each member with
    every seed) in one compiled program, e.g. --sweep clip_coef=0.1,0.2 gamma=0.99,0.999; numbers
    and switches that change no shape and no loop count (--sweep help lists them)"""
    num_devices: int = 0
    """spread the members x seeds over this many devices (jax.sharding, padded to a multiple);
    0: every device (every host's, under jax.distributed.initialize())"""


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


WIDE_ROLLOUT_STEPS = 32


def wide_rollout(args) -> dict:
    """The add-on preset `wide_rollout`, for GPUs and TPUs: the same env steps per iteration in
    rollouts of WIDE_ROLLOUT_STEPS steps from proportionally more environments (mujoco_ppo: 64 envs
    x 32 steps instead of 1 x 2048), so a GPU steps many environments at once. The algorithm and
    every other setting stay; what changes is the data: more, shorter trajectory pieces, each
    bootstrapped from V at its end. A rollout already this short (or not a multiple of it) is left."""
    if args.num_steps <= WIDE_ROLLOUT_STEPS or args.num_steps % WIDE_ROLLOUT_STEPS:
        return {}
    factor = args.num_steps // WIDE_ROLLOUT_STEPS
    return dict(num_envs=args.num_envs * factor, num_steps=WIDE_ROLLOUT_STEPS)


# Add-on presets every script shares, computed from the settings before them (applied in order).
ADDON_PRESETS: dict[str, Callable[[Any], dict]] = {"wide_rollout": wide_rollout}


def apply_presets(args, presets: dict[str, dict], names) -> Any:
    """`args` with the named presets applied in order (a later preset wins where two set a field);
    an add-on of ADDON_PRESETS is computed from the settings the presets before it left."""
    for name in names:
        if name in ADDON_PRESETS and name not in presets:
            args = dataclasses.replace(args, **ADDON_PRESETS[name](args))
            continue
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join([*presets, *ADDON_PRESETS])}")
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
    if names is None and known.env_id in presets:  # a tabular id: the preset of its name
        names = [known.env_id]
        print(f"{known.env_id}: using --preset {known.env_id} (pass --preset to choose)")
    if names is None:
        suite = "brax" if envs.is_brax(known.env_id) else "playground" if envs.is_playground(known.env_id) else None
        names = list(suite_presets.get(suite, []))
        if names:
            print(
                f"{known.env_id} is a {suite.title()} task: using --preset {' '.join(names)} (pass --preset to choose)"
            )
    default = apply_presets(args_type(), presets, names)
    return tyro.cli(args_type, args=argv, default=default, description=description)


RESUME_MAY_CHANGE = (
    "resume",
    "output_dir",
    "overwrite",
    "total_timesteps",
    "checkpoint_every",
    "tensorboard",
    "num_devices",
)


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
        raise ConfigError(
            f"--resume {folder!r}: a run of {config['algo']}.py, whose flags differ from this "
            f"script's ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})"
        )
    saved = args_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    saved = dataclasses.replace(saved, resume=folder, output_dir=folder)
    args = tyro.cli(args_type, args=argv, default=saved, description=description)
    for name in sorted(fields - set(RESUME_MAY_CHANGE)):
        if getattr(args, name) != getattr(saved, name):
            raise ConfigError(
                f"--resume: {_flag(name)} {getattr(args, name)} differs from the run's "
                f"{getattr(saved, name)}; only a larger --total-timesteps may change it"
            )
    if args.total_timesteps < saved.total_timesteps:
        raise ConfigError(
            f"--resume: --total-timesteps {args.total_timesteps} is less than the run's "
            f"{saved.total_timesteps} (it may only grow)"
        )
    if args.output_dir != folder:
        raise ConfigError(f"--resume writes into {folder!r}; --output-dir {args.output_dir!r} differs")
    # Exactly the uninterrupted run's numbers need the same compiled programs: the same jax and XLA flags.
    was, now = config.get("versions", {}), versions()
    changed = [k for k in ("jax", "jaxlib", "XLA_FLAGS", "env_reset") if k in was and was[k] != now.get(k)]
    if changed:
        print(
            f"warning: --resume {folder!r}: {', '.join(f'{k} {was[k]!r} is now {now[k]!r}' for k in changed)}; "
            "the resumed part may differ in the last bits from an uninterrupted run",
            file=sys.stderr,
        )
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
    for name in (
        "num_seeds",
        "total_timesteps",
        "num_envs",
        "num_steps",
        "num_epochs",
        "minibatch_size",
        "eval_every",
        "eval_episodes",
    ):
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
            f"by --minibatch-size {args.minibatch_size}"
        )
    if args.total_timesteps < batch:
        raise ConfigError(
            f"--total-timesteps {args.total_timesteps} is less than one rollout "
            f"(--num-envs {args.num_envs} x --num-steps {args.num_steps} = {batch})"
        )


def make_env(args) -> envs.Env:
    """The environment the (validated) arguments name, with its time limit and action clipping."""
    env_id = envs.canonical_id(args.env_id)
    try:
        envs.default_reset_mode()  # BPO_ENV_RESET, if set, names a mode
    except ValueError as e:
        raise ConfigError(str(e))
    try:
        env = envs.make(env_id, args.env_backend, args.max_episode_steps or None, args.clip_actions)
    except ModuleNotFoundError as e:  # an optional suite (MuJoCo Playground) that is not installed
        raise ConfigError(str(e))
    except ValueError as e:  # a time limit that would cut a tabular MDP's episodes
        raise ConfigError(f"--max-episode-steps: {e}")
    if args.noise_hold_steps > 1 and env.action_spec.discrete:
        raise ConfigError(
            f"--noise-hold-steps {args.noise_hold_steps} needs continuous actions; {env_id} has discrete ones"
        )
    return env


def init_seeds(init: Callable, seeds: list[int], hp: dict | None = None):
    """The initial states of the rows, stacked on a leading axis: init(key) per seed, or, with the
    swept values hp (one value per row), init(key, values of the row). Each row is initialised on
    its own (one compiled init, called per row), so seed i starts exactly as seed i run alone, and
    no QR is batched: jaxlib's batched CPU QR (orthogonal init under vmap) can deadlock its thread
    pool on a small machine."""
    init = jax.jit(init)
    rows = [
        init(jax.random.PRNGKey(s)) if hp is None else init(jax.random.PRNGKey(s), {k: v[j] for k, v in hp.items()})
        for j, s in enumerate(seeds)
    ]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *rows)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def prepare_output_dir(args, algo: str) -> str:
    """The run's folder: new, empty, or (with --overwrite) emptied of a previous run's outputs."""
    out = args.output_dir or os.path.join(
        "runs", f"{algo}_{envs.canonical_id(args.env_id)}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
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
    out["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")  # compilation options (see CPU_XLA_FLAG)
    out["cpu_threefry"] = "unrolled" if CPU_THREEFRY_UNROLLED else "jax's default"  # same numbers either way
    with contextlib.suppress(ValueError):  # a bad BPO_ENV_RESET is reported by make_env
        out["env_reset"] = envs.default_reset_mode()  # how episode ends get new starts (envs/core.py)
    return out


def plot_curves(rows: list[dict], sweep: Sweep, path: str, title: str) -> None:
    """Eval return against env steps: the mean over seeds and the min-max band, one curve per
    member of a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    steps = sorted({r["env_steps"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, member in enumerate(sweep.members):
        by_seed: dict[int, dict] = {}
        for r in rows:  # a diverged seed's rows hold no return: its curve stops
            if r.get("member", 0) == k:
                by_seed.setdefault(r["seed"], {})[r["env_steps"]] = (
                    r.get("eval_return") if not r["diverged"] else np.nan
                )
        curves = np.array([[s.get(x, np.nan) for x in steps] for s in by_seed.values()])
        label = f"{member_label(member)}: " if member else ""
        (line,) = ax.plot(steps, np.nanmean(curves, 0), label=f"{label}mean over {len(curves)} seeds")
        ax.fill_between(
            steps,
            np.nanmin(curves, 0),
            np.nanmax(curves, 0),
            color=line.get_color(),
            alpha=0.2,
            label=None if member else "min-max over seeds",
        )
    ax.set(
        xlabel="environment steps (per seed)",
        ylabel="eval return",
        title=title + (" (bands: min-max over seeds)" if sweep.keys else ""),
    )
    ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 1.5M: readable ticks
    ax.legend(fontsize="small" if len(sweep.members) < 6 else "x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _StopRequest:
    """SIGINT and SIGTERM ask the run to stop at the end of the interval in flight: the compiled
    program cannot be interrupted midway, and stopping between intervals keeps every output at the
    same, last completed interval. A second Ctrl-C stops at once (the interval in flight is lost)."""

    def __init__(self):
        self.signal = None
        self.droppable = True  # False once the state before the interval in flight was donated

    def __call__(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT and self.droppable:
            raise KeyboardInterrupt
        self.signal = signum
        again = (
            "Ctrl-C again to stop now and lose it"
            if self.droppable
            else "its input state was donated to the device program, so it cannot be dropped"
        )
        print(f"\n{signal.Signals(signum).name}: stopping after the interval in flight ({again})", flush=True)

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


HEARTBEAT_SECONDS = 30.0  # a line this often while a compilation or an interval is in flight


@contextlib.contextmanager
def heartbeat(message: Callable[[float], str], every: float | None = None):
    """Print message(seconds elapsed) every `every` seconds (HEARTBEAT_SECONDS, or the environment's
    BPO_HEARTBEAT_SECONDS) until the block ends: a long compilation or interval shows it is alive."""
    every = every or float(os.environ.get("BPO_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    done, t0 = threading.Event(), time.perf_counter()

    def beat():
        while not done.wait(every):
            print(message(time.perf_counter() - t0), flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextlib.contextmanager
def _signals_deferred():
    """While outputs are written, a signal is noted, not raised: no half-written file."""
    caught = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
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

    options = ocp.CheckpointManagerOptions(
        max_to_keep=KEEP_CHECKPOINTS, enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True
    )
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out, "checkpoints")), options=options)


def save_checkpoint(manager, step: int, state, meta: dict) -> float:
    """The complete training state of every seed (parameters, target networks, optimizer states,
    replay buffers, environments, statistics, keys, iteration counters) and what the host needs
    to go on writing the same outputs (meta). Returns the seconds it took."""
    import orbax.checkpoint as ocp

    t0 = time.perf_counter()
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(_without_empty(state)), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()
    return time.perf_counter() - t0


def restore_checkpoint(manager, like):
    """(state, meta) of the latest checkpoint; `like` gives the state's structure, shapes and types."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        raise ConfigError(f"--resume: no checkpoint in {manager.directory}")
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_without_empty(like)), meta=ocp.args.JsonRestore())
    )
    state = jax.tree.map(lambda x, r: x if r is None else r, like, restored.state, is_leaf=lambda r: r is None)
    return state, restored.meta


def _without_empty(tree):
    """orbax refuses zero-size arrays (Brax keeps some in its states): they are left out of a
    checkpoint (None) and taken from the freshly initialised state on restore."""
    return jax.tree.map(lambda x: x if x.size else None, tree)


def directory_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files) / 2**20


DIVERGENCE_METRICS = ("eval_return", "pg_loss", "v_loss")  # nan or inf here: the seed diverged


def guarded(train_interval: Callable) -> Callable:
    """train_interval, whose metrics also say (under "finite") whether the seed's parameters and
    watched metrics are all finite: the check is compiled into the same program. A seed that is
    frozen (diverged before) or goes non-finite now keeps the parameters and observation statistics
    it went in with (its last finite ones: what params.msgpack saves), so the host needs no copy of
    the input state (which may be donated). Only those are kept: a copy of the whole state (replay
    buffers, environments) would hold it twice on the device during the interval; the rest of a
    frozen seed's state is never read again."""

    def interval(state, num_active, frozen=False):
        new, metrics = train_interval(state, num_active)
        ok = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(new.params) if jnp.issubdtype(x.dtype, jnp.floating)]
        ok += [jnp.isfinite(metrics[k]) for k in DIVERGENCE_METRICS if k in metrics]
        finite = jnp.all(jnp.stack(ok))
        keep = lambda n, o: jnp.where(frozen | ~finite, o, n)  # noqa: E731
        new = new._replace(
            params=jax.tree.map(keep, new.params, state.params), obs_rms=jax.tree.map(keep, new.obs_rms, state.obs_rms)
        )
        return new, {**metrics, "finite": finite}

    return interval


# ----------------------------------------------------------------------------------------------
# Sweeps and devices
# ----------------------------------------------------------------------------------------------
class Sweep(NamedTuple):
    """The grid of `--sweep KEY=V1,V2 ...`: the swept keys and each member's values (one member
    with no values when nothing is swept). Member k, seed i is row k * num_seeds + i of every
    batched array."""

    keys: tuple[str, ...]
    members: list[dict]


def parse_sweep(args, sweepable: tuple[str, ...], validate_args: Callable) -> Sweep:
    """`args.sweep` as a grid: the product of the listed values, in the order given. A key that is
    not a field, not in `sweepable` (it sets a shape, a loop count or the program's structure) or a
    value of the wrong type is a one-line error that lists the keys that can be swept; every
    member's values are checked as the flags would be."""
    if not args.sweep:
        return Sweep((), [{}])
    fields = {f.name: f.type for f in dataclasses.fields(args)}
    listing = f"the keys that can be swept: {', '.join(sweepable)}"
    grid: dict[str, list] = {}
    for item in args.sweep:
        key, sep, values = item.partition("=")
        key = key.strip().removeprefix("--").replace("-", "_")
        if not sep or not values.strip():
            raise ConfigError(f"--sweep {item!r}: write KEY=V1,V2,...; {listing}")
        if key not in fields:
            raise ConfigError(f"--sweep: {key!r} is not a flag of this script; {listing}")
        if key not in sweepable:
            raise ConfigError(
                f"--sweep: {key} sets an array shape, a loop count or the program's structure, so it "
                f"cannot vary inside one compiled program; {listing}"
            )
        if key in grid:
            raise ConfigError(f"--sweep: {key} is given twice")
        grid[key] = [_sweep_value(key, fields[key], v.strip()) for v in values.split(",")]
        if len(set(grid[key])) < len(grid[key]):
            raise ConfigError(f"--sweep: {key} repeats a value ({values})")
    members = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for member in members:
        validate_args(dataclasses.replace(args, **member))
    return Sweep(tuple(grid), members)


def _sweep_value(key: str, kind: str, text: str):
    if kind == "bool":
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--sweep: {key} takes true or false, got {text!r}")
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--sweep: {key} takes numbers, got {text!r}") from None


def sweep_inputs(sweep: Sweep, num_seeds: int) -> dict[str, np.ndarray]:
    """Each swept key's value on every row (member-major), the traced inputs of the program."""
    return {
        k: np.array(
            [m[k] for m in sweep.members for _ in range(num_seeds)],
            dtype=np.bool_ if isinstance(sweep.members[0][k], bool) else np.float32,
        )
        for k in sweep.keys
    }


def member_label(member: dict) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in member.items())


def with_values(make_train: Callable, args, env) -> Callable:
    """hp -> the trainer of `args` with the (traced) swept values hp: called inside the compiled,
    vmapped function, so the values are inputs of one program, not constants of several. With
    nothing swept (hp = {}) it is the trainer of `args` itself."""

    def trainer(hp: dict):
        try:
            return make_train(dataclasses.replace(args, **hp), env)
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError) as e:
            raise ConfigError(
                f"--sweep {' '.join(hp)}: in this configuration a swept value decides "
                f"the program's structure ({type(e).__name__}); run those values one by one"
            ) from None

    return trainer


def run_devices(num_devices: int, num_rows: int) -> list:
    """The devices the rows are spread over: all of them (every host's, under
    jax.distributed.initialize()), or the first --num-devices; never more than there are rows."""
    available = jax.devices()
    if num_devices < 0:
        raise ConfigError(f"--num-devices must be >= 0 (0: all), got {num_devices}")
    if num_devices > len(available):
        raise ConfigError(
            f"--num-devices {num_devices}: there are {len(available)} "
            f"({', '.join(sorted({d.platform for d in available}))})"
        )
    return available[: min(num_devices or len(available), num_rows)]


class Placement(NamedTuple):
    """Where the rows live: on one device as they are, or padded to a multiple of the device count
    (with copies of the last row) and sharded on their leading axis over a 1-D mesh."""

    devices: list
    num_rows: int

    @property
    def padding(self) -> int:
        return -self.num_rows % len(self.devices)

    def put(self, tree):
        """Host or device arrays [num_rows, ...] -> the program's inputs."""
        if len(self.devices) == 1:
            return tree
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        sharding = NamedSharding(Mesh(np.array(self.devices), ("rows",)), PartitionSpec("rows"))

        def put(x):
            x = np.asarray(x)
            x = np.concatenate([x, np.repeat(x[-1:], self.padding, 0)]) if self.padding else x
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(put, tree)

    def get(self, tree):
        """The program's outputs -> the rows (padding dropped), gathered from every host."""
        if len(self.devices) == 1:
            return tree
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            tree = multihost_utils.process_allgather(tree, tiled=True)
        return jax.tree.map(lambda x: np.asarray(x)[: self.num_rows], tree)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
class Plan(NamedTuple):
    """What a run is, decided from its arguments before anything is written or compiled."""

    args: Any
    algo: str  # the script: ppo, bpo or bpo_traj
    env_id: str
    sweep: Sweep
    seeds: list[int]
    runs: list[tuple[int, int]]  # the rows: (member, seed), member-major
    names: list[str]  # each row's key in summary.json's "diverged": "seed" or "member/seed"
    place: Placement
    hp: dict  # each swept key's value on every row: the program's traced inputs
    trainer: Any  # the script's trainer of `args` (the swept values aside)
    init: Callable  # (key, hp) -> one row's initial state
    program: Callable  # jitted, vmapped over rows: (states, hp, num_active) -> (states, metrics)
    batch: int  # env steps per seed per iteration
    metric_columns: tuple[str, ...]
    columns: tuple[str, ...]  # metrics.csv's header
    donate: bool = False  # the program takes over the state's buffers (donate_state())


def run(
    args,
    algo: str,
    validate_args: Callable,
    make_train: Callable,
    metric_columns: tuple[str, ...],
    sweepable: tuple[str, ...] = (),
    row_warning: Callable[[dict], str | None] | None = None,
) -> dict:
    """Check the arguments, train every member of the sweep and every seed, write every output;
    returns the summary.

    `make_train(args, env)` returns the script's trainer: `init(key) -> state`,
    `train_interval(state, num_active) -> (state, metrics)` (num_active <= iters_per_interval
    iterations and one evaluation; metrics holds metric_columns[2:]), `iters_per_interval`,
    `num_iterations`. `state.params` (and `state.obs_rms`) are what params.msgpack saves. It is
    called inside the compiled function with the swept keys (`sweepable`) as traced values. The rows
    (member k, seed i at row k * num_seeds + i) are vmapped under the axis name "seeds" and sharded
    over the devices. `row_warning(row)`, the script's own check of a metrics row, returns a message
    to print, or None."""
    plan = plan_run(args, algo, validate_args, make_train, metric_columns, sweepable)  # nothing written yet
    out = output_folder(plan)
    resuming = args.resume is not None
    manager = checkpoint_manager(out) if args.checkpoint_every > 0 or resuming else None
    stop = _StopRequest()
    with stop.installed():
        state, compiled, compile_seconds = compile_program(plan, stop)
        if stop.signal is not None:
            if not resuming and not os.listdir(out):
                os.rmdir(out)
            print(f"{signal.Signals(stop.signal).name} before training began: nothing computed, nothing written")
            return dict(algo=algo, env_id=plan.env_id, seeds=plan.seeds, completed=False, interrupted=True, env_steps=0)
        state, progress, rows = start_or_resume(plan, out, manager, state)
        write_config(plan, out)
        state, rows, saved_at = train_intervals(plan, out, compiled, state, progress, rows, manager, stop, row_warning)
        with _signals_deferred():
            state = plan.place.get(state)
            if args.checkpoint_every and saved_at != progress["done_iters"]:
                progress["checkpoint_seconds"].append(save_checkpoint(manager, progress["done_iters"], state, progress))
            latest = manager.latest_step() if manager else None
            checkpoint_mb = directory_mb(os.path.join(out, "checkpoints", str(latest))) if latest is not None else None
            interrupted = stop.signal is not None and progress["done_iters"] < plan.trainer.num_iterations
            summary = write_outputs(out, plan, state, rows, progress, compile_seconds, checkpoint_mb, interrupted)
    if summary["interrupted"]:
        script = os.path.basename(sys.argv[0]) if sys.argv[0].endswith(".py") else f"{algo}.py"
        how = (
            f"resume with: python {script} --resume {out}"
            if manager
            else "no checkpoint was saved (--checkpoint-every 0): it cannot be resumed"
        )
        print(
            f"interrupted after {summary['env_steps']:,} of {plan.trainer.num_iterations * plan.batch:,} env steps "
            f"per seed; every output describes that point; {how}",
            flush=True,
        )
    return summary


def plan_run(args, algo, validate_args, make_train, metric_columns, sweepable) -> Plan:
    """The checks (one-line errors), the environment, the sweep's grid, the devices and the vmapped
    program, traced but not compiled: a swept value that decides the program's structure is an
    error here, before anything is written."""
    validate_args(args)
    sweep = parse_sweep(args, sweepable, validate_args)
    env = make_env(args)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    runs = [(k, s) for k in range(len(sweep.members)) for s in seeds]
    hp = sweep_inputs(sweep, len(seeds))
    values = with_values(make_train, args, env)
    init = lambda key, hp: values(hp).init(key)  # noqa: E731
    donate = donate_state()
    program = jax.jit(
        jax.vmap(
            lambda state, hp, n, frozen: guarded(values(hp).train_interval)(state, n, frozen),
            in_axes=(0, 0, None, 0),
            axis_name="seeds",
        ),
        donate_argnums=(0,) if donate else (),  # the state's input buffers become its output's
    )
    if sweep.keys:
        like = jax.eval_shape(init, jax.random.PRNGKey(0), {k: v[0] for k, v in hp.items()})
        jax.eval_shape(
            program,
            jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(runs), *x.shape), x.dtype), like),
            hp,
            jnp.int32(0),
            np.zeros(len(runs), bool),
        )
    if jax.process_count() > 1 and (args.checkpoint_every or args.resume is not None):
        raise ConfigError(
            f"{jax.process_count()} processes (jax.distributed): checkpoints and --resume are not "
            "supported across hosts yet; pass --checkpoint-every 0"
        )
    lead = ("member", *(f"sweep.{k}" for k in sweep.keys)) if sweep.keys else ()  # metrics may share a key's name
    return Plan(
        args,
        algo,
        envs.canonical_id(args.env_id),
        sweep,
        seeds,
        runs,
        names=[f"{k}/{s}" if sweep.keys else str(s) for k, s in runs],
        place=Placement(run_devices(args.num_devices, len(runs)), len(runs)),
        hp=hp,
        trainer=make_train(args, env),
        init=init,
        program=program,
        batch=args.num_envs * args.num_steps,
        metric_columns=tuple(metric_columns),
        columns=lead + tuple(metric_columns) + ("diverged",),
        donate=donate,
    )


def output_folder(plan: Plan) -> str:
    """The run's folder: the resumed one (of the same script), or a new or emptied one; on the
    hosts after the first (jax.distributed), a temporary folder whose outputs go nowhere."""
    args = plan.args
    if jax.process_index() > 0:
        return tempfile.mkdtemp(prefix=f"{plan.algo}_process{jax.process_index()}_")
    if args.resume is None:
        return prepare_output_dir(args, plan.algo)
    with open(os.path.join(args.resume, "config.json")) as f:
        saved_algo = json.load(f)["algo"]
    if saved_algo != plan.algo:
        raise ConfigError(f"--resume {args.resume!r}: a run of {saved_algo}.py, not of {plan.algo}.py")
    return args.resume


def compile_program(plan: Plan, stop: _StopRequest):
    """Every row's initial state and the compiled program (with its seconds). A second Ctrl-C
    during compilation is noted in `stop`: nothing was computed."""
    try:
        t0 = time.perf_counter()
        device = plan.place.devices[0]
        print(
            f"[{plan.algo} {plan.env_id}] compiling the training program ({len(plan.runs)} rows on "
            f"{len(plan.place.devices)} {device.platform} device(s): {device.device_kind})",
            flush=True,
        )
        with heartbeat(lambda t: f"[{plan.algo} {plan.env_id}] still compiling: {t:.0f}s"):
            state = jax.block_until_ready(init_seeds(plan.init, [s for _, s in plan.runs], plan.hp))
            frozen = np.zeros(len(plan.runs), bool)
            compiled = plan.program.lower(
                plan.place.put(state), plan.place.put(plan.hp), jnp.int32(0), plan.place.put(frozen)
            ).compile()
        seconds = time.perf_counter() - t0
        trainer = plan.trainer
        print(
            f"[{plan.algo} {plan.env_id}] compiled in {seconds:.1f}s; an evaluation interval is "
            f"{trainer.iters_per_interval} iteration(s) of {plan.batch:,} env steps per seed, "
            f"{trainer.num_iterations} iteration(s) in all",
            flush=True,
        )
        return state, compiled, seconds
    except KeyboardInterrupt:
        stop.signal = stop.signal or signal.SIGINT
        return None, None, 0.0


def start_or_resume(plan: Plan, out: str, manager, state):
    """(state, progress, rows): fresh, or the latest checkpoint's, with metrics.csv cut back to
    the rows written up to it."""
    progress = dict(done_iters=0, num_rows=0, diverged={}, train_seconds=0.0, checkpoint_seconds=[])
    if plan.args.resume is None:
        return state, progress, []
    state, progress = restore_checkpoint(manager, state)
    rows = truncate_metrics(os.path.join(out, "metrics.csv"), progress["num_rows"])
    print(f"resuming {out} at {progress['done_iters'] * plan.batch:,} env steps per seed")
    return state, progress, rows


def write_config(plan: Plan, out: str) -> None:
    """config.json: the arguments, seeds, sweep members, versions and devices of the run."""
    sweep, place = plan.sweep, plan.place
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(
            dict(
                algo=plan.algo,
                args=dataclasses.asdict(plan.args),
                env_id=plan.env_id,
                seeds=plan.seeds,
                **({"members": sweep.members} if sweep.keys else {}),
                versions=versions(),
                device=f"{place.devices[0].platform}: {place.devices[0].device_kind}",
                devices=[str(d) for d in place.devices],
                processes=jax.process_count(),
            ),
            f,
            indent=2,
        )
    if sweep.keys:
        print(
            f"sweep of {len(sweep.members)} members x {len(plan.seeds)} seeds in one program on "
            f"{len(place.devices)} device(s): "
            + "; ".join(f"{k}: {member_label(m)}" for k, m in enumerate(sweep.members))
        )


def train_intervals(plan: Plan, out, compiled, state, progress, rows, manager, stop, row_warning):
    """The interval loop: the compiled program once per evaluation interval until the budget is
    spent or a stop is requested; after each, the divergence guard, metrics.csv's rows, progress
    lines, TensorBoard and the checkpoints that are due. Returns (state, rows, the iteration of the
    last checkpoint); `progress` is updated in place."""
    args, trainer, sweep, batch = plan.args, plan.trainer, plan.sweep, plan.batch
    resuming = args.resume is not None
    tb = tensorboard_writer(out, args, progress["done_iters"] * batch) if args.tensorboard else None
    frozen = np.array([name in progress["diverged"] for name in plan.names])
    hp_in = plan.place.put(plan.hp)
    state = plan.place.put(state)  # from here on: the program's layout (padded, sharded)
    stop.droppable = not plan.donate
    done_iters, saved_at = progress["done_iters"], progress["done_iters"]
    t_train = time.perf_counter()
    with open(os.path.join(out, "metrics.csv"), "a" if resuming else "w", newline="") as csv_file:
        writer = csv.DictWriter(csv_file, fieldnames=plan.columns)
        if not resuming:
            writer.writeheader()
        try:
            while done_iters < trainer.num_iterations and stop.signal is None:
                n = min(trainer.iters_per_interval, trainer.num_iterations - done_iters)
                # Dispatch is asynchronous: `state` is rebound only once the interval's metrics are on
                # the host and written, so it always matches metrics.csv.
                next_state, metrics = compiled(state, hp_in, jnp.int32(n), plan.place.put(frozen))
                with heartbeat(
                    lambda t: (
                        f"[{plan.algo} {plan.env_id}] interval to {(done_iters + n) * batch:,} steps "
                        f"in flight: {t:.0f}s"
                    )
                ):
                    metrics = jax.device_get(plan.place.get(metrics))
                newly = ~metrics.pop("finite") & ~frozen
                with _signals_deferred() as caught:
                    steps = (done_iters + n) * batch
                    for i in np.flatnonzero(newly):
                        progress["diverged"][plan.names[i]] = steps
                        print(
                            f"{row_label(sweep, plan.runs[i])} diverged (non-finite parameters, losses or returns) "
                            f"by {steps:,} env steps: frozen at {done_iters * batch:,} steps; the other seeds "
                            "train on",
                            flush=True,
                        )
                    frozen = frozen | newly
                    state = next_state  # a frozen seed keeps its last finite parameters in it (guarded)
                    done_iters += n
                    new_rows = metric_rows(sweep, plan.runs, steps, metrics, plan.columns, frozen)
                    writer.writerows(new_rows)
                    csv_file.flush()
                    rows += new_rows
                    if tb is not None:
                        log_tensorboard(tb, new_rows, plan.metric_columns[2:], steps)
                    progress.update(
                        done_iters=done_iters,
                        num_rows=len(rows),
                        train_seconds=progress["train_seconds"] + time.perf_counter() - t_train,
                    )
                    if (
                        args.checkpoint_every
                        and done_iters - saved_at >= args.checkpoint_every * trainer.iters_per_interval
                    ):
                        progress["checkpoint_seconds"].append(
                            save_checkpoint(manager, done_iters, plan.place.get(state), progress)
                        )
                        saved_at = done_iters
                    t_train = time.perf_counter()
                if caught:  # a signal that came while the rows were written: handled now
                    stop(caught[0], None)
                for r in new_rows if row_warning else ():
                    message = row_warning(r)
                    if message:
                        print(
                            f"{row_label(sweep, (r.get('member', 0), r['seed']))} at {steps:,} steps: {message}",
                            flush=True,
                        )
                for k, member in enumerate(sweep.members):
                    print_progress(
                        f"{plan.algo} {plan.env_id}" + (f" {member_label(member)}" if member else ""),
                        new_rows[k * len(plan.seeds) : (k + 1) * len(plan.seeds)],
                        done_iters,
                        trainer.num_iterations,
                        batch,
                        progress["train_seconds"],
                        len(plan.runs),
                    )
        except KeyboardInterrupt:  # the second Ctrl-C: the interval in flight is dropped
            stop.signal = signal.SIGINT
    if tb is not None:
        tb.close()
    return state, rows, saved_at


def row_label(sweep: Sweep, run: tuple[int, int]) -> str:
    k, seed = run
    return f"member {k} ({member_label(sweep.members[k])}) seed {seed}" if sweep.keys else f"seed {seed}"


def metric_rows(sweep: Sweep, runs, steps, metrics, columns, frozen) -> list[dict]:
    """One row per member and seed; a diverged (frozen) row holds no numbers, only the flag."""
    rows = []
    for i, (k, seed) in enumerate(runs):
        # the member's swept values (a switch as 0 or 1), then the seed's metrics
        row = {"member": k, **{f"sweep.{key}": float(v) for key, v in sweep.members[k].items()}} if sweep.keys else {}
        row.update(seed=seed, env_steps=steps, diverged=int(frozen[i]))
        if not frozen[i]:
            row.update({c: float(metrics[c][i]) for c in columns[columns.index("env_steps") + 1 : -1]})
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
    return read_metrics(path)


def read_metrics(path: str) -> list[dict]:
    """metrics.csv's rows as the run wrote them (member, seed, env_steps and diverged as integers)."""
    ints = ("member", "seed", "env_steps", "diverged")
    with open(path, newline="") as f:
        return [
            {k: int(float(v)) if k in ints else float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)
        ]


def print_progress(name, last_rows, done_iters, num_iterations, batch, train_seconds, num_rows):
    """One line per member: its seeds' mean returns; steps/s counts every row of the program."""
    healthy = [r for r in last_rows if not r["diverged"]]
    train = [r["train_return"] for r in healthy if np.isfinite(r["train_return"])]
    evals = [r["eval_return"] for r in healthy]
    note = f" ({len(healthy)} of {len(last_rows)} seeds)" if len(healthy) < len(last_rows) else ""
    print(
        f"[{name}] {done_iters * batch:>10,}/{num_iterations * batch:,} steps"
        f" | {done_iters * batch * num_rows / max(train_seconds, 1e-9):>9,.0f} steps/s"
        f" | train return {np.mean(train) if train else float('nan'):8.2f}"
        f" | eval return {np.mean(evals) if evals else float('nan'):8.2f}{note}"
        f" | {train_seconds:6.1f}s",
        flush=True,
    )


def tensorboard_writer(out: str, args, start_step: int):
    """tensorboardX's writer of `<out>/tb` (no TensorFlow needed), the configuration as text. On
    resume, events at or after the checkpoint's step are purged (they are written again)."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(os.path.join(out, "tb"), purge_step=start_step or None)
    if not start_step:
        config = json.dumps(dataclasses.asdict(args), indent=2)
        writer.add_text("config", "    " + config.replace("\n", "\n    "), 0)
    return writer


def log_tensorboard(writer, rows: list[dict], metrics, steps: int) -> None:
    """Every metric of every seed (`<metric>/seed_<i>`, in a sweep `<metric>/member_<k>_seed_<i>`)
    and its mean over the healthy seeds (`<metric>/mean`, `<metric>/member_<k>_mean`), at env steps
    per seed."""
    healthy = [r for r in rows if not r["diverged"]]
    groups = sorted({r.get("member") for r in rows}, key=lambda k: -1 if k is None else k)
    for k in metrics:
        for r in healthy:
            member = f"member_{r['member']}_" if "member" in r else ""
            writer.add_scalar(f"{k}/{member}seed_{r['seed']}", r[k], steps)
        for g in groups:
            values = [r[k] for r in healthy if r.get("member") == g and np.isfinite(r[k])]
            if values:
                writer.add_scalar(f"{k}/mean" if g is None else f"{k}/member_{g}_mean", float(np.mean(values)), steps)
    writer.add_scalar("diverged_seeds", len(rows) - len(healthy), steps)
    writer.flush()


def write_outputs(out, plan: Plan, state, rows, progress, compile_seconds, checkpoint_mb, interrupted) -> dict:
    """summary.json, params.msgpack and curves.png for the last completed interval, and the
    console's closing table."""
    algo, env_id, sweep, runs, names, batch = plan.algo, plan.env_id, plan.sweep, plan.runs, plan.names, plan.batch
    num_iterations = plan.trainer.num_iterations
    done_iters, train_seconds, diverged = progress["done_iters"], progress["train_seconds"], progress["diverged"]
    last = rows[-len(runs) :] if rows else []
    final = [None if not last or name in diverged else last[i]["eval_return"] for i, name in enumerate(names)]
    seeds = sorted({s for _, s in runs})
    per_member = [final[k * len(seeds) : (k + 1) * len(seeds)] for k in range(len(sweep.members))]
    means = [
        float(np.mean([x for x in m if x is not None])) if any(x is not None for x in m) else None for m in per_member
    ]
    counts = [sum(x is not None for x in m) for m in per_member]
    summary = dict(
        algo=algo,
        env_id=env_id,
        seeds=seeds,
        # null for a diverged seed; in a sweep, one list per member
        final_eval_return=per_member if sweep.keys else final,
        final_eval_return_mean=means if sweep.keys else means[0],
        final_eval_return_seeds=counts if sweep.keys else counts[0],  # how many seeds each mean covers
        **({"members": sweep.members} if sweep.keys else {}),  # the swept values of each member
        diverged=diverged,  # seed (in a sweep "member/seed") -> env steps by which it had diverged
        env_steps=done_iters * batch,
        env_steps_per_second=done_iters * batch * len(runs) / max(train_seconds, 1e-9),
        compile_seconds=compile_seconds,
        train_seconds=train_seconds,
        peak_host_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # the process's peak RSS
        peak_device_memory_mb=peak_device_memory_mb(plan.place.devices),  # null on a CPU
        checkpoints_saved=len(progress["checkpoint_seconds"]),
        checkpoint_seconds_mean=float(np.mean(progress["checkpoint_seconds"]))
        if progress["checkpoint_seconds"]
        else None,
        checkpoint_mb=checkpoint_mb,  # the latest checkpoint's size on disk
        completed=not interrupted and done_iters == num_iterations,
        interrupted=interrupted,
    )
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    # Parameters of every row (leading axis: member-major, then seed) and their observation
    # statistics, as of the last completed interval (a diverged seed's: its last finite state).
    # Load with flax.serialization.msgpack_restore(open(path, "rb").read()).
    with open(os.path.join(out, "params.msgpack"), "wb") as f:
        saved = {"seeds": np.asarray([s for _, s in runs]), "params": state.params, "obs_rms": state.obs_rms._asdict()}
        if sweep.keys:
            saved["member"] = np.asarray([k for k, _ in runs])
        f.write(flax.serialization.msgpack_serialize(jax.device_get(saved)))
    if rows:
        plot_curves(rows, sweep, os.path.join(out, "curves.png"), f"{algo} on {env_id}")

    print(f"\n{'member':>6} " * bool(sweep.keys) + f"{'seed':>6} {'final eval return':>18} {'final train return':>19}")
    for i, (k, s) in enumerate(runs):  # a train return is nan where no episode ended in the interval
        lead = f"{k:>6} " if sweep.keys else ""
        if names[i] in diverged:
            print(f"{lead}{s:>6} {'diverged by ' + format(diverged[names[i]], ',') + ' steps':>38}")
        elif last:
            print(f"{lead}{s:>6} {last[i]['eval_return']:>18.2f} {last[i]['train_return']:>19.2f}")
    for k, member in enumerate(sweep.members if sweep.keys else []):
        print(
            f"member {k} ({member_label(member)}): mean final eval return {means[k]:.2f} over {counts[k]} of "
            f"{len(seeds)} seeds"
        )
    mean = "" if sweep.keys else f"mean final eval return {means[0]} over {counts[0]} of {len(seeds)} seeds | "
    print(
        f"\n{mean}{summary['env_steps_per_second']:,.0f} env steps/s | compile {compile_seconds:.1f}s | "
        f"train {train_seconds:.1f}s | peak host memory {summary['peak_host_memory_mb']:.0f} MB"
        + (
            f" | peak device memory {summary['peak_device_memory_mb']:.0f} MB"
            if summary["peak_device_memory_mb"] is not None
            else ""
        )
        + f"\noutputs in {out}"
    )
    return summary


def peak_device_memory_mb(devices) -> float | None:
    """The most memory any of the devices has held at once in this process (the allocator's
    peak_bytes_in_use, MiB), where the backend reports it (GPU, TPU); None on a CPU."""
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # a backend without memory statistics
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"] / 2**20)
    return max(peaks) if peaks else None


def main(parse: Callable, run_fn: Callable, argv=None) -> None:
    """The scripts' entry point: one-line errors for bad input, a non-zero exit when interrupted."""
    prog = os.path.basename(sys.argv[0])
    try:
        summary = run_fn(parse(argv))
    except (ConfigError, envs.UnknownEnvError) as e:
        raise SystemExit(f"{prog}: error: {e}")
    if summary.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
