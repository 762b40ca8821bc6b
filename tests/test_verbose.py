"""--verbose 0|1|2: each level writes exactly its metrics.csv columns and TensorBoard tags; level 0's
program holds nothing it does not write; the training's numbers do not depend on the level; a resumed
level-2 run writes exactly the uninterrupted run's; bad values are one-line errors."""

import csv
import dataclasses
import glob
import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bpo
import bpo_traj
import compare
import envs
import ppo
import runner
import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/test_runs.py's runs (the same compiled programs at level 1)
TINY = dict(
    env_id="CartPole-v1",
    total_timesteps=2048,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=2,
    eval_every=1024,
    eval_episodes=3,
)
BPO_TINY = dict(replay_size=256, fqe_epochs=2, mu_epochs=2)


def tiny(module, **kw):
    return module.Args(**{**TINY, **(BPO_TINY if module in (bpo, bpo_traj) else {}), **kw})


def read_csv(out):
    with open(os.path.join(out, "metrics.csv"), newline="") as f:
        return list(csv.reader(f))


def read_events(out):
    """The TensorBoard events of a run as TensorBoard shows them: its event files read in order, each
    file's session start (a resumed run's) hiding the earlier files' events from its step on. Returns
    (scalars, histograms), each a dict tag -> [(step, value)] (a histogram's value: its
    HistogramProto), and the number of files."""
    from tensorboardX.proto import event_pb2

    shown = {}  # tag -> [(step, value)]
    paths = sorted(glob.glob(os.path.join(out, "tb", "events.out.tfevents.*")))
    for path in paths:
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            if event.session_log.status == event_pb2.SessionLog.START:  # TensorBoard's purge
                shown = {tag: [(s, v) for s, v in events if s < event.step] for tag, events in shown.items()}
            for v in event.summary.value:
                if v.HasField("simple_value") or v.HasField("histo"):
                    shown.setdefault(v.tag, []).append(
                        (event.step, v.simple_value if v.HasField("simple_value") else v.histo)
                    )
    scalars = {t: e for t, e in shown.items() if e and not hasattr(e[0][1], "bucket")}
    hists = {t: e for t, e in shown.items() if e and hasattr(e[0][1], "bucket")}
    return scalars, hists, len(paths)


def tags(columns, seeds):
    """The scalar tags of log_tensorboard: each column per seed and its mean, and diverged_seeds."""
    return {f"{c}/{s}" for c in columns[2:] for s in [*(f"seed_{i}" for i in seeds), "mean"]} | {"diverged_seeds"}


def check_histogram(h, num):
    """A HistogramProto as TensorBoard reads it: every value counted once, in buckets from min up to
    limits that rise to max."""
    limits = np.asarray(h.bucket_limit)
    assert sum(h.bucket) == h.num == num and len(h.bucket) == len(limits) == training.HISTOGRAM_BUCKETS
    assert h.min <= limits[0] and np.all(np.diff(limits) >= 0) and limits[-1] == h.max
    assert h.min * num <= h.sum <= h.max * num and h.sum_squares >= 0


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    """ppo.py at each level, 2 seeds, with TensorBoard and a checkpoint per interval."""
    out = {}
    for level in (0, 1, 2):
        out[level] = str(tmp_path_factory.mktemp("verbose") / f"level{level}")
        ppo.run(tiny(ppo, num_seeds=2, verbose=level, tensorboard=True, checkpoint_every=1, output_dir=out[level]))
    return out


def test_each_level_writes_its_columns_and_tags_and_the_same_numbers(levels):
    expected = {
        0: runner.VERBOSE_0_COLUMNS,
        1: ppo.METRIC_COLUMNS,
        2: ppo.METRIC_COLUMNS + runner.STEP_COLUMNS,
    }
    one = read_csv(levels[1])
    for level, out in levels.items():
        rows = read_csv(out)
        assert rows[0] == [*expected[level], "diverged"]
        # the training's numbers do not depend on the level: every column level 1 also has is its, byte for byte
        shared = [c for c in rows[0] if c in one[0]]
        assert [[r[rows[0].index(c)] for c in shared] for r in rows] == [
            [r[one[0].index(c)] for c in shared] for r in one
        ]
        scalars, hists, _ = read_events(out)
        assert set(scalars) == tags(expected[level], (0, 1))
        assert set(hists) == (
            {f"{h}/seed_{i}" for h in ("hist_advantage", "hist_update_ratio") for i in (0, 1)} if level == 2 else set()
        )
    rows = runner.read_metrics(os.path.join(levels[2], "metrics.csv"))
    _, hists, _ = read_events(levels[2])
    for r in rows:
        # CartPole pays 1 per step and no episode reaches its time limit here (no bootstrap added)
        assert (r["reward_mean"], r["reward_std"], r["reward_min"], r["reward_max"]) == (1.0, 0.0, 1.0, 1.0)
        assert r["value_min"] <= r["value_mean"] <= r["value_max"] and r["advantage_std"] > 0
        for tag, (step, h) in [(t, e) for t in hists for e in hists[t] if t.endswith(f"seed_{r['seed']}")]:
            if step == r["env_steps"]:
                check_histogram(h, TINY["num_envs"] * TINY["num_steps"])  # the interval's last rollout
                if tag.startswith("hist_advantage"):
                    assert r["advantage_min"] <= h.min <= h.max <= r["advantage_max"]
                else:  # pi_new / pi_old after the update: positive, around 1
                    assert 0 < h.min <= 1 <= h.max
    # compare.py names the level of a run that lacks a column
    with pytest.raises(compare.CompareError, match=r"no column 'approx_kl'; the run was made with --verbose 0"):
        compare.compare(compare.Args(runs=(levels[0],), metric=("approx_kl",), output=levels[0] + "/cmp"))


