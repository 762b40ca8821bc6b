"""Training iterations of two or more versions of the scripts, timed interleaved in one process.

    git worktree add /tmp/before <commit>       # the version to compare against
    python benchmarks/versus.py before=/tmp/before/ppo.py after=ppo.py \\
        --flags="--preset purejaxrl_cartpole --num-seeds 16"
    python benchmarks/versus.py ppo=ppo.py bpo=bpo.py --flags="--preset cartpole_ppo --num-seeds 16" \\
        --extra bpo="ppo_bpo_zero1.0"          # flags one variant adds (here: a preset after cartpole_ppo)

Each variant is NAME=PATH of a script file (ppo.py, bpo.py or bpo_traj.py, of any checkout). Each is
loaded from its own file with its own checkout's runner.py and envs/ (the ones beside it, so a
version from before a change to either is timed as it was), configured by its own
parser with the shared flags, and `--iterations` training iterations of every seed (rollout and
every update, no evaluation, vmapped over seeds in one scan, as throughput.py's training program)
are compiled once. The compiled programs are then called in turn, variant after variant, for
`--repeats` rounds, so a slow moment of a shared machine falls on every variant alike; the median
over rounds is reported, with env steps per second and the ratio of each to the first variant.
Compilation options are the process's: every variant compiles with the XLA_FLAGS (printed) and the
random generator's CPU lowering this checkout's runner.py sets; to compare versions each with its
own options, run throughput.py in each checkout, alternating.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass, field

import jax
import numpy as np
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# This checkout's CPU compilation options (runner.configure_jax(), applied by importing
# throughput.py) before anything compiles, so every variant, of any checkout, compiles with the
# same options.
import runner  # noqa: E402, F401
from throughput import compile_program, time_interleaved, training_program, write_json  # noqa: E402


@dataclass(frozen=True)
class Args:
    variants: tyro.conf.Positional[tuple[str, ...]]
    """NAME=PATH of each script version; the first is the reference of the ratios"""
    flags: str = ""
    """the flags every variant gets (its own parser reads them, presets included)"""
    extra: tuple[str, ...] = field(default_factory=tuple)
    """NAME=FLAGS: flags added for one variant (presets it names are appended to --flags' presets)"""
    iterations: int = 4
    """training iterations per timed call"""
    repeats: int = 9
    """rounds of calls (each variant once per round); the median is reported"""
    out: str = ""
    """if set, write the figures to this JSON file"""


def _shared_modules() -> dict:
    """Remove and return sys.modules' runner, training and envs (with its submodules)."""
    shared = ("runner", "training", "envs")
    return {k: sys.modules.pop(k) for k in list(sys.modules) if k in shared or k.startswith("envs.")}


@contextlib.contextmanager
def checkout_modules(directory: str, own: dict):
    """Within: `import runner`, `import training` and `import envs` (and envs' lazy imports) find the checkout at
    `directory`'s modules, `own` (filled on first use); after: this checkout's again."""
    ours = _shared_modules()
    sys.modules.update(own)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path.remove(directory)
        own.clear()
        own.update(_shared_modules())
        sys.modules.update(ours)


def load(name: str, path: str):
    """The script at `path` as a module, with its checkout's runner and envs (module.runner,
    module.envs); returns (module, the modules to enter with checkout_modules)."""
    own: dict = {}
    with checkout_modules(os.path.dirname(os.path.abspath(path)), own):
        spec = importlib.util.spec_from_file_location(f"versus_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # flax's dataclasses look their module up
        spec.loader.exec_module(module)
    return module, own


def argv_for(flags: str, extra: str) -> list[str]:
    """The shared flags plus a variant's own; presets of both form one --preset list."""
    shared, own = shlex.split(flags), shlex.split(extra)
    if "--preset" in shared and own and not own[0].startswith("--"):
        i = shared.index("--preset") + 1
        while i < len(shared) and not shared[i].startswith("--"):
            i += 1
        return shared[:i] + own + shared[i:]
    return shared + (["--preset"] + own if own and not own[0].startswith("--") else own)


def main(argv: list[str] | None = None) -> dict:
    args = tyro.cli(Args, args=argv)
    extra = dict(e.split("=", 1) for e in args.extra)
    programs = {}
    for variant in args.variants:
        if "=" not in variant:
            raise SystemExit(f"versus.py: error: a variant is NAME=PATH, got {variant!r}")
        name, path = variant.split("=", 1)
        module, own = load(name, path)
        directory = os.path.dirname(os.path.abspath(path))
        with checkout_modules(directory, own):
            script_args = module.parse_args(argv_for(args.flags, extra.get(name, "")))
            module.validate(script_args)
            trainer = module.make_train(script_args, module.runner.make_env(script_args))
            seeds = list(range(script_args.seed, script_args.seed + script_args.num_seeds))
            state = jax.block_until_ready(module.runner.init_seeds(trainer.init, seeds))
            compiled, compile_seconds = compile_program(training_program(trainer, args.iterations), state)
        steps = args.iterations * len(seeds) * script_args.num_envs * script_args.num_steps
        programs[name] = dict(compiled=compiled, state=state, steps=steps, path=path, compile_seconds=compile_seconds)
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, for every variant", flush=True)
    timed = time_interleaved(
        {name: (p["compiled"], p["state"], lambda y: y[0]) for name, p in programs.items()}, args.repeats
    )
    first = None
    result = {}
    for name, p in programs.items():
        times = timed[name][0]
        seconds = float(np.median(times))
        first = first or seconds
        result[name] = dict(
            path=p["path"],
            env_steps_per_call=p["steps"],
            median_seconds=seconds,
            env_steps_per_second=p["steps"] / seconds,
            time_vs_first=seconds / first,
            compile_seconds=p["compile_seconds"],
            seconds=times.tolist(),
        )
        print(
            f"{name:>12}: {p['steps'] / seconds:>10,.0f} env steps/s, {seconds * 1e3:8.1f} ms per call "
            f"(median of {args.repeats}; {seconds / first:.2f}x the first's time; compile "
            f"{p['compile_seconds']:.1f}s)  {p['path']}",
            flush=True,
        )
    if args.out:
        write_json(
            args.out,
            dict(
                flags=args.flags,
                extra=extra,
                xla_flags=os.environ.get("XLA_FLAGS", ""),
                iterations=args.iterations,
                repeats=args.repeats,
                device=str(jax.devices()[0]),
                variants=result,
            ),
        )
    return result


if __name__ == "__main__":
    main()
