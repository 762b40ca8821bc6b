"""Host round trips a GPU would make per environment step and per iteration, counted without a GPU.

    python benchmarks/gpu_syncs.py ppo.py --env-id ant --num-seeds 16
    python benchmarks/gpu_syncs.py --reset-mode select bpo.py --env-id CartPole-v1

Flags before the script name are the tool's; everything after it goes to the script's own parser.
The script's rollout and iteration (every seed, vmapped, as runner.py runs them) are exported for
the `--platform` (`cuda` by default: jax.export lowers for it on a CPU-only machine), once per reset
mode of envs/core.py (`chunked`, the CPU's, and `select`, what a GPU run gets), and the exported
StableHLO is walked:

- a `stablehlo.while` whose condition compares its counter with a constant (lax.scan, a fori_loop
  with static bounds) has a known trip count: XLA runs it on the device, and its body counts that
  many times;
- a `stablehlo.while` of any other condition (a data-dependent trip count) is decided on the host
  at every iteration: at least one round trip each time it runs (its condition, once), more when
  its body runs;
- a `stablehlo.case` (lax.cond, lax.switch) copies its branch index to the host: one round trip,
  plus the fewest of its branches.

So the figures are lower bounds: the round trips when every data-dependent loop stops at once. The
step body is the body of the rollout's scan over `num_steps`; per iteration is the whole iteration
(rollout and updates; the evaluation at the end of an interval is not in it).
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Literal

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import envs  # noqa: E402
import throughput  # noqa: E402


@dataclass
class Flags:
    """Flags of the tool; the script's flags follow the script name."""

    reset_mode: Literal["both", "chunked", "select"] = "both"
    """the environments' reset mode(s) to count (envs/core.py)"""
    platform: str = "cuda"
    """the platform jax.export lowers for (cuda, rocm, tpu, cpu)"""


class Counts(dict):
    """syncs: host round trips (a lower bound); dynamic_while, case: how many such operations run
    (a data-dependent loop's body counted zero times); counted_while: loops of known trip count."""

    def __init__(self, syncs=0, dynamic_while=0, case=0, counted_while=0):
        super().__init__(syncs=syncs, dynamic_while=dynamic_while, case=case, counted_while=counted_while)

    def __add__(self, other):
        return Counts(**{k: self[k] + other[k] for k in self})

    def __mul__(self, n):
        return Counts(**{k: self[k] * n for k in self})


def _ir(text: str):
    from jax._src.interpreters import mlir
    from jax._src.lib.mlir import ir

    return ir.Module.parse(text, context=mlir.make_ir_context())


def _name(op) -> str:
    return op.operation.name


def _constant_int(value):
    """The integer a value holds if a stablehlo.constant defines it, else None."""
    owner = value.owner
    if not hasattr(owner, "name") or owner.name != "stablehlo.constant":
        return None
    import numpy as np

    try:
        return int(np.asarray(owner.attributes["value"]).reshape(-1)[0])
    except Exception:
        return None


def trip_count(op) -> int | None:
    """A while's trip count when its condition is `counter < constant` with a constant start and a
    body that adds a constant to the counter (lax.scan, fori_loop), else None."""
    cond = op.regions[0].blocks[0]
    ops = list(cond.operations)
    if len(ops) != 2 or _name(ops[0]) != "stablehlo.compare" or _name(ops[1]) != "stablehlo.return":
        return None
    compare = ops[0].operation
    if "LT" not in str(compare.attributes["comparison_direction"]):
        return None
    counter, limit = compare.operands
    limit = _constant_int(limit)
    if limit is None or not hasattr(counter, "arg_number"):
        return None
    start = _constant_int(op.operation.operands[counter.arg_number])
    if start is None:
        return None
    return max(0, limit - start)  # jax's counters step by 1


def region_counts(region, funcs: dict, memo: dict) -> Counts:
    total = Counts()
    for block in region.blocks:
        for op in block.operations:
            total = total + op_counts(op, funcs, memo)
    return total


