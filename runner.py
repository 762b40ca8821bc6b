"""The host side of a training run, shared by ppo.py, bpo.py and bpo_traj.py.

Each script holds its whole algorithm: the networks, the estimator, the losses and `make_train`,
which builds the compiled pieces of one seed (`init`, the iteration, `train_interval`).
Everything that is not the algorithm lives here, once:

- the command line: presets applied in order, then tyro flags (`parse_args`), `--resume` with the
  saved configuration, the checks every script shares (`validate`), the environment (`make_env`);
- the run (`run`): the output folder, `config.json`, the seeds' initial states, compiling the
  vmapped `train_interval` once, calling it once per evaluation interval, `metrics.csv` rows as they
  arrive, progress lines, TensorBoard, `summary.json`, `params.msgpack` and `curves.png`;
- long runs: checkpoints of the complete training state with orbax-checkpoint, each with a
  checksum of every array, verified on restore (a damaged one is set aside for the newest intact
  one), exact resume, and a per-seed divergence guard (a seed that goes non-finite is frozen and
  flagged, the others train on with exactly the numbers they would have had; once every seed
  has, the run stops);
- the output folder, owned by one process at a time (a lock file); a write that fails (a full
  disk) stops the run at once with whole files and the command that resumes it;
- interruption: Ctrl-C (SIGINT) or SIGTERM stop the run at the end of the interval in flight, save
  a checkpoint, and every output then describes the same, last completed interval; the process
  exits non-zero with the command that resumes it; before training begins, a signal ends the
  run at once and keeps nothing;
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
import fcntl
import gc
import glob
import hashlib
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, NamedTuple

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT
SCRIPTS = ("ppo.py", "bpo.py", "bpo_traj.py")  # the scripts whose entry point is main()
_AS_SCRIPT = False  # set by main(): this process is one of SCRIPTS


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C or SIGTERM before a run has begun (the imports, the checks): one line, exit 130.
    Nothing is computed or written yet, so the process ends at once (os._exit: a Python exception
    raised in the middle of an import or of jax's tracing would print pages of traceback)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "run"
    os.write(2, f"{name}: {signal.Signals(signum).name} before training began: nothing written\n".encode())
    os._exit(EXIT_INTERRUPTED)


# The scripts import this module before anything else (jax's import alone takes a second): from
# here on, and until run() takes over, a signal is that one line. Only when a script is the
# program: a session that imports the scripts (tests, notebooks) keeps Python's KeyboardInterrupt.
_main_file = getattr(sys.modules.get("__main__"), "__file__", None) or ""
if os.path.basename(_main_file) in SCRIPTS and os.path.dirname(os.path.abspath(_main_file)) == os.path.dirname(
    os.path.abspath(__file__)
):
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, _interrupted_while_starting)

import flax.serialization  # noqa: E402 (after the handler above: these imports take a second or more)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402

import envs  # noqa: E402
import torsos  # noqa: E402
import training  # noqa: E402

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


OUTPUT_FILES = ("config.json", "metrics.csv", "summary.json", "params.msgpack", "curves.png", "eval.json")
OUTPUT_FOLDERS = (
    "checkpoints",
    "checkpoints-damaged",
    "tb",
    "videos",
)  # eval.json, videos/: evaluate.py's, --capture-video's
LOCK_FILE = ".lock"  # held by the process that writes into the folder (pid, host, start)
# Exit codes besides 0: 1 bad input or a refused folder (one line, nothing compiled), 3 every seed
# diverged (the run stopped there), 4 an output could not be written (a full disk), 130 interrupted.
EXIT_DIVERGED = 3
EXIT_WRITE_FAILED = 4


def donate_state() -> bool:
    """Whether the compiled interval takes over the training state's buffers (jax.jit's
    donate_argnums): on a GPU or TPU, so the state (replay buffers included) is not held twice in
    device memory; not on a CPU, where memory is the host's and the recorded figures were measured.
    The same numbers either way. BPO_DONATE=1 or 0 forces it."""
    forced = os.environ.get("BPO_DONATE", "")
    return forced == "1" if forced in ("0", "1") else jax.default_backend() != "cpu"


MAX_LEARNING_RATE = 1.0  # a larger --learning-rate is an error, not a run


class ConfigError(ValueError):
    """Bad input, reported as one line before anything is compiled."""


@dataclasses.dataclass(frozen=True)
class RunArgs:
    """The flags every script shares that choose and control a run, not the algorithm: each
    script's `Args` inherits them and adds its hyperparameters (tyro lists these first)."""

    preset: tuple[str, ...] = ()
    """named presets applied in order before any other flag (--help lists them first; docs/presets.md); later flags
    override them"""
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
    """continue the run in this output folder from its newest intact checkpoint, with its saved
    configuration: no other flag may change it, but a larger --total-timesteps extends it (the
    annealed schedules then go on as if laid over the new total from the start)"""
    tensorboard: bool = False
    """also write every metric of every seed, and their means, to <output-dir>/tb (tensorboardX; to
    view them: pip install tensorboard, then tensorboard --logdir runs)"""
    capture_video: bool = False
    """at the end of training, a video of the first seed's deterministic pi (the first episode of its
    last evaluation) in <output-dir>/videos/, named by env steps, and in TensorBoard with --tensorboard"""
    capture_video_every: int = 0
    """with --capture-video, also a video every this many evaluations (0: only at the end)"""
    verbose: int = 1
    """how much a run computes and logs (docs/runs.md): 0, the returns and the losses only (the rest is
    not computed at all); 1, every diagnostic of the script; 2, also the rollouts' rewards, values,
    returns and advantages (mean, std, min, max) and, in TensorBoard, histograms of the advantages and
    the importance ratios"""
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


