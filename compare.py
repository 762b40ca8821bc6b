"""Compare runs of ppo.py, bpo.py and bpo_traj.py the way a paper does.

Given output folders (each a multi-seed run, or a sweep: each member a run), draws eval return
against env steps, with the interquartile mean (IQM) over seeds and a bootstrap confidence band,
one panel per environment (PNG and SVG), and prints and writes a Markdown table: final return (IQM
and interval), area under the curve, steps to a threshold, and whether a run's seeds differ from
the first run's on the same environment (a rank test of the seeds' own areas).

    python compare.py runs/ppo_hopper_* runs/bpo_hopper_* --output comparison
    python compare.py runs/bpo_sweep --output ablation      # a --sweep folder: one curve per member
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tyro
from scipy import stats


@dataclass(frozen=True)
class Args:
    runs: tyro.conf.Positional[tuple[str, ...]]
    """output folders of ppo.py / bpo.py / bpo_traj.py runs"""
    labels: tuple[str, ...] = ()
    """a label per run (default: the algorithm and its presets)"""
    output: str = "comparison"
    """path prefix of the outputs: <output>.png, <output>.svg, <output>.md"""
    threshold: float | None = None
    """return for "steps to threshold"; default: per environment, 90% of the way from the lowest
    first-evaluation IQM to the best final IQM (so it also works for negative returns)"""
    confidence: float = 0.95
    """confidence level of the bootstrap intervals"""
    resamples: int = 2000
    """bootstrap resamples"""
    seed: int = 0
    """seed of the bootstrap"""
    metric: tuple[str, ...] = ("eval_return",)
    """the metrics.csv columns to compare, one curve per run and column (e.g. probe_var_ratio
    probe_var_ratio_clipped of bpo.py --variance-probe)"""
    log_y: bool = False
    """logarithmic y axis (for ratios such as probe_var_ratio)"""


class CompareError(ValueError):
    pass


class Run(NamedTuple):
    label: str
    env_id: str
    steps: np.ndarray  # [n_evals]
    returns: np.ndarray  # [n_seeds, n_evals] eval returns of the seeds that did not diverge
    warnings: tuple[str, ...]  # did not complete, diverged seeds
    metric: str = "eval_return"


def load_runs(folder: str, label: str | None, metric: str = "eval_return") -> list[Run]:
    """Read config.json and metrics.csv of one output folder: one Run, or one per member of a
    sweep (labelled by its swept values); any problem is an error naming the file."""
    config_path, metrics_path = os.path.join(folder, "config.json"), os.path.join(folder, "metrics.csv")
    for path in (config_path, metrics_path):
        if not os.path.isfile(path):
            raise CompareError(f"{path}: missing (is {folder!r} an output folder of ppo.py, bpo.py or bpo_traj.py?)")
    try:
        with open(config_path) as f:
            config = json.load(f)
        algo, env_id, presets = config["algo"], config["env_id"], config["args"].get("preset", [])
        members = config.get("members") or [{}]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CompareError(f"{config_path}: malformed ({e!r})")
    try:
        with open(metrics_path, newline="") as f:
            header = next(csv.reader(f), [])
    except ValueError as e:  # (not text)
        raise CompareError(f"{metrics_path}: malformed ({e!r})")
    if header and metric not in header:  # a column this run's --verbose level does not write, or none writes
        raise CompareError(
            f"{metrics_path}: malformed (no column {metric!r}; the run was made with --verbose "
            f"{config['args'].get('verbose', 1)}, and docs/runs.md lists the columns of each level)"
        )
    try:
        with open(metrics_path, newline="") as f:
            rows = [
                (
                    int(r.get("member") or 0),
                    int(r["seed"]),
                    int(r["env_steps"]),
                    int(r.get("diverged") or 0),
                    float(r[metric]) if r[metric] != "" else np.nan,
                )
                for r in csv.DictReader(f)
            ]
    except (KeyError, ValueError, TypeError) as e:
        raise CompareError(f"{metrics_path}: malformed ({e!r})")
    if not rows:
        raise CompareError(f"{metrics_path}: no rows")
    label = label or " + ".join([algo, *presets])
    summary_path = os.path.join(folder, "summary.json")
    if not os.path.isfile(summary_path):
        incomplete = f"{folder} has no summary.json (still running, or killed): its last rows may be partial"
    elif not json.load(open(summary_path)).get("completed", False):
        incomplete = f"{folder} did not complete (stopped at {max(r[2] for r in rows):,} env steps per seed)"
    else:
        incomplete = None
    runs = []
    for k, member in enumerate(members):
        name = label + (": " + " ".join(f"{key}={value}" for key, value in member.items()) if member else "")
        runs.append(_run(name, env_id, [r[1:] for r in rows if r[0] == k], metrics_path, incomplete, metric))
    return runs


def _run(label: str, env_id: str, rows: list[tuple], metrics_path: str, incomplete: str | None, metric: str) -> Run:
    """One run (or sweep member) from its rows (seed, env_steps, diverged, value)."""
    if not rows:
        raise CompareError(f"{metrics_path}: no rows for {label}")
    seeds, steps = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    returns = np.full((len(seeds), len(steps)), np.nan)
    present = np.zeros((len(seeds), len(steps)), bool)
    diverged = sorted({seed for seed, _, flag, _ in rows if flag})
    for seed, step, flag, ret in rows:
        returns[seeds.index(seed), steps.index(step)] = ret
        present[seeds.index(seed), steps.index(step)] = True
    kept = [seeds.index(s) for s in seeds if s not in diverged]
    returns, present = returns[kept], present[kept]
    if not present.all():
        raise CompareError(f"{metrics_path}: malformed (not every seed has a row at every env_steps)")
    warnings = [f"{label}: {incomplete}"] if incomplete else []
    undefined = int(np.isnan(returns).sum())  # a row that holds nan (or nothing) in this column
    if undefined:
        warnings.append(
            f"{label}: {metric} is undefined (nan) in {undefined} of {returns.size} rows; "
            "IQMs and intervals are over the seeds with a value"
        )
    if diverged:
        warnings.append(
            f"{label}: seeds {', '.join(map(str, diverged))} diverged and are left out of its statistics "
            f"({len(seeds) - len(diverged)} of {len(seeds)} seeds remain)"
        )
    if not len(returns):
        raise CompareError(f"{label}: every seed diverged")
    return Run(label, env_id, np.asarray(steps), returns, tuple(warnings), metric)


def iqm(x, axis=-1):
    """Interquartile mean: the mean of the middle 50% (Agarwal et al. 2021). Where x holds nan
    (a metric undefined for some seeds), over the values that are not nan (nan if none is)."""
    x = np.asarray(x, float)
    if not np.isnan(x).any():
        return stats.trim_mean(x, 0.25, axis=axis)
    finite_iqm = lambda v: stats.trim_mean(v[~np.isnan(v)], 0.25) if (~np.isnan(v)).any() else np.nan
    return np.apply_along_axis(finite_iqm, axis, x)[()]


def iqm_interval(x: np.ndarray, args: Args) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the IQM over seeds (last axis), for every leading index;
    where x holds nan, each index's interval resamples only its values that are not nan."""
    x = np.asarray(x, float)
    if np.isnan(x).any():
        bounds = [
            iqm_interval(v[~np.isnan(v)], args) if (~np.isnan(v)).any() else (np.nan, np.nan)
            for v in x.reshape(-1, x.shape[-1])
        ]
        return tuple(np.array([float(b[i]) for b in bounds]).reshape(x.shape[:-1])[()] for i in (0, 1))
    if x.shape[-1] < 2:
        return iqm(x), iqm(x)
    res = stats.bootstrap(
        (x,),
        iqm,
        axis=-1,
        vectorized=True,
        n_resamples=args.resamples,
        confidence_level=args.confidence,
        method="percentile",
        rng=np.random.default_rng(args.seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def steps_to(run: Run, threshold: float) -> np.ndarray:
    """Per seed, the first env_steps at which the eval return reaches threshold (nan if never)."""
    hit = run.returns >= threshold
    return np.where(hit.any(1), run.steps[np.argmax(hit, 1)], np.nan)


def default_thresholds(runs: list[Run]) -> dict[str, float]:
    """Per environment, 90% of the way from the lowest first-evaluation IQM to the best final IQM
    over the runs: for returns that start near 0 about 90% of the best, and for negative returns
    (Pendulum: -1200 -> -200) a level the better runs do reach."""
    lo, best = {}, {}
    for run in runs:
        lo[run.env_id] = min(lo.get(run.env_id, np.inf), float(iqm(run.returns[:, 0])))
        best[run.env_id] = max(best.get(run.env_id, -np.inf), float(iqm(run.returns[:, -1])))
    return {env_id: lo[env_id] + 0.9 * (best[env_id] - lo[env_id]) for env_id in best}


def area(values: np.ndarray, steps: np.ndarray) -> float:
    """The area under a curve per env step (its mean value over training), over the evaluations
    where it has a value (nan ones are left out); its one value if it has one, nan if none."""
    ok = ~np.isnan(values)
    if ok.sum() < 2:
        return float(values[ok][0]) if ok.any() else np.nan
    return float(np.trapezoid(values[ok], steps[ok]) / (steps[ok][-1] - steps[ok][0]))


def seed_areas(run: Run) -> np.ndarray:
    """Each seed's own area (its mean value over training)."""
    return np.array([area(row, run.steps) for row in run.returns])


def rank_test(run: Run, reference: Run) -> str:
    """Two-sided Mann-Whitney U test of the seeds' areas (seed_areas) of run against reference's:
    the p-value, which is small where one run's seeds tend to learn faster or higher than the
    other's. Unpaired: seed i of one run has nothing to do with seed i of the other."""
    a, b = seed_areas(run), seed_areas(reference)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return "n/a"
    return f"{stats.mannwhitneyu(a, b, alternative='two-sided').pvalue:.2g}"


def fmt(x: float) -> str:
    """A table cell: one decimal from 10 up (returns), four significant digits below (ratios such
    as 0.0157 would otherwise read 0.0)."""
    x = float(x)
    return f"{x:.1f}" if not np.isfinite(x) or abs(x) >= 10 else f"{x:.4g}"


def table(runs: list[Run], args: Args) -> str:
    defaults = default_thresholds(runs)
    name = "return" if args.metric == ("eval_return",) else "value"
    lines = [
        f"| run | env | seeds | final {name}, IQM [{args.confidence:.0%} CI] | AUC (mean IQM {name}) "
        f"| threshold | steps to threshold (median; reached) | seeds' areas against the first run's: p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    references = {}  # (env, metric) -> the first run of it: the one the others are tested against
    for run in runs:
        reference = references.setdefault((run.env_id, run.metric), run)
        final = run.returns[:, -1]
        lo, hi = iqm_interval(final, args)
        auc = area(iqm(run.returns.T), run.steps)  # an evaluation where no seed has a value is left out
        defined = int((~np.isnan(final)).sum())
        seeds = f"{len(final)}" if defined == len(final) else f"{len(final)} ({defined} with a final value)"
        threshold = args.threshold if args.threshold is not None else defaults[run.env_id]
        first = steps_to(run, threshold)
        reached = int(np.isfinite(first).sum())
        median = f"{np.nanmedian(first):,.0f}" if reached else "never"
        lines.append(
            f"| {run.label} | {run.env_id} | {seeds} | {fmt(iqm(final))} [{fmt(lo)}, {fmt(hi)}] "
            f"| {fmt(auc)} | {fmt(threshold)} | {median}; {reached}/{len(final)} "
            f"| {'(the first)' if reference is run else rank_test(run, reference)} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], args: Args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    env_ids = list(dict.fromkeys(r.env_id for r in runs))
    fig, axes = plt.subplots(1, len(env_ids), figsize=(5.5 * len(env_ids), 4), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids):
        for run in (r for r in runs if r.env_id == env_id):
            lo, hi = iqm_interval(run.returns.T, args)
            nan = ", fewer where nan" if np.isnan(run.returns).any() else ""
            (line,) = ax.plot(run.steps, iqm(run.returns.T), label=f"{run.label} ({run.returns.shape[0]} seeds{nan})")
            ax.fill_between(run.steps, lo, hi, color=line.get_color(), alpha=0.2)
        # the whole x range of the runs, gaps (evaluations with no value) included
        x0, x1 = (
            min(r.steps[0] for r in runs if r.env_id == env_id),
            max(r.steps[-1] for r in runs if r.env_id == env_id),
        )
        if x1 > x0:
            ax.set_xlim(x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
        ax.set(
            title=env_id,
            xlabel="environment steps (per seed)",
            ylabel=f"{args.metric[0] if len(args.metric) == 1 else 'value'} (IQM over seeds)",
        )
        if args.log_y:
            ax.set_yscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())  # 100k, 1.5M: readable ticks
        ax.legend(fontsize="x-small")
    fig.suptitle(f"IQM over seeds, {args.confidence:.0%} bootstrap interval shaded")
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(f"{args.output}.{ext}", dpi=120)
    plt.close(fig)


def compare(args: Args) -> str:
    if not args.runs:
        raise CompareError("give at least one output folder")
    if args.labels and len(args.labels) != len(args.runs):
        raise CompareError(f"--labels has {len(args.labels)} names for {len(args.runs)} runs")
    labels = args.labels or (None,) * len(args.runs)
    runs = []  # one curve per run (or sweep member) and column
    for folder, label in zip(args.runs, labels):
        for metric in args.metric:
            for run in load_runs(folder, label, metric):
                runs.append(run._replace(label=f"{run.label}: {metric}") if len(args.metric) > 1 else run)
    out_dir = os.path.dirname(args.output)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    plot(runs, args)
    md = table(runs, args)
    warnings = [w for run in runs for w in run.warnings]
    if warnings:
        md += "\n" + "".join(f"Warning: {w}.\n" for w in warnings)
    with open(f"{args.output}.md", "w") as f:
        f.write(md)
    return md


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv, description=__doc__)
    try:
        md = compare(args)
    except CompareError as e:
        raise SystemExit(f"compare.py: error: {e}")
    print(md + f"\nwrote {args.output}.png, {args.output}.svg, {args.output}.md")


if __name__ == "__main__":
    main(sys.argv[1:])
