"""jax's rolled CPU lowering of its random generator against the unrolled one runner.py registers.

    python benchmarks/threefry.py ppo.py --preset purejaxrl_cartpole --num-seeds 16
    python benchmarks/threefry.py --iterations 1 --repeats 5 ppo.py --env-id ant --num-seeds 16

The script's training program (throughput.py's: `--iterations` iterations of every seed, no
evaluation) is compiled twice in one process, with jax's default CPU lowering of threefry2x32 (a
rolled loop over its 5 rounds) and with the unrolled one (runner.CPU_THREEFRY_UNROLLED), then timed
interleaved for `--repeats` rounds. Prints env steps/s of each, the median of the rounds' time
ratios, compile seconds, and whether the two programs' parameters after one call are bitwise equal.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import runner  # noqa: E402  (throughput.py applies runner.configure_jax() on import)
from throughput import compile_program, split_argv, time_interleaved, training_program  # noqa: E402


@dataclass
class Bench:
    """Flags of the tool; the script's flags follow the script name."""

    iterations: int = 8
    """training iterations per timed call"""
    repeats: int = 7
    """rounds of timed calls (each program once per round)"""


def main(argv: list[str] | None = None) -> dict:
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf

    argv = sys.argv[1:] if argv is None else list(argv)
    bench, script, script_argv = split_argv(argv, "threefry.py", Bench)
    module = importlib.import_module(script)
    args = module.parse_args(script_argv)
    module.validate(args)
    env = runner.make_env(args)
    state = runner.init_seeds(module.make_train(args, env).init, list(range(args.seed, args.seed + args.num_seeds)))
    programs, compile_seconds = {}, {}
    for name, rule in (("rolled", tf._threefry2x32_cpu_lowering_rule), ("unrolled", tf._threefry2x32_lowering_rule)):
        mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
        compiled, compile_seconds[name] = compile_program(
            training_program(module.make_train(args, env), bench.iterations), state
        )
        programs[name] = (compiled, state, lambda y: y[0])
    if not runner.CPU_THREEFRY_UNROLLED:  # leave the process as runner.configure_jax() set it
        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_cpu_lowering_rule, platform="cpu")
    equal = all(
        np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(programs["rolled"][0](state)[0].params),
            jax.tree.leaves(programs["unrolled"][0](state)[0].params),
        )
    )
    timed = time_interleaved(programs, bench.repeats)
    steps = bench.iterations * args.num_envs * args.num_steps * args.num_seeds
    result = {
        name: dict(
            env_steps_per_second=steps / float(np.median(timed[name][0])),
            compile_seconds=compile_seconds[name],
            seconds=timed[name][0].tolist(),
        )
        for name in programs
    }
    result["speedup"] = float(np.median(timed["rolled"][0] / timed["unrolled"][0]))
    result["bitwise_equal_params"] = bool(equal)
    for name in programs:
        print(
            f"{name:>9}: {result[name]['env_steps_per_second']:>10,.0f} env steps/s "
            f"(compile {compile_seconds[name]:.1f}s)"
        )
    print(
        f"unrolled / rolled speed: {result['speedup']:.3f}x (median of {bench.repeats} rounds); "
        f"parameters after one call bitwise equal: {equal}",
        flush=True,
    )
    return result


if __name__ == "__main__":
    main()