def parse_args(
    args_type,
    presets: dict[str, dict],
    suite_presets: dict[str, list[str]],
    argv,
    description: str,
    old_run_values: dict | None = None,
):
    """Presets first (their values become the defaults `--help` shows), then every other flag.
    A Brax, Playground or MinAtar env id given without --preset gets `suite_presets["brax"]`,
    `suite_presets["playground"]` or `suite_presets["minatar"]` (CartPole settings would not do).
    With --resume DIR, the run's saved configuration is the default instead, and no flag may change
    it but a larger --total-timesteps (and --checkpoint-every, --tensorboard); `old_run_values`
    fills in the flags added since (see resumed_args)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", nargs="*", default=None)
    pre.add_argument("--env-id", default=args_type.env_id)
    pre.add_argument("--resume", default=None)
    known = pre.parse_known_args(argv)[0]
    if known.resume is not None:
        return resumed_args(args_type, known.resume, argv, with_presets(description, presets), old_run_values)
    names = known.preset
    if names is None and known.env_id in presets:  # a tabular id: the preset of its name
        names = [known.env_id]
        print(f"{known.env_id}: using --preset {known.env_id} (pass --preset to choose)")
    if names is None:
        suites = {"Brax": envs.is_brax, "Playground": envs.is_playground, "MinAtar": envs.is_minatar}
        suite = next((name for name, is_suite in suites.items() if is_suite(known.env_id)), None)
        names = list(suite_presets.get(suite and suite.lower(), []))
        if names:
            print(f"{known.env_id} is a {suite} task: using --preset {' '.join(names)} (pass --preset to choose)")
    default = apply_presets(args_type(), presets, names)
    return tyro.cli(args_type, args=argv, default=default, description=with_presets(description, presets))


def with_presets(description: str, presets: dict[str, dict]) -> str:
    """The script's docstring, and the names --preset takes (what `--help` prints first)."""
    return f"{description.rstrip()}\n\npresets (--preset NAME ...; docs/presets.md): {', '.join(presets)}\n"


RESUME_MAY_CHANGE = (
    "resume",
    "output_dir",
    "overwrite",
    "total_timesteps",
    "checkpoint_every",
    "tensorboard",
    "num_devices",
    "capture_video",
    "capture_video_every",
)


# RunArgs flags added after runs were made, and the value such a run behaved as (see resumed_args)
RUN_ARGS_OLD_VALUES = dict(capture_video=False, capture_video_every=0, verbose=1)

# Why a flag may not change on --resume, where the reason is not the run's numbers
RESUME_FIXED_BECAUSE = {"verbose": "it chooses metrics.csv's columns, and the run's header holds its own"}


def resumed_args(args_type, folder: str, argv, description: str, old_run_values: dict | None = None):
    """The configuration saved in folder/config.json, with the flags given; a one-line error for a
    flag that would change the run.

    A flag added to the script after the run was made is missing from its config.json:
    `old_run_values` ({field: the value runs made before it existed behaved as}) fills it in, so
    the run goes on as it was made, and where that is not today's default one line says so. A
    missing flag not in the table, or a saved one the script no longer has, is refused."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"--resume {folder!r}: no config.json there (is it the output folder of a run?)")
    try:
        with open(path) as f:
            config = json.load(f)
        saved = dict(config["args"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume {folder!r}: its config.json cannot be read ({type(e).__name__}: {e})") from None
    fields = {f.name: f for f in dataclasses.fields(args_type)}
    for name, value in {**RUN_ARGS_OLD_VALUES, **(old_run_values or {})}.items():
        if name in fields and name not in saved:
            saved[name] = value
            if value != fields[name].default:
                print(
                    f"--resume {folder}: the run predates {_flag(name)}, so it goes on as it was made, with "
                    f"{_flag(name)} {value} (a new run's default is {fields[name].default})"
                )
    if set(saved) != set(fields):
        differ = sorted(set(saved) ^ set(fields))
        raise ConfigError(
            f"--resume {folder!r}: a run of {config['algo']}.py, whose flags differ from this "
            f"script's ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''})"
        )
    saved = args_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    saved = dataclasses.replace(saved, resume=folder, output_dir=folder)
    args = tyro.cli(args_type, args=argv, default=saved, description=description)
    for name in sorted(set(fields) - set(RESUME_MAY_CHANGE)):
        if getattr(args, name) != getattr(saved, name):
            because = f" ({RESUME_FIXED_BECAUSE[name]})" if name in RESUME_FIXED_BECAUSE else ""
            raise ConfigError(
                f"--resume: {_flag(name)} {getattr(args, name)} differs from the run's "
                f"{getattr(saved, name)}{because}; only a larger --total-timesteps may change it"
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
            "the resumed part is not the uninterrupted run's: it differs by float rounding, which training amplifies",
            file=sys.stderr,
        )
    return args


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_range(args, name: str, lo=None, hi=None, lo_open=False, hi_open=False, inf_ok=False) -> None:
    """One flag's domain, lo <= value <= hi (strict where *_open), and finite unless `inf_ok` (where
    inf has a meaning: no clipping); a one-line error naming it. nan is never in a domain."""
    v = getattr(args, name)
    if isinstance(v, float) and not math.isfinite(v) and not (inf_ok and v == math.inf):
        raise ConfigError(f"{_flag(name)} must be a finite number, got {v}")
    if (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi)):
        return
    if lo == 0 and hi is None:
        raise ConfigError(f"{_flag(name)} must be {'positive' if lo_open else '>= 0'}, got {v}")
    left = ("(" if lo_open else "[") + ("-inf" if lo is None else f"{lo:g}")
    right = ("inf" if hi is None else f"{hi:g}") + (")" if hi_open else "]")
    raise ConfigError(f"{_flag(name)} must be in {left}, {right}, got {v}")


# --verbose: metrics.csv's columns at level 0 (every script's first ones), and those level 2 adds
VERBOSE_0_COLUMNS = (
    "seed",
    "env_steps",
    "train_return",
    "train_length",
    "eval_return",
    "eval_return_std",
    "pg_loss",
    "v_loss",
)
STEP_COLUMNS = tuple(f"{q}_{s}" for q in training.STEP_STATISTICS for s in ("mean", "std", "min", "max"))


def check_verbose(args) -> None:
    if args.verbose not in (0, 1, 2):
        raise ConfigError(f"--verbose must be 0, 1 or 2, got {args.verbose}")


def verbose_columns(args, columns: tuple[str, ...]) -> tuple[str, ...]:
    """metrics.csv's columns at --verbose, from a script's own (its METRIC_COLUMNS, level 1): level 0
    keeps VERBOSE_0_COLUMNS, what every run needs (the returns, and the losses the divergence guard
    watches), level 2 adds STEP_COLUMNS. The script's iteration computes the same (training.at_verbosity)."""
    check_verbose(args)
    return (VERBOSE_0_COLUMNS, tuple(columns), tuple(columns) + STEP_COLUMNS)[args.verbose]