def test_a_resumed_level_2_run_writes_exactly_the_uninterrupted_runs(levels, tmp_path):
    """The last interval computed again from the checkpoint before it: the same metrics.csv, byte for
    byte, and in TensorBoard (the resume's own event file, which hides the first one's events after
    the checkpoint) the same scalars and histograms."""
    out = str(tmp_path / "run")
    shutil.copytree(levels[2], out)
    shutil.rmtree(os.path.join(out, "checkpoints", "16"))  # the final one: resume from iteration 8 (1,024 steps)
    ppo.run(ppo.parse_args(["--resume", out]))
    assert (
        open(os.path.join(out, "metrics.csv"), "rb").read() == open(os.path.join(levels[2], "metrics.csv"), "rb").read()
    )
    scalars, hists, files = read_events(out)
    assert (scalars, hists, files) == (*read_events(levels[2])[:2], 2)


@pytest.mark.parametrize("module", [ppo, bpo])
def test_level_0s_program_holds_nothing_it_does_not_write(module):
    """Level 0's program, as lowered for the compiler, is exactly level 1's with the outputs it drops
    removed, and smaller: what only the dropped metrics need is not in it (jax's dead-code
    elimination), not computed and discarded."""
    env = envs.make("CartPole-v1")
    zero, one = (module.make_train(tiny(module, verbose=v), env) for v in (0, 1))
    state = one.init(jax.random.PRNGKey(0))
    keys = set(jax.eval_shape(zero.train_interval, state, jnp.int32(1))[1])
    assert keys == set(runner.VERBOSE_0_COLUMNS[2:]) | {"eval_key"}

    def train_interval(state, num_active):  # level 1's, its outputs cut to level 0's
        state, metrics = one.train_interval(state, num_active)
        return state, {k: v for k, v in metrics.items() if k in keys}

    lowered = [jax.jit(f).lower(state, jnp.int32(1)).as_text() for f in (zero.train_interval, train_interval)]
    assert lowered[0] == lowered[1]
    full = jax.jit(one.train_interval).lower(state, jnp.int32(1)).as_text()
    assert lowered[0].count("stablehlo.reduce") < full.count("stablehlo.reduce")


@pytest.mark.parametrize(
    "module,level,probe,expected",
    [
        (bpo, 0, 8, runner.VERBOSE_0_COLUMNS + bpo.PROBE_COLUMNS),
        (bpo_traj, 2, 0, bpo_traj.METRIC_COLUMNS + runner.STEP_COLUMNS),
    ],
)
def test_bpo_levels_in_a_sweep_and_with_the_probe(module, level, probe, expected, monkeypatch):
    """The BPO scripts in a sweep of 2 members, traced, not compiled: the sweep's columns in front,
    then the level's (the probe's stay at level 0: it is its own switch), and every column is an
    output of the program, and nothing else is but level 2's histograms."""
    args = tiny(module, num_seeds=1, verbose=level, variance_probe=probe, sweep=("clip_rho=1.0,2.0",))
    monkeypatch.setattr(runner, "run", lambda *given, **kw: given)  # what the script passes to runner.run
    plan = runner.plan_run(args, *module.run(args)[1:6])
    assert plan.columns == ("member", "sweep.clip_rho", *expected, "diverged")
    like = jax.eval_shape(plan.init, jax.random.PRNGKey(0), {k: v[0] for k, v in plan.hp.items()})
    rows = jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(plan.runs), *x.shape), x.dtype), like)
    metrics = jax.eval_shape(plan.program, rows, plan.hp, jnp.int32(0), np.zeros(len(plan.runs), bool))[1]
    hists = {"hist_advantage", "hist_ratio"} if level == 2 else set()
    assert set(metrics) == set(plan.metric_columns[2:]) | {"eval_key", "finite"} | hists