def op_counts(op, funcs: dict, memo: dict) -> Counts:
    name = _name(op)
    if name == "func.call":
        callee = str(op.operation.attributes["callee"]).lstrip("@")
        if callee not in memo:
            memo[callee] = region_counts(funcs[callee].regions[0], funcs, memo)
        return memo[callee]
    if name == "stablehlo.while":
        n = trip_count(op)
        if n is None:  # decided on the host; its body counted zero times (a lower bound)
            return Counts(syncs=1, dynamic_while=1)
        return region_counts(op.regions[1], funcs, memo) * n + Counts(counted_while=1)
    if name == "stablehlo.case":
        branches = [region_counts(r, funcs, memo) for r in op.regions]
        return min(branches, key=lambda c: c["syncs"]) + Counts(syncs=1, case=1)
    total = Counts()  # other ops' regions (reduce, sort, scatter) hold no control flow of their own
    for region in op.regions:
        total = total + region_counts(region, funcs, memo)
    return total


def module_counts(text: str, step_trips: int | None = None) -> Counts:
    """The counts of the module's main function; with step_trips, of one iteration of the first
    while in main whose trip count is step_trips (the rollout's scan: one environment step)."""
    module = _ir(text)
    funcs = {str(op.operation.attributes["sym_name"]).strip('"'): op for op in module.body.operations}
    main, memo = funcs["main"], {}
    if step_trips is None:
        return region_counts(main.regions[0], funcs, memo)
    for block in main.regions[0].blocks:
        for op in block.operations:
            if _name(op) == "stablehlo.while" and trip_count(op) == step_trips:
                return region_counts(op.regions[1], funcs, memo)
    raise ValueError(f"no while loop of {step_trips} iterations in main (the rollout's scan)")


def export_text(fn, args, platform: str) -> str:
    return jax.export.export(jax.jit(fn), platforms=(platform,))(*args).mlir_module()


def count(script: str, script_argv: list[str], reset_mode: str, platform: str = "cuda") -> dict:
    """Per step (the rollout's scan body) and per iteration, for one reset mode."""
    module = importlib.import_module(script)
    args = module.parse_args(script_argv)
    module.validate(args)
    env = envs.make(envs.canonical_id(args.env_id), args.env_backend, args.max_episode_steps or None,
                    args.clip_actions, reset_mode=reset_mode)  # fmt: skip
    trainer = module.make_train(args, env)
    keys = jax.vmap(jax.random.PRNGKey)(jax.numpy.arange(args.num_seeds))
    state = jax.eval_shape(jax.vmap(trainer.init), keys)  # shapes only: nothing is computed
    rollout = export_text(jax.vmap(trainer.rollout), (state,), platform)
    iteration = export_text(jax.vmap(trainer.iteration), (state,), platform)
    return dict(
        reset_mode=reset_mode,
        num_steps=args.num_steps,
        step=module_counts(rollout, args.num_steps),
        iteration=module_counts(iteration),
    )


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    flags, script, script_argv = throughput.split_argv(argv, "gpu_syncs.py", Flags)
    modes = envs.RESET_MODES if flags.reset_mode == "both" else (flags.reset_mode,)
    try:
        results = [count(script, script_argv, mode, flags.platform) for mode in modes]
    except ValueError as e:
        raise SystemExit(f"gpu_syncs.py: error: {e}")
    print(f"{script}.py {' '.join(script_argv)}, exported for {flags.platform}: host round trips (at least)")
    print("| reset mode | per env step | per iteration | data-dependent loops, conds per step | per iteration |")
    print("|---|---|---|---|---|")
    for r in results:
        s, i = r["step"], r["iteration"]
        print(
            f"| {r['reset_mode']} | {s['syncs']:,} | {i['syncs']:,} | {s['dynamic_while']}, {s['case']} | "
            f"{i['dynamic_while']:,}, {i['case']:,} |"
        )
    return results


if __name__ == "__main__":
    main()