def validate(args) -> None:
    """The checks every script shares, each failure a one-line message naming the flags."""
    envs.canonical_id(args.env_id)  # raises with the list of valid ids
    check_verbose(args)
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
    for name in ("max_episode_steps", "noise_hold_steps", "checkpoint_every", "capture_video_every"):
        if getattr(args, name) < 0:
            raise ConfigError(f"{_flag(name)} must be >= 0, got {getattr(args, name)}")
    # Adam moves each parameter by about the learning rate per step: above 1 no network trains.
    check_range(args, "learning_rate", lo=0.0, hi=MAX_LEARNING_RATE, lo_open=True)
    check_range(args, "max_grad_norm", lo=0.0, lo_open=True, inf_ok=True)  # inf: no clipping
    check_range(args, "adam_eps", lo=0.0, lo_open=True)
    for name in ("gamma", "gae_lambda"):
        check_range(args, name, lo=0.0, hi=1.0)
    for name in ("clip_coef", "ent_coef", "vf_coef"):
        check_range(args, name, lo=0.0)
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise ConfigError(f"--hidden-sizes must be one or more positive widths, got {args.hidden_sizes}")
    if args.capture_video:
        import watch  # before MuJoCo is imported: it chooses its OpenGL backend

        try:
            watch.check_renderable(args.env_id)
        except watch.NotRenderable as e:
            raise ConfigError(f"--capture-video: {e}")
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
    try:  # a CNN torso on vectors, or Nature-DQN's on images too small for it
        torsos.check(getattr(args, "torso", "mlp"), env_id, env.obs_shape)
    except ValueError as e:
        raise ConfigError(str(e))
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
class FolderLock:
    """`<folder>/.lock`, held (flock) by the process that writes into the folder, and holding its pid,
    host and start time. The kernel releases a flock when its process ends, however it ends, so a
    lock file left by a killed process is recognised as stale and taken over; a live owner's lock
    is refused in one line. (On a network filesystem flock is only as good as its lock daemon.)"""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, LOCK_FILE)
        for _ in range(5):  # the owner may remove the file between our open and our flock: again
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner()
                os.close(self.fd)
                raise ConfigError(
                    f"{folder!r} is in use by another run ({owner or 'a process that is starting'}); wait "
                    "for it to end or choose another --output-dir"
                ) from None
            except OSError as e:
                os.close(self.fd)
                raise ConfigError(f"{folder!r}: cannot lock {LOCK_FILE} there ({e.strerror})") from None
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                    break
            os.close(self.fd)
        else:
            raise ConfigError(f"{folder!r}: its {LOCK_FILE} keeps changing hands; is another run starting there?")
        stale = self._owner()
        if stale:
            print(f"{folder}: taking over the lock that {stale} left (that process has ended)", flush=True)
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as e:
            self.release()
            raise ConfigError(f"--output-dir {folder!r} cannot be written: {e.strerror}") from None

    def _owner(self) -> str | None:
        """Who the lock file names: "pid P on host H since T", or None for an empty file."""
        try:
            owner = json.loads(os.pread(self.fd, 4096, 0).decode() or "null")
            return owner and f"pid {owner['pid']} on host {owner['host']} since {owner['started']}"
        except (ValueError, KeyError, TypeError, OSError):
            return "an unknown process"

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)  # while still held: no other process can have taken it yet
        os.close(self.fd)
        self.fd = None


class OutputFolder(NamedTuple):
    """The run's folder, locked while the run writes into it. `created`: this process made it;
    `fresh`: a new run (not --resume), whose outputs are all this process's."""

    path: str
    lock: FolderLock | None  # None on the hosts after the first (jax.distributed): a temporary folder
    created: bool
    fresh: bool

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def discard(self) -> None:
        """Nothing was computed: a fresh run's outputs go, and the folder if this process made it and
        it is now empty, so the same command starts again; a resumed run's folder stays as it is."""
        if self.fresh:
            remove_outputs(self.path)
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)


def remove_outputs(out: str) -> None:
    """A run's output files and folders (other files stay)."""
    for name in OUTPUT_FILES:
        for path in (name, name + ".tmp"):  # (.tmp: a file being written when a run was killed)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(out, path))
    for name in OUTPUT_FOLDERS:
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)


def _holds_results(path: str) -> bool:
    """Whether a folder's tree holds any file: an empty checkpoints/ left by a run stopped while it
    compiled holds nothing."""
    return any(files for _, _, files in os.walk(path))


