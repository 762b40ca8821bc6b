"""A sweep in one program against the same configurations run one by one, side by side.

Runs `python <script> --sweep KEY=V1,V2 ... <flags>` once, then every member of the grid as its own
process (`--key value`, same flags), optionally the sweep again on N forced host devices, and
prints the wall time of each (compilation included: what a user waits for), the sum of the
sequential runs and the ratio, and writes them as JSON, with how many final returns equal the
standalone runs' (all of them over short runs; over long ones rounding differences grow, as between
a seed in a batch and the seed alone).

    python benchmarks/sweep.py bpo.py --sweep clip_rho=1.0,1.2,1.5 clip_c=1.0,1.5 --flags="--num-seeds 4" --devices 2
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Args:
    script: tyro.conf.Positional[str]
    """ppo.py, bpo.py or bpo_traj.py"""
    sweep: tuple[str, ...]
    """KEY=V1,V2,... as the script's --sweep takes them"""
    flags: str = ""
    """further flags for every run, one string (e.g. "--num-seeds 4 --total-timesteps 50000")"""
    devices: int = 0
    """also run the sweep on this many forced host devices (XLA_FLAGS); 0: skip"""
    out: str = "runs/sweep_benchmark.json"
    """where the figures are written"""


def timed(cmd: list[str], env: dict | None = None) -> float:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    print(f"  {seconds:.1f} s", flush=True)
    return seconds


def flag(key: str, value: str) -> list[str]:
    """--key value, or tyro's --key / --no-key for a switch."""
    name = key.replace("_", "-")
    if value.lower() in ("true", "false"):
        return [f"--{name}" if value.lower() == "true" else f"--no-{name}"]
    return [f"--{name}", value]


def main(args: Args) -> dict:
    grid = {k: v.split(",") for k, v in (item.split("=", 1) for item in args.sweep)}
    members = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    flags = shlex.split(args.flags)
    tmp = tempfile.mkdtemp(prefix="sweep_benchmark_")
    python = [sys.executable, args.script]
    result = dict(script=args.script, sweep=list(args.sweep), flags=args.flags, members=members)
    result["sweep_seconds"] = timed(python + ["--sweep", *args.sweep, *flags, "--output-dir", f"{tmp}/sweep"])
    result["sequential_seconds"] = [
        timed(python + [x for k, v in m.items() for x in flag(k, v)] + flags + ["--output-dir", f"{tmp}/member{i}"])
        for i, m in enumerate(members)
    ]
    if args.devices:
        result["sweep_devices"] = args.devices
        result["sweep_devices_seconds"] = timed(
            python + ["--sweep", *args.sweep, *flags, "--output-dir", f"{tmp}/sweep_devices"],
            env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}"},
        )
    # Equal over short runs (tests/test_sweep.py); over long ones rounding differences (another
    # batch size, another fusion) grow, as between seed i in a batch and seed i alone: counted here.
    swept = json.load(open(f"{tmp}/sweep/summary.json"))["final_eval_return"]
    alone = [json.load(open(f"{tmp}/member{i}/summary.json"))["final_eval_return"] for i in range(len(members))]
    pairs = [(a, b) for s, m in zip(swept, alone) for a, b in zip(s, m)]
    result["final_returns_equal"] = f"{sum(a == b for a, b in pairs)} of {len(pairs)}"
    total = sum(result["sequential_seconds"])
    print(
        f"\nsweep of {len(members)} members, one program: {result['sweep_seconds']:.1f} s; the same "
        f"{len(members)} one by one: {total:.1f} s ({total / result['sweep_seconds']:.2f}x the sweep's time)"
        + (
            f"; the sweep on {args.devices} forced host devices: {result['sweep_devices_seconds']:.1f} s"
            if args.devices
            else ""
        )
        + f"; final returns equal to the standalone runs': {result['final_returns_equal']}"
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__))
