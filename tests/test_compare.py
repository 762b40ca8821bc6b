"""compare.py on small synthetic output folders."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(folder, algo, env_id, returns, steps, presets=()):
    """An output folder as the scripts write it: returns[seed, eval]."""
    os.makedirs(folder)
    json.dump({"algo": algo, "env_id": env_id, "args": {"preset": list(presets)}}, open(folder / "config.json", "w"))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "env_steps", "train_return", "eval_return"])
        w.writeheader()
        for j, step in enumerate(steps):
            for seed in range(returns.shape[0]):
                w.writerow({"seed": seed, "env_steps": step, "train_return": 0.0, "eval_return": returns[seed, j]})


@pytest.fixture
def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    steps = [1000, 2000, 3000, 4000]
    a = np.cumsum(rng.uniform(0, 100, size=(8, 4)), 1)
    b = np.cumsum(rng.uniform(0, 50, size=(6, 4)), 1)
    write_run(tmp_path / "ppo", "ppo", "hopper", a, steps)
    write_run(tmp_path / "bpo", "bpo", "hopper", b, steps, presets=("mujoco_ppo", "ppo_bpo_zero"))
    return tmp_path, steps, a, b


def test_iqm_and_interval_against_numpy(two_runs):
    tmp, steps, a, b = two_runs
    final = a[:, -1]
    assert compare.iqm(final) == pytest.approx(np.sort(final)[2:6].mean())  # 8 seeds: the middle 4
    args = compare.Args(runs=(), resamples=20000)
    lo, hi = compare.iqm_interval(final, args)
    rng = np.random.default_rng(1)
    boot = np.sort(final[rng.integers(0, 8, size=(20000, 8))], 1)[:, 2:6].mean(1)
    ref_lo, ref_hi = np.percentile(boot, [2.5, 97.5])
    spread = final.max() - final.min()
    assert abs(lo - ref_lo) < 0.03 * spread and abs(hi - ref_hi) < 0.03 * spread
    assert lo <= compare.iqm(final) <= hi


def test_outputs_and_table(two_runs):
    tmp, steps, a, b = two_runs
    args = compare.Args(runs=(str(tmp / "ppo"), str(tmp / "bpo")), output=str(tmp / "out" / "cmp"), threshold=150.0)
    md = compare.compare(args)
    for ext in ("png", "svg", "md"):
        assert (tmp / "out" / f"cmp.{ext}").stat().st_size > 0
    lines = md.strip().splitlines()
    assert len(lines) == 4 and "| ppo | hopper | 8 |" in lines[2] and "| bpo + mujoco_ppo + ppo_bpo_zero | hopper | 6 |" in lines[3]
    assert f"{compare.iqm(a[:, -1]):.1f}" in lines[2]
    # area under the IQM curve per step, and steps to 150 per seed
    curve = compare.iqm(a.T)
    assert f"| {np.trapezoid(curve, steps) / 3000:.1f} |" in lines[2]
    first = [steps[np.argmax(row >= 150)] for row in a if (row >= 150).any()]
    assert f"{np.median(first):,.0f}; {len(first)}/8 |" in lines[2]


def test_missing_and_malformed_files_are_named(two_runs):
    tmp, *_ = two_runs
    os.remove(tmp / "bpo" / "metrics.csv")
    with pytest.raises(compare.CompareError, match=r"bpo[/\\]metrics.csv: missing"):
        compare.compare(compare.Args(runs=(str(tmp / "ppo"), str(tmp / "bpo"))))
    (tmp / "bpo" / "metrics.csv").write_text("seed,env_steps\n0,100\n")
    with pytest.raises(compare.CompareError, match=r"bpo[/\\]metrics.csv: malformed"):
        compare.compare(compare.Args(runs=(str(tmp / "bpo"),)))
    (tmp / "ppo" / "config.json").write_text("{not json")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "compare.py"), str(tmp / "ppo")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "ppo/config.json: malformed" in r.stderr and "Traceback" not in r.stderr