def prepare_output_dir(args, algo: str) -> OutputFolder:
    """The run's folder, locked: new, empty, or (with --overwrite) emptied of a previous run's
    outputs. The lock comes first, so a run in progress there is never emptied nor written over;
    empty output folders and a stale lock do not count as contents."""
    out = args.output_dir or os.path.join(
        "runs", f"{algo}_{envs.canonical_id(args.env_id)}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    )
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--output-dir {out!r} is a file, not a folder")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output-dir {out!r} cannot be written: {e.strerror}") from None
    folder = None
    try:
        folder = OutputFolder(out, FolderLock(out), created, fresh=True)
        contents = [
            name
            for name in os.listdir(out)
            if name != LOCK_FILE and not (name in OUTPUT_FOLDERS and not _holds_results(os.path.join(out, name)))
        ]
        if contents and not args.overwrite:
            raise ConfigError(f"output directory {out!r} exists and is not empty (pass --overwrite to reuse it)")
        remove_outputs(out)  # a previous run's outputs must not stand beside this run's
        return folder
    except BaseException:
        if folder is not None:
            folder.release()
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)  # only if empty: another run may have made it at the same moment
        raise


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
        with warnings.catch_warnings():  # steps at which every seed had diverged: no point, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
        (line,) = ax.plot(steps, mean, label=f"{label}mean over {len(curves)} seeds")
        ax.fill_between(
            steps,
            low,
            high,
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
    with written(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


class WriteFailed(Exception):
    """An output could not be written (a full disk, a quota, a folder gone): the run stops at once,
    with what it had written intact."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"cannot write {what}: {reason}")
        self.what, self.reason = what, reason


@contextlib.contextmanager
def written(path: str, mode: str = "w", **open_args):
    """A file written whole or not at all: into path.tmp, renamed over path when complete. A write
    that fails (a full disk) leaves the previous file as it was and is a WriteFailed naming it."""
    tmp = path + ".tmp"
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise WriteFailed(os.path.basename(path), e.strerror or str(e)) from None


def os_failure(error: BaseException) -> str | None:
    """The operating system's reason when `error` is a failed write (tensorstore, under orbax, says
    it in its message: "... No space left on device [os_error_code='28']"); None for anything else."""
    if isinstance(error, OSError):
        return error.strerror or str(error)
    text = str(error)
    code = re.search(r"os_error_code='(\d+)'", text)
    if code:
        return os.strerror(int(code.group(1)))
    for reason in ("No space left on device", "Disk quota exceeded", "Read-only file system", "File too large"):
        if reason in text:
            return reason
    return None


class _StopRequest:
    """SIGINT and SIGTERM ask the run to stop at the end of the interval in flight: the compiled
    program cannot be interrupted midway, and stopping between intervals keeps every output at the
    same, last completed interval. A second Ctrl-C stops at once (the interval in flight is lost).
    Before training begins (`abort` set: the seeds' initial states, the checkpoint, compilation),
    nothing is computed yet, so the first signal calls `abort`, which ends the run at once."""

    def __init__(self):
        self.signal = None
        self.abort: Callable[[int], None] | None = None
        self.droppable = True  # False once the state before the interval in flight was donated

    def __call__(self, signum, frame):
        if self.abort is not None:
            self.abort(signum)
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
    with _quiet_logging():  # orbax reads the existing checkpoints' metadata (verified on restore)
        return ocp.CheckpointManager(os.path.abspath(os.path.join(out, "checkpoints")), options=options)


def save_checkpoint(manager, step: int, state, meta: dict) -> float:
    """The complete training state of every seed (parameters, target networks, optimizer states,
    replay buffers, environments, statistics, keys, iteration counters) and what the host needs
    to go on writing the same outputs (meta), with a SHA-256 checksum of every array and of the
    meta, which a restore verifies. Returns the seconds it took; a failed write is a WriteFailed."""
    import orbax.checkpoint as ocp

    t0 = time.perf_counter()
    state = _without_empty(state)
    saved = dict(progress=meta, arrays=checksums(jax.device_get(state)))
    saved["sha256"] = _json_sha256(saved)
    try:
        with _quiet_logging(), _stderr_held():  # orbax reports a failed write in pages, then raises it
            manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(saved)),
                force=True,
            )
            manager.wait_until_finished()
    except Exception as e:
        reason = os_failure(e)
        if reason is None:
            raise
        raise WriteFailed(f"checkpoint {step}", reason) from None
    return time.perf_counter() - t0


_REAL_STDERR: int | None = None  # fd 2 as it was, once _stderr_held() has silenced it for good


@contextlib.contextmanager
def _stderr_held():
    """In a script, what is written to fd 2 while orbax saves goes to a temporary file, and is
    written out after a save that succeeds. After one that fails, it is dropped, and fd 2 stays
    silenced: orbax's and tensorstore's threads print a traceback each as they die, some later,
    while main() reports the failure in one line on the real stderr (_REAL_STDERR)."""
    global _REAL_STDERR
    if not _AS_SCRIPT or _REAL_STDERR is not None:
        yield
        return
    sys.stderr.flush()
    held, real = tempfile.TemporaryFile(), os.dup(2)
    os.dup2(held.fileno(), 2)
    try:
        yield
    except BaseException as e:
        if os_failure(e) is not None:
            _REAL_STDERR = real
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
            raise
        _give_back(held, real)  # anything else: what was printed, then the error's own traceback
        raise
    else:
        _give_back(held, real)
    finally:
        held.close()


def _give_back(held, real: int) -> None:
    sys.stderr.flush()
    os.dup2(real, 2)
    os.close(real)
    held.seek(0)
    sys.stderr.write(held.read().decode(errors="replace"))
    sys.stderr.flush()


def checksums(tree) -> dict[str, str]:
    """SHA-256 of every array of a tree (its dtype, shape and bytes), by its path in the tree."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        x = np.ascontiguousarray(np.asarray(x))
        out[jax.tree_util.keystr(path)] = hashlib.sha256(f"{x.dtype}{x.shape}".encode() + x.tobytes()).hexdigest()
    return out


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read, or whose contents do not match its checksums: (what, the
    details)."""

    def __str__(self):
        return "".join(self.args)


def restore_checkpoint(out: str, like):
    """(state, meta) of the newest intact checkpoint of `out`; `like` gives the state's structure,
    shapes and types. Each checkpoint is verified against its checksums, newest first: a damaged one
    is named in one line and moved to `checkpoints-damaged/` once an older one is found intact; if
    none is, a one-line error. Never a silently different run."""
    manager = checkpoint_manager(out)
    try:
        with _unraisable_dropped():
            return _newest_intact(manager, out, like)
    finally:
        with contextlib.suppress(Exception):
            manager.close()


def _newest_intact(manager, out: str, like):
    """restore_checkpoint's search, newest first."""
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise ConfigError(f"--resume: no checkpoint in {manager.directory}")
    damaged: dict[int, DamagedCheckpoint] = {}
    for step in steps:
        try:
            state, meta = _restore_verified(manager, step, like)
        except DamagedCheckpoint as e:
            damaged[step] = e
            continue
        for bad, e in damaged.items():
            print(f"warning: checkpoint {bad} in {manager.directory} is damaged ({e})", file=sys.stderr)
        if damaged:
            aside = move_aside(out, list(damaged))
            print(f"resuming from checkpoint {step}, the newest intact one (the damaged ones are now in {aside})")
        return state, meta
    raise ConfigError(
        f"--resume {out!r}: no intact checkpoint: " + ", ".join(f"{step} ({e.args[0]})" for step, e in damaged.items())
    )


@contextlib.contextmanager
def _unraisable_dropped():
    """A read that fails inside orbax leaves coroutines and tensorstore callbacks behind, which print
    a traceback each ("Exception ignored in ...") when they end or are collected: collected here,
    with those messages dropped; the failure itself is reported in one line."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = hook


def _restore_verified(manager, step: int, like):
    import orbax.checkpoint as ocp

    try:
        with _quiet_logging():
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(_without_empty(like)), meta=ocp.args.JsonRestore()
                ),
            )
        saved = restored.meta
        if "sha256" not in saved:  # written before checkpoints held checksums
            print(f"warning: checkpoint {step} predates checksums: restored unverified", file=sys.stderr, flush=True)
            meta = saved
        else:
            meta = saved["progress"]
            if _json_sha256({k: saved[k] for k in ("progress", "arrays")}) != saved["sha256"]:
                raise DamagedCheckpoint("its metadata does not match its checksum")
            got = checksums(jax.device_get(restored.state))
            bad = sorted(k for k in set(got) | set(saved["arrays"]) if got.get(k) != saved["arrays"].get(k))
            if bad:
                raise DamagedCheckpoint(
                    "arrays that do not match their checksums",
                    f": {len(bad)} of {len(saved['arrays'])}, e.g. state{bad[0]}",
                )
        if meta["done_iters"] != step:
            raise DamagedCheckpoint(f"it says it holds iteration {meta['done_iters']}")
    except DamagedCheckpoint:
        raise
    except Exception as e:  # unreadable: orbax and tensorstore say why in the first line of pages
        while e.__cause__ is not None:  # the error underneath orbax's wrappers
            e = e.__cause__
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise DamagedCheckpoint("unreadable", f": {lines[0][:160]}{'...' if len(lines[0]) > 160 else ''}") from None
    state = jax.tree.map(lambda x, r: x if r is None else r, like, restored.state, is_leaf=lambda r: r is None)
    return state, meta


@contextlib.contextmanager
def _quiet_logging():
    """orbax logs its failures (absl) before raising them; the raised error is reported instead."""
    import logging

    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def move_aside(out: str, steps: list[int]) -> str:
    """Damaged checkpoints out of orbax's way (they would stay the latest), kept for inspection."""
    aside = os.path.join(out, "checkpoints-damaged")
    os.makedirs(aside, exist_ok=True)
    for step in steps:
        target = os.path.join(aside, str(step))
        n = 1
        while os.path.exists(target):
            target, n = os.path.join(aside, f"{step}-{n}"), n + 1
        os.rename(os.path.join(out, "checkpoints", str(step)), target)
    return aside


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
    if tuple(args.sweep) == ("help",):  # `--sweep help`: the list, and nothing run
        print(f"--sweep KEY=V1,V2,... [KEY=V1,V2,...]: {listing}")
        raise SystemExit(0)
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
    stop = _StopRequest()
    with stop.installed():
        folder = output_folder(plan)  # locked from here on
        try:
            return _run(plan, folder, stop, row_warning)
        except BaseException:
            if stop.abort is not None:  # before training began: nothing computed, nothing kept
                folder.discard()
            raise
        finally:
            folder.release()


def _run(plan: Plan, folder: OutputFolder, stop: _StopRequest, row_warning) -> dict:
    """run()'s body, in a locked folder: start (nothing computed yet: a signal ends the run at
    once), the intervals, and the outputs; a failed write stops at once (WriteFailed) and says what
    is intact and how to go on."""
    args, out = plan.args, folder.path
    stop.abort = lambda signum: _abort_start(plan, folder, signum)
    device = plan.place.devices[0]
    print(
        f"[{plan.algo} {plan.env_id}] compiling the training program ({len(plan.runs)} rows on "
        f"{len(plan.place.devices)} {device.platform} device(s): {device.device_kind})",
        flush=True,
    )
    t0 = time.perf_counter()
    with heartbeat(lambda t: f"[{plan.algo} {plan.env_id}] still compiling: {t:.0f}s"):
        state = jax.block_until_ready(init_seeds(plan.init, [s for _, s in plan.runs], plan.hp))
    init_seconds = time.perf_counter() - t0
    with _signals_deferred() as caught:  # files are cut and moved here: never half done
        state, progress, rows = start_or_resume(plan, out, state)
    if caught:
        stop(caught[0], None)
    compiled, compile_seconds = compile_program(plan, state)
    compile_seconds += init_seconds
    try:
        with _signals_deferred() as caught:
            manager = checkpoint_manager(out) if args.checkpoint_every > 0 else None
            write_config(plan, out)
        if caught:
            stop(caught[0], None)
        stop.abort = None  # from here on a signal stops the run at the end of the interval in flight
        state, rows, saved_at, all_diverged = train_intervals(
            plan, out, compiled, state, progress, rows, manager, stop, row_warning
        )
        with _signals_deferred():
            done = progress["done_iters"]
            if stop.signal is not None and done == 0 and folder.fresh:
                folder.discard()
                print(
                    f"{signal.Signals(stop.signal).name} before the first interval completed: nothing computed, "
                    "nothing kept (the same command starts again)",
                    flush=True,
                )
                return dict(
                    algo=plan.algo, env_id=plan.env_id, seeds=plan.seeds, completed=False, interrupted=True, env_steps=0
                )
            state = plan.place.get(state)
            if args.checkpoint_every and saved_at != done:
                progress["checkpoint_seconds"].append(save_checkpoint(manager, done, state, progress))
            latest = latest_checkpoint(out)
            checkpoint_mb = directory_mb(os.path.join(out, "checkpoints", str(latest))) if latest is not None else None
            interrupted = stop.signal is not None and done < plan.trainer.num_iterations
            summary = write_outputs(
                out, plan, state, rows, progress, compile_seconds, checkpoint_mb, interrupted, all_diverged
            )
            if interrupted:
                print(
                    f"interrupted after {done * plan.batch:,} of {plan.trainer.num_iterations * plan.batch:,} env "
                    f"steps per seed; every output describes that point; {how_to_go_on(plan, out, done)}",
                    flush=True,
                )
            if all_diverged:
                print(
                    f"every seed{' of every member' if plan.sweep.keys else ''} has diverged: stopped after "
                    f"{done * plan.batch:,} env steps per seed, nothing is left to train (the diverged column of "
                    "metrics.csv says when each one did)",
                    flush=True,
                )
        return summary
    except WriteFailed as e:
        for tmp in glob.glob(os.path.join(glob.escape(out), "checkpoints", "*orbax-checkpoint-tmp*")):
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint: free its space now
        done = progress["done_iters"]
        if folder.fresh and done == 0:
            folder.discard()
            then = "nothing was computed; free some space and run again"
        else:
            then = (
                f"stopped at once after {done * plan.batch:,} env steps per seed; metrics.csv holds every "
                f"completed interval; {how_to_go_on(plan, out, done, 'free some space, then ')}"
            )
        raise WriteFailed(e.what, f"{e.reason}; {then}") from None


def _abort_start(plan: Plan, folder: OutputFolder, signum: int) -> None:
    """A signal before training began: nothing is computed, so nothing is kept (a fresh run's folder
    goes) and the run ends at once. A script exits (os._exit: unwinding a Python exception through
    jax's lowering and compilation, as a second Ctrl-C used to, could crash the process natively);
    a session that called run() gets its KeyboardInterrupt."""
    name = signal.Signals(signum).name
    folder.discard()
    if folder.fresh:
        print(f"{name} before training began: nothing computed, nothing written", flush=True)
    else:
        print(f"{name} before training began: nothing computed; {how_to_go_on(plan, folder.path, 0)}", flush=True)
    if _AS_SCRIPT:
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    raise KeyboardInterrupt


def how_to_go_on(plan: Plan, out: str, done_iters: int, first: str = "") -> str:
    """The command that resumes the run from its latest checkpoint, or why there is none."""
    latest = latest_checkpoint(out)
    if latest is None:
        return "no checkpoint was saved, so it cannot be resumed"
    script = sys.argv[0] if _AS_SCRIPT and os.path.basename(sys.argv[0]) in SCRIPTS else f"{plan.algo}.py"
    since = f" (from its checkpoint at {latest * plan.batch:,} steps)" if latest != done_iters else ""
    return f"{first}resume with: python {script} --resume {out}{since}"


def latest_checkpoint(out: str) -> int | None:
    """The newest complete checkpoint's iteration in `<out>/checkpoints` (orbax names each folder by
    it; a save in progress has a temporary name), or None."""
    try:
        steps = [int(name) for name in os.listdir(os.path.join(out, "checkpoints")) if name.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def plan_run(args, algo, validate_args, make_train, metric_columns, sweepable) -> Plan:
    """The checks (one-line errors), the environment, the sweep's grid, the devices and the vmapped
    program, traced but not compiled: a swept value that decides the program's structure is an
    error here, before anything is written."""
    validate_args(args)
    sweep = parse_sweep(args, sweepable, validate_args)
    env = make_env(args)
    note = torsos.check(getattr(args, "torso", "mlp"), env.id, env.obs_shape)  # what --torso auto chose
    if note:
        print(note)
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
    trainer = make_train(args, env)
    note = rounding_note(args, trainer)
    if note:
        print(note)
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
        trainer=trainer,
        init=init,
        program=program,
        batch=args.num_envs * args.num_steps,
        metric_columns=tuple(metric_columns),
        columns=lead + tuple(metric_columns) + ("diverged",),
        donate=donate,
    )


def rounding_note(args, trainer) -> str | None:
    """A run trains whole rollouts of num_envs x num_steps steps: a line saying how the budget and
    the evaluation interval were rounded, or None where neither was."""
    batch = args.num_envs * args.num_steps
    rounded = [
        f"{_flag(name)} {given:,} -> {kept:,}"
        for name, given, kept in (
            ("total_timesteps", args.total_timesteps, trainer.num_iterations * batch),
            ("eval_every", args.eval_every, trainer.iters_per_interval * batch),
        )
        if given != kept
    ]
    if not rounded:
        return None
    return f"the run trains whole rollouts of {batch:,} steps (--num-envs x --num-steps): {', '.join(rounded)}"


def output_folder(plan: Plan) -> OutputFolder:
    """The run's folder, locked: the resumed one (of the same script), or a new or emptied one; on
    the hosts after the first (jax.distributed), a temporary folder whose outputs go nowhere."""
    args = plan.args
    if jax.process_index() > 0:
        path = tempfile.mkdtemp(prefix=f"{plan.algo}_process{jax.process_index()}_")
        return OutputFolder(path, None, created=False, fresh=True)
    if args.resume is None:
        return prepare_output_dir(args, plan.algo)
    with open(os.path.join(args.resume, "config.json")) as f:
        config = json.load(f)
    if config["algo"] != plan.algo:
        raise ConfigError(f"--resume {args.resume!r}: a run of {config['algo']}.py, not of {plan.algo}.py")
    folder = OutputFolder(args.resume, FolderLock(args.resume), created=False, fresh=False)
    was, now = len(config.get("devices", [])), len(plan.place.devices)
    if was and was != now:
        print(
            f"warning: --resume {args.resume}: the run was made on {was} device(s) and goes on on {now}, which "
            "batches its rows differently: the resumed part is not the uninterrupted run's, it differs by float "
            f"rounding, which training amplifies (for exactly the same numbers, resume on {was} device(s))",
            file=sys.stderr,
            flush=True,
        )
    return folder


def compile_program(plan: Plan, state):
    """The compiled program (of every row, for the initial states' shapes and layout) and its
    seconds, with a line when it is compiled (and a heartbeat while it compiles)."""
    t0 = time.perf_counter()
    frozen = np.zeros(len(plan.runs), bool)
    with heartbeat(lambda t: f"[{plan.algo} {plan.env_id}] still compiling: {t:.0f}s"):
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
    return compiled, seconds


def start_or_resume(plan: Plan, out: str, state):
    """(state, progress, rows): fresh, or the newest intact checkpoint's, with metrics.csv cut back
    to the rows written up to it."""
    progress = dict(done_iters=0, num_rows=0, diverged={}, train_seconds=0.0, checkpoint_seconds=[])
    if plan.args.resume is None:
        return state, progress, []
    state, progress = restore_checkpoint(out, state)
    if len(progress["diverged"]) == len(plan.runs):
        raise ConfigError(f"--resume {out!r}: every seed of this run has diverged; nothing is left to train")
    rows = truncate_metrics(os.path.join(out, "metrics.csv"), progress["num_rows"])
    with open(os.path.join(out, "config.json")) as f:
        before = json.load(f)["args"]["total_timesteps"] // plan.batch
    note = extension_note(plan.args, before, plan.trainer.num_iterations, progress["done_iters"], plan.batch)
    if note:
        print(note)
    print(f"resuming {out} at {progress['done_iters'] * plan.batch:,} env steps per seed")
    return state, progress, rows


def extension_note(args, before: int, after: int, done: int, batch: int) -> str | None:
    """What a larger --total-timesteps does to the annealed schedules (the flags anneal_*): each goes
    on as if it had decayed over the new total from the start, so the rates jump up at the resume,
    then reach 0 at the new end (held at their final values, they would stay at about 0, which is
    where a linear decay ends, and the added steps would train nothing). None if not extended."""
    if after <= before:
        return None
    extended = f"--total-timesteps {after * batch:,} extends the run from {before * batch:,} steps per seed"
    annealed = [
        _flag(f.name) for f in dataclasses.fields(args) if f.name.startswith("anneal_") and getattr(args, f.name)
    ]
    if not annealed:
        return f"{extended}; no schedule is annealed, so training goes on as before"
    return (
        f"{extended}: the annealed schedules ({', '.join(annealed)}) go on as if they had decayed over the new total "
        f"from the start, so at {done * batch:,} steps they rise from {1 - done / before:.0%} to "
        f"{1 - done / after:.0%} of their initial values"
    )


def write_config(plan: Plan, out: str) -> None:
    """config.json: the arguments, seeds, sweep members, versions and devices of the run."""
    sweep, place = plan.sweep, plan.place
    with written(os.path.join(out, "config.json")) as f:
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
    spent, a stop is requested or every row has diverged; after each, the divergence guard,
    metrics.csv's rows, progress lines, TensorBoard and the checkpoints that are due. Returns
    (state, rows, the iteration of the last checkpoint, whether every row has diverged); `progress`
    is updated in place. A failed write is a WriteFailed, with metrics.csv cut back to whole rows."""
    args, trainer, sweep, batch = plan.args, plan.trainer, plan.sweep, plan.batch
    resuming = args.resume is not None
    frozen = np.array([name in progress["diverged"] for name in plan.names])
    hp_in = plan.place.put(plan.hp)
    state = plan.place.put(state)  # from here on: the program's layout (padded, sharded)
    stop.droppable = not plan.donate
    done_iters, saved_at = progress["done_iters"], progress["done_iters"]
    path = os.path.join(out, "metrics.csv")
    try:
        csv_file = open(path, "a" if resuming else "w", newline="")
        writer = csv.DictWriter(csv_file, fieldnames=plan.columns)
        if not resuming:
            writer.writeheader()
            csv_file.flush()
        whole = csv_file.tell()  # metrics.csv's size up to its last whole row
    except OSError as e:
        raise WriteFailed("metrics.csv", e.strerror) from None
    try:
        tb = tensorboard_writer(out, args, done_iters * batch) if args.tensorboard else None
    except OSError as e:
        csv_file.close()
        raise WriteFailed("tb/ (TensorBoard's events)", e.strerror) from None
    capture = video_capture(plan, out, tb) if args.capture_video else None
    captured_at = None
    t_train = time.perf_counter()
    try:
        while done_iters < trainer.num_iterations and stop.signal is None and not frozen.all():
            n = min(trainer.iters_per_interval, trainer.num_iterations - done_iters)
            # Dispatch is asynchronous: `state` is rebound only once the interval's metrics are on
            # the host and written, so it always matches metrics.csv.
            next_state, metrics = compiled(state, hp_in, jnp.int32(n), plan.place.put(frozen))
            with heartbeat(
                lambda t: (
                    f"[{plan.algo} {plan.env_id}] interval to {(done_iters + n) * batch:,} steps in flight: {t:.0f}s"
                )
            ):
                metrics = jax.device_get(plan.place.get(metrics))
            newly = ~metrics.pop("finite") & ~frozen
            eval_keys = np.asarray(metrics.pop("eval_key"))  # each row's evaluation key (uint32 [rows, 2])
            histograms = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("hist_")]}  # --verbose 2
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
                # the key of each row's last evaluation (a frozen row's: of its last finite one),
                # saved in params.msgpack so that evaluate.py repeats that evaluation exactly
                progress["eval_keys"] = [
                    old if frozen[i] and old else eval_keys[i].tolist()
                    for i, old in enumerate(progress.get("eval_keys") or [None] * len(plan.runs))
                ]
                new_rows = metric_rows(sweep, plan.runs, steps, metrics, plan.columns, frozen)
                try:
                    writer.writerows(new_rows)
                    csv_file.flush()
                except OSError as e:
                    raise WriteFailed("metrics.csv", e.strerror) from None
                whole = csv_file.tell()
                rows += new_rows
                if tb is not None:
                    try:
                        log_tensorboard(tb, new_rows, plan.metric_columns[2:], steps, histograms)
                    except OSError as e:
                        raise WriteFailed("tb/ (TensorBoard's events)", e.strerror) from None
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
            evaluations = len(rows) // len(plan.runs)
            if capture and args.capture_video_every and evaluations % args.capture_video_every == 0:
                t_capture = time.perf_counter()
                capture(state, progress["eval_keys"][0], steps)
                captured_at = done_iters
                t_train += time.perf_counter() - t_capture  # not training time
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
        if capture and rows and captured_at != done_iters and progress.get("eval_keys"):
            capture(state, progress["eval_keys"][0], done_iters * batch)
    except KeyboardInterrupt:  # the second Ctrl-C: the interval in flight is dropped
        stop.signal = signal.SIGINT
    except WriteFailed:
        with contextlib.suppress(OSError):
            csv_file.close()  # (its buffer, written now or not)
        with contextlib.suppress(OSError):
            os.truncate(path, whole)  # a row cut in the middle would not be a row
        raise
    finally:
        for f in (csv_file, tb):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
    return state, rows, saved_at, bool(frozen.all())


def video_capture(plan: Plan, out: str, tb) -> Callable:
    """--capture-video: (state, the first row's evaluation key, env steps) -> a video of the first
    row's deterministic pi, the first episode of that evaluation (watch.py), written to
    <out>/videos/env_steps_<steps>.<mp4 or gif> and, with --tensorboard, logged as an animated GIF
    ("video/seed_<i>"). The recording is compiled once, on first use; it changes no number."""
    import watch

    args, (member, seed) = plan.args, plan.runs[0]
    env, render = make_env(args), watch.renderer(args.env_id, args.env_backend)
    policy = watch.policy(sys.modules[type(args).__module__], plan.trainer, args)
    record = jax.jit(lambda p, rms, key: watch.record(env, policy(p, rms), 1, key, render.extract))

    def capture(state, key, steps: int) -> None:
        row = jax.device_get(jax.tree.map(lambda x: x[0], (state.params, state.obs_rms._asdict())))
        rec = jax.device_get(record(*row, jnp.asarray(key, jnp.uint32)))
        frames = watch.episode_frames(rec, 1, render.render, f"{steps:,} steps  seed {seed}  ")
        path = watch.write_video(os.path.join(out, "videos", f"env_steps_{steps}"), frames, render.fps)
        if tb is not None:
            watch.log_video(
                tb, f"video/{'member_%d_' % member if plan.sweep.keys else ''}seed_{seed}", frames, render.fps, steps
            )
        print(f"video: {path} ({len(frames)} frames, return {float(rec.episode_returns[0]):.2f})", flush=True)

    return capture


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
        lines = f.readlines()  # (newline="": each line as written, its \r\n kept)
    with written(path, newline="") as f:
        f.writelines(lines[: 1 + num_rows])
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
    """The TensorBoard events of `<out>/tb` (tensorboardX's event files; no TensorFlow needed), the
    configuration as text. On resume, TensorBoard hides the events an earlier session wrote after the
    checkpoint's step (they are written again); those at its step belong to the interval the
    checkpoint ends, which is not computed again, and stay."""
    writer = TensorBoardEvents(os.path.join(out, "tb"), purge_step=start_step + 1 if start_step else None)
    if not start_step:
        config = json.dumps(dataclasses.asdict(args), indent=2)
        writer.add_text("config", "    " + config.replace("\n", "\n    "), 0)
    return writer


class TensorBoardEvents:
    """A TensorBoard event file written in this thread. (tensorboardX's SummaryWriter writes from a
    thread of its own: a write that fails there, on a full disk, is a traceback in that thread and
    a queue that then blocks the run.) The same records: a scalar, a text or a histogram per event."""

    def __init__(self, logdir: str, purge_step: int | None = None):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        os.makedirs(logdir, exist_ok=True)
        self._events, self._event = EventsWriter(os.path.join(logdir, "events")), Event
        if purge_step is not None:  # TensorBoard hides what an earlier session wrote from this step on
            self._events.write_event(Event(step=purge_step, file_version="brain.Event:2"))
            self._events.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        self._write(scalar(tag, value), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboardX.summary import text as text_summary

        self._write(text_summary(tag, text), step)

    def add_histogram(self, tag: str, h, step: int) -> None:
        """A histogram already binned (training.Histogram of one row): TensorBoard's HistogramProto,
        whose bucket i holds the values from limit i-1 (min, for the first) up to limit i."""
        from tensorboardX.summary import histogram_raw

        limits, counts = np.asarray(h.limits, np.float64), np.asarray(h.counts, np.float64)
        args = (float(h.min), float(h.max), float(h.num), float(h.sum), float(h.sum_squares))
        self._write(histogram_raw(tag, *args, limits.tolist(), counts.tolist()), step)

    def add_summary(self, summary, step: int) -> None:
        """A ready-made Summary proto (watch.log_video's animated GIF)."""
        self._write(summary, step)

    def _write(self, summary, step: int) -> None:
        self._events.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()


def log_tensorboard(writer, rows: list[dict], metrics, steps: int, histograms: dict | None = None) -> None:
    """Every metric of every seed (`<metric>/seed_<i>`, in a sweep `<metric>/member_<k>_seed_<i>`)
    and its mean over the healthy seeds (`<metric>/mean`, `<metric>/member_<k>_mean`), at env steps
    per seed; with --verbose 2 the histograms of every healthy seed (`hist_<name>/seed_<i>`; arrays
    with a leading axis of rows, as `rows`: training.Histogram)."""
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
    for k, h in (histograms or {}).items():
        for i, r in enumerate(rows):
            if not r["diverged"]:
                member = f"member_{r['member']}_" if "member" in r else ""
                writer.add_histogram(f"{k}/{member}seed_{r['seed']}", jax.tree.map(lambda x: x[i], h), steps)
    writer.add_scalar("diverged_seeds", len(rows) - len(healthy), steps)
    writer.flush()


def write_outputs(
    out, plan: Plan, state, rows, progress, compile_seconds, checkpoint_mb, interrupted, all_diverged=False
) -> dict:
    """summary.json, params.msgpack and curves.png for the last completed interval (each written
    whole or not at all), and the console's closing table."""
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
        all_diverged=all_diverged,  # every seed (of every member) diverged: the run stopped there
    )
    with written(os.path.join(out, "summary.json")) as f:
        json.dump(summary, f, indent=2)
    # Parameters of every row (leading axis: member-major, then seed) and their observation
    # statistics, as of the last completed interval (a diverged seed's: its last finite state).
    # Load with flax.serialization.msgpack_restore(open(path, "rb").read()).
    with written(os.path.join(out, "params.msgpack"), "wb") as f:
        saved = {"seeds": np.asarray([s for _, s in runs]), "params": state.params, "obs_rms": state.obs_rms._asdict()}
        if progress.get("eval_keys"):  # the key of each row's last evaluation (evaluate.py)
            saved["eval_key"] = np.asarray(progress["eval_keys"], np.uint32)
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
        print(f"member {k} ({member_label(member)}): {final_mean_text(means[k], counts[k], len(seeds))}")
    mean = "" if sweep.keys else f"{final_mean_text(means[0], counts[0], len(seeds))} | "
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


def final_mean_text(mean: float | None, count: int, num_seeds: int) -> str:
    """The closing table's mean final eval return, rounded; where every seed diverged, said so."""
    if mean is None:
        return f"no final eval return: every seed diverged (0 of {num_seeds} seeds)"
    return f"mean final eval return {mean:.2f} over {count} of {num_seeds} seeds"


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
    """The scripts' entry point: one-line errors for bad input and for an output that cannot be
    written, and the exit codes (EXIT_*: 130 interrupted, 3 every seed diverged, 4 a failed write)."""
    global _AS_SCRIPT
    _AS_SCRIPT = True
    prog = os.path.basename(sys.argv[0])
    try:
        summary = run_fn(parse(argv))
    except (ConfigError, envs.UnknownEnvError) as e:
        raise SystemExit(f"{prog}: error: {e}")
    except WriteFailed as e:
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(2 if _REAL_STDERR is None else _REAL_STDERR, f"{prog}: error: {e}\n".encode())
        # At once: orbax's failed writes leave coroutines behind whose teardown would print pages.
        os._exit(EXIT_WRITE_FAILED)
    for s in (signal.SIGINT, signal.SIGTERM):  # every output is written: nothing left to stop
        signal.signal(s, signal.SIG_IGN)
    if summary.get("interrupted"):
        sys.exit(EXIT_INTERRUPTED)
    if summary.get("all_diverged"):
        sys.exit(EXIT_DIVERGED)
