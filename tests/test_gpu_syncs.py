"""benchmarks/gpu_syncs.py: the training program exported for a GPU (jax.export lowers for cuda on a
CPU-only machine) has no control flow inside the rollout's step body but the scan's own, so a GPU
never waits for the host within an environment step; the counter itself on small programs."""

import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import gpu_syncs  # noqa: E402


def counts(fn, *args, step_trips=None):
    return gpu_syncs.module_counts(gpu_syncs.export_text(fn, args, "cuda"), step_trips)


def test_counter_tells_counted_loops_from_host_decisions():
    x = jnp.ones(3)

    def step(c, _):  # a cond and a data-dependent loop inside a scan of 5 steps, a fori_loop of 4
        c = jax.lax.cond(c.sum() > 0, lambda c: c + 1, lambda c: c - 1, c)
        c = jax.lax.while_loop(lambda c: c.sum() < 100, lambda c: c * 2, c)
        c = jax.lax.fori_loop(0, 4, lambda i, c: c + i, c)
        return c, None

    scan = lambda x: jax.lax.scan(step, x, None, length=5)[0]  # noqa: E731
    per_step = counts(scan, x, step_trips=5)
    assert per_step == dict(syncs=2, dynamic_while=1, case=1, counted_while=1)
    assert counts(scan, x) == dict(syncs=10, dynamic_while=5, case=5, counted_while=6)
    plain = lambda x: jax.lax.scan(lambda c, _: (jnp.where(c > 0, c + 1, c), None), x, None, length=5)[0]  # noqa: E731
    assert counts(plain, x)["syncs"] == 0


@pytest.mark.parametrize("script", ["ppo", "bpo"])  # bpo_traj.py's rollout and updates are bpo.py's
def test_no_host_round_trip_in_the_step_on_gpu_cartpole(script):
    """CartPole-v1, 2 seeds: the select reset mode (a GPU's) has none per step and none per
    iteration (the CPU's chunked mode has one per step: docs/performance.md)."""
    argv = ["--env-id", "CartPole-v1", "--num-seeds", "2"]
    select = gpu_syncs.count(script, argv, "select")
    assert select["step"]["syncs"] == select["step"]["dynamic_while"] == select["step"]["case"] == 0
    assert select["iteration"]["syncs"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("script", ["ppo", "bpo"])
def test_no_host_round_trip_in_the_step_on_gpu_ant(script):
    """ant (MJX), 2 seeds, as a GPU run gets it (select): no host round trip per step."""
    select = gpu_syncs.count(script, ["--env-id", "ant", "--num-seeds", "2"], "select")
    assert select["step"]["syncs"] == 0 and select["iteration"]["syncs"] == 0


def test_gpu_check_table_prints_every_step_failed_or_not(tmp_path):
    """benchmarks/gpu_check.sh's table: a row per step, the figures of the steps that wrote them,
    the failed and timed-out ones marked, the CPU figures beside ant's."""
    import json

    import gpu_check_table

    (tmp_path / "steps.tsv").write_text(
        "install\tok\t120\njax_sees_gpu\tok\t3\nppo\tok\t50\nbpo\ttimed out (120s)\t120\n"
        "cartpole_run\tok\t40\ncartpole_resume\tfailed (exit 1)\t5\n"
    )
    (tmp_path / "ppo.json").write_text(
        json.dumps(dict(train_env_steps_per_second=123456.0, train_compile_seconds=12.3, peak_device_memory_mb=2048))
    )
    (tmp_path / "cartpole_run_summary.json").write_text(
        json.dumps(dict(env_steps=2560, completed=True, env_steps_per_second=9999.0, compile_seconds=20.0))
    )
    text = gpu_check_table.table(str(tmp_path), "gpu", "ant", "256")
    assert "| install | ok | 120 |" in text
    assert "| ppo.py, 16 seeds | ok | 50 | 123,456 | 12.3 | 2,048 | 11,475/s, compile 31.9 s |" in text
    assert "| bpo.py, 16 seeds | timed out (120s) | 120 |" in text
    assert "| ppo.py, 16 seeds + wide_rollout | not run |" in text
    assert "| bpo.py, 256 seeds, CartPole-v1 | ok, 2,560 of 2,560 steps | 40 | 9,999 | 20.0 |" in text
    assert "| bpo.py, 256 seeds, CartPole-v1, --resume | failed (exit 1) | 5 |" in text
