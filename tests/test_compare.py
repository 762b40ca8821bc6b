"""compare.py on small synthetic output folders."""

import csv
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(folder, algo, env_id, returns, steps, presets=(), completed=True, diverged=()):
    """An output folder as the scripts write it: returns[seed, eval]; a diverged seed's rows hold
    no numbers from its second evaluation on."""
    os.makedirs(folder)
    json.dump({"algo": algo, "env_id": env_id, "args": {"preset": list(presets)}}, open(folder / "config.json", "w"))
    json.dump({"completed": completed}, open(folder / "summary.json", "w"))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "env_steps", "train_return", "eval_return", "diverged"])
        w.writeheader()
        for j, step in enumerate(steps):
            for seed in range(returns.shape[0]):
                if seed in diverged and j > 0:
                    w.writerow({"seed": seed, "env_steps": step, "diverged": 1})
                else:
                    w.writerow(
                        {
                            "seed": seed,
                            "env_steps": step,
                            "train_return": 0.0,
                            "eval_return": returns[seed, j],
                            "diverged": 0,
                        }
                    )


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
    assert (
        len(lines) == 4
        and "| ppo | hopper | 8 |" in lines[2]
        and "| bpo + mujoco_ppo + ppo_bpo_zero | hopper | 6 |" in lines[3]
    )
    assert f"{compare.fmt(compare.iqm(a[:, -1]))}" in lines[2]
    # area under the IQM curve per step, and steps to 150 per seed
    curve = compare.iqm(a.T)
    assert f"| {compare.fmt(np.trapezoid(curve, steps) / 3000)} |" in lines[2]
    first = [steps[np.argmax(row >= 150)] for row in a if (row >= 150).any()]
    assert f"{np.median(first):,.0f}; {len(first)}/8 |" in lines[2]


def test_small_values_keep_their_digits():
    """Ratios such as 0.0157 keep four significant digits; returns keep one decimal."""
    assert [compare.fmt(x) for x in (486.34, -103.725, 10.0, 1.0213, 0.015734, 0.0, float("nan"))] == [
        "486.3",
        "-103.7",
        "10.0",
        "1.021",
        "0.01573",
        "0",
        "nan",
    ]


