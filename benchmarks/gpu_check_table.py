"""The table of benchmarks/gpu_check.sh: one row per step, from its logs and JSON files (standard
library only, so it prints even when the install failed).

    python benchmarks/gpu_check_table.py OUT MODE ENV_ID SEEDS
"""

from __future__ import annotations

import json
import os
import sys

# This project's CPU figures (docs/performance.md: a 2-core CPU, 16 seeds on ant, 2026-11-25):
# ppo.py 11,475 env steps/s (throughput.py, commit 4db56ae), compile 31.9 s, and bpo.py 2,789 env
# steps/s, compile 45.7 s (benchmarks/versus.py, commit 9ea7909). Nothing measured for the others.
CPU_FIGURES = {"ppo": "11,475/s, compile 31.9 s", "bpo": "2,789/s, compile 45.7 s"}
THROUGHPUT = ("ppo", "bpo", "ppo_wide", "bpo_wide")
RUNS = ("cartpole_run", "cartpole_resume")


def load(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def cell(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def table(out: str, mode: str, env_id: str, seeds: str) -> str:
    steps = {}
    if os.path.exists(os.path.join(out, "steps.tsv")):
        for line in open(os.path.join(out, "steps.tsv")):
            name, status, seconds = line.rstrip("\n").split("\t")
            steps[name] = (status, seconds)
    cpu = CPU_FIGURES if env_id == "ant" else {}
    lines = [
        f"{mode} check, {env_id}: env steps/s, compile seconds and peak device memory against this "
        "project's CPU figures",
        "| step | outcome | seconds | env steps/s | compile s | device memory MiB | CPU figure (2-core CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, (status, seconds) in steps.items():
        if name not in THROUGHPUT + RUNS:
            lines.append(f"| {name} | {status} | {seconds} | | | | |")
    for name in THROUGHPUT:
        status, seconds = steps.get(name, ("not run", ""))
        r = load(os.path.join(out, f"{name}.json"))
        label = f"{name.split('_')[0]}.py, 16 seeds" + (" + wide_rollout" if name.endswith("_wide") else "")
        lines.append(
            f"| {label} | {status} | {seconds} | {cell(r.get('train_env_steps_per_second'), ',.0f')} "
            f"| {cell(r.get('train_compile_seconds'), '.1f')} | {cell(r.get('peak_device_memory_mb'), ',.0f')} "
            f"| {cpu.get(name, '')} |"
        )
    for name, summary, want in (
        ("cartpole_run", "cartpole_run_summary.json", 2560),
        ("cartpole_resume", "cartpole/summary.json", 3584),
    ):
        status, seconds = steps.get(name, ("not run", ""))
        s = load(os.path.join(out, summary)) if name in steps else {}
        if s:
            status += f", {s.get('env_steps', 0):,} of {want:,} steps" + (
                "" if s.get("completed") else " (NOT completed)"
            )
        label = f"bpo.py, {seeds} seeds, CartPole-v1" + (", --resume" if name == "cartpole_resume" else "")
        lines.append(
            f"| {label} | {status} | {seconds} | {cell(s.get('env_steps_per_second'), ',.0f')} "
            f"| {cell(s.get('compile_seconds'), '.1f')} | {cell(s.get('peak_device_memory_mb'), ',.0f')} | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n" + table(*sys.argv[1:5]))