def test_histograms_in_tensorboard(tmp_path):
    """log_tensorboard's histograms: per healthy row, tagged as the scalars are (a sweep's member in
    the tag), each TensorBoard's HistogramProto of that row."""
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    h = jax.device_get(jax.vmap(training.histogram)(jnp.asarray(x)))
    rows = [dict(member=k, seed=0, diverged=0, v_loss=1.0) for k in range(3)]
    rows[2]["diverged"] = 1
    writer = runner.TensorBoardEvents(str(tmp_path / "tb"))
    runner.log_tensorboard(writer, rows, ["v_loss"], 128, {"hist_advantage": h})
    writer.close()
    scalars, hists, _ = read_events(str(tmp_path))
    assert set(hists) == {"hist_advantage/member_0_seed_0", "hist_advantage/member_1_seed_0"}
    for k in (0, 1):
        [(step, proto)] = hists[f"hist_advantage/member_{k}_seed_0"]
        check_histogram(proto, 64)
        assert step == 128 and proto.min == x[k].min() and proto.bucket == list(np.histogram(x[k], bins=30)[0])


def test_interval_statistics_pool_every_step_of_the_interval():
    """Level 2's mean, std, min and max over the active iterations' steps, as numpy computes them over
    every step at once; the histogram as numpy bins it (in log space for ratios)."""
    rng = np.random.default_rng(0)
    x = rng.normal(rng.normal(size=(5, 1, 1)), rng.uniform(0.5, 2, size=(5, 1, 1)), size=(5, 32, 4)).astype(np.float32)
    stacked = jax.vmap(lambda a: training.step_statistics(a, 2 * a, a + 1, -a))(jnp.asarray(x))
    stats = dict(stacked, episodes=jnp.ones(5), return_sum=jnp.ones(5), length_sum=jnp.ones(5))
    m = training.interval_metrics(stats, jnp.int32(3))  # the last 2 iterations did not run
    active = x[:3]
    for name, y in zip(training.STEP_STATISTICS, (active, 2 * active, active + 1, -active)):
        got = [float(m[f"{name}_{s}"]) for s in ("mean", "std", "min", "max")]
        np.testing.assert_allclose(got, [y.mean(), y.std(), y.min(), y.max()], rtol=1e-5)
    h = training.histogram(jnp.asarray(x[0]))
    counts, edges = np.histogram(x[0], bins=training.HISTOGRAM_BUCKETS)
    np.testing.assert_array_equal(h.counts, counts)
    np.testing.assert_allclose(h.limits, edges[1:], rtol=1e-5)
    assert float(h.min) == x[0].min() and float(h.max) == x[0].max() and float(h.num) == x[0].size
    h = training.histogram(jnp.asarray(x[0] / 10), log=True)  # x[0] / 10: log ratios
    counts, edges = np.histogram(x[0] / 10, bins=training.HISTOGRAM_BUCKETS)
    np.testing.assert_array_equal(h.counts, counts)
    np.testing.assert_allclose(h.limits, np.exp(edges[1:]), rtol=1e-5)
    np.testing.assert_allclose(float(h.sum), np.exp(x[0] / 10).sum(), rtol=1e-5)
    h = training.histogram(jnp.ones(8))  # every value the same: one bucket holds them all
    assert float(h.counts.sum()) == 8 and float(h.limits[-1]) == float(h.max) == 1.0


def test_bad_levels_are_one_line_errors_and_a_resume_keeps_the_runs(tmp_path, capsys):
    for module in (ppo, bpo, bpo_traj):
        for level in (3, -1):
            with pytest.raises(runner.ConfigError, match=rf"^--verbose must be 0, 1 or 2, got {level}$"):
                module.run(tiny(module, verbose=level, output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "ppo.py"), "--verbose", "5", "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.strip() == "ppo.py: error: --verbose must be 0, 1 or 2, got 5"
    # --resume: the level is the run's (metrics.csv's header is); a run made before the flag was level 1
    args = dataclasses.asdict(ppo.Args())
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(algo="ppo", args=args, versions={}), f)
    with pytest.raises(runner.ConfigError, match=r"--verbose 2 differs from the run's 1 \(it chooses metrics.csv"):
        ppo.parse_args(["--resume", str(tmp_path), "--verbose", "2"])
    del args["verbose"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(algo="ppo", args=args, versions={}), f)
    capsys.readouterr()
    assert ppo.parse_args(["--resume", str(tmp_path)]).verbose == 1 and capsys.readouterr().out == ""