def test_missing_and_malformed_files_are_named(two_runs):
    tmp, *_ = two_runs
    os.remove(tmp / "bpo" / "metrics.csv")
    with pytest.raises(compare.CompareError, match=r"bpo[/\\]metrics.csv: missing"):
        compare.compare(compare.Args(runs=(str(tmp / "ppo"), str(tmp / "bpo"))))
    (tmp / "bpo" / "metrics.csv").write_text("seed,env_steps\n0,100\n")
    with pytest.raises(compare.CompareError, match=r"bpo[/\\]metrics.csv: malformed"):
        compare.compare(compare.Args(runs=(str(tmp / "bpo"),)))
    (tmp / "ppo" / "config.json").write_text("{not json")
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "compare.py"), str(tmp / "ppo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "ppo/config.json: malformed" in r.stderr and "Traceback" not in r.stderr


def test_incomplete_and_diverged_runs_are_flagged_and_left_out(tmp_path):
    rng = np.random.default_rng(2)
    steps = [1000, 2000, 3000]
    a = np.cumsum(rng.uniform(0, 100, size=(5, 3)), 1)
    write_run(tmp_path / "a", "bpo", "hopper", a, steps, completed=False, diverged=(1, 3))
    md = compare.compare(compare.Args(runs=(str(tmp_path / "a"),), output=str(tmp_path / "cmp")))
    assert "| bpo | hopper | 3 |" in md  # 3 of 5 seeds: the diverged ones are not averaged in
    assert f"{compare.fmt(compare.iqm(a[[0, 2, 4], -1]))}" in md
    assert "did not complete" in md and "seeds 1, 3 diverged" in md and "3 of 5 seeds remain" in md


def test_default_threshold_works_for_negative_returns(tmp_path):
    """Pendulum-like: from about -1200 to -200 and -400. 90% of the best final (-180) is never
    reached; 90% of the way from the lowest start to the best final is (-300)."""
    steps = [1000, 2000, 3000]
    good = np.array([[-1200.0, -500.0, -200.0]] * 4)
    bad = np.array([[-1200.0, -900.0, -400.0]] * 4)
    write_run(tmp_path / "good", "ppo", "Pendulum-v1", good, steps)
    write_run(tmp_path / "bad", "bpo", "Pendulum-v1", bad, steps)
    md = compare.compare(compare.Args(runs=(str(tmp_path / "good"), str(tmp_path / "bad")), output=str(tmp_path / "c")))
    lines = md.splitlines()
    assert "| -300.0 | 3,000; 4/4 |" in lines[2] and "| -300.0 | never; 0/4 |" in lines[3]


def test_a_metric_undefined_for_some_seeds(tmp_path):
    """bpo.py's probe_var_ratio is nan where the on-policy variance is float rounding (pi has stopped
    varying): the IQM and its interval are over the seeds with a value, an evaluation where no seed
    has one is a gap (left out of the area), and a row that is missing is still an error."""
    steps = [1000, 2000, 3000, 4000]
    ratio = np.array(
        [
            [2.0, 1.0, np.nan, 0.5],
            [3.0, np.nan, np.nan, 0.7],
            [1.5, 2.0, np.nan, np.nan],
            [2.5, 4.0, np.nan, 0.9],
            [0.5, 3.0, np.nan, 1.1],
        ]
    )
    write_run(tmp_path / "a", "bpo", "CartPole-v1", ratio, steps)
    (run,) = compare.load_runs(str(tmp_path / "a"), None)
    np.testing.assert_array_equal(np.isnan(run.returns), np.isnan(ratio))
    curve = compare.iqm(run.returns.T)
    assert curve[0] == pytest.approx(compare.iqm(ratio[:, 0])) and np.isnan(curve[2])
    assert curve[1] == pytest.approx(compare.iqm(np.array([1.0, 2.0, 4.0, 3.0])))  # the 4 seeds with a value
    lo, hi = compare.iqm_interval(run.returns.T, compare.Args(runs=()))
    assert np.isnan(lo[2]) and np.isnan(hi[2]) and np.all(lo[[0, 1, 3]] <= curve[[0, 1, 3]])
    md = compare.compare(
        compare.Args(runs=(str(tmp_path / "a"),), output=str(tmp_path / "c"), log_y=True, threshold=1.0)
    )
    final = compare.iqm(np.array([0.5, 0.7, 0.9, 1.1]))
    auc = np.trapezoid(curve[[0, 1, 3]], [1000, 2000, 4000]) / 3000
    assert f"| 5 (4 with a final value) | {compare.fmt(final)} [" in md and f"| {compare.fmt(auc)} |" in md
    assert "undefined (nan) in 7 of 20 rows" in md and (tmp_path / "c.png").stat().st_size > 0
    # a missing row is not a nan value
    lines = (tmp_path / "a" / "metrics.csv").read_text().splitlines()
    (tmp_path / "a" / "metrics.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(compare.CompareError, match="not every seed has a row"):
        compare.load_runs(str(tmp_path / "a"), None)


def test_the_seeds_areas_and_their_rank_test(two_runs, tmp_path):
    """The last column: each seed's own area (a plain loop of trapezoids, a seed's nan evaluations
    left out) and a two-sided Mann-Whitney test against the first run on the same environment."""
    tmp, steps, a, b = two_runs
    (run_a,) = compare.load_runs(str(tmp / "ppo"), None)
    areas = compare.seed_areas(run_a)
    for seed in range(len(a)):
        total = sum((a[seed, j] + a[seed, j + 1]) / 2 * (steps[j + 1] - steps[j]) for j in range(len(steps) - 1))
        assert areas[seed] == pytest.approx(total / (steps[-1] - steps[0]))
    with_nan = run_a._replace(returns=np.where(np.arange(4) == 1, np.nan, run_a.returns))
    assert compare.seed_areas(with_nan)[0] == pytest.approx(
        ((a[0, 0] + a[0, 2]) / 2 * 2000 + (a[0, 2] + a[0, 3]) / 2 * 1000) / 3000
    )
    # a's increments are uniform on [0, 100], b's on [0, 50]: every seed of a has the larger area
    write_run(tmp / "ppo_copy", "ppo", "hopper", a, steps)
    write_run(tmp / "other_env", "ppo", "ant", b, steps)
    md = compare.compare(
        compare.Args(runs=tuple(str(tmp / n) for n in ("ppo", "bpo", "ppo_copy", "other_env")), output=str(tmp / "c"))
    )
    rows = [line.rsplit("|", 2)[1].strip() for line in md.strip().splitlines()[2:6]]
    # the exact two-sided p from its definition: U = #(pairs where a's seed has the larger area),
    # against U over every way of splitting the 14 areas into 8 and 6
    areas_b = compare.seed_areas(compare.load_runs(str(tmp / "bpo"), None)[0])
    count_u = lambda x, y: sum(1.0 * (u > v) + 0.5 * (u == v) for u in x for v in y)  # noqa: E731
    u = count_u(areas_b, areas)
    pooled = list(areas) + list(areas_b)
    null = [
        count_u([pooled[i] for i in pick], [pooled[i] for i in range(14) if i not in pick])
        for pick in itertools.combinations(range(14), 6)
    ]
    exact_p = min(1.0, 2 * min(np.mean([n <= u for n in null]), np.mean([n >= u for n in null])))
    assert rows[0] == "(the first)" and float(rows[1]) == pytest.approx(
        exact_p, rel=0.06
    )  # two digits and exact_p < 0.05
    assert float(rows[2]) == pytest.approx(1.0) and rows[3] == "(the first)"  # a copy; ant's own first run
