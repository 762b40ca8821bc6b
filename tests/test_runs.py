"""Whole runs of each script in-process: outputs, reproducibility, the seeds contract.

One tiny 2-seed run of each script (seeds 5 and 6) serves every test here; the tests that need
another run compile only its own program (the same command again, a seed alone)."""

import contextlib
import io
import json
import os

import flax.serialization
import jax
import numpy as np
import pytest
from helpers import read_rows, tiny

import bpo
import bpo_traj
import envs
import ppo
import runner

BUDGET = dict(env_id="CartPole-v1", total_timesteps=2048, eval_every=1024)  # 2 intervals of 8 iterations


def args_of(module, **kw):
    return tiny(module, **BUDGET, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """run(module) -> (folder, summary, printed): the module's 2-seed run (seeds 5 and 6), once.
    ppo.py's prints a heartbeat every 0.01 s (BPO_HEARTBEAT_SECONDS) while it compiles and trains."""
    runs = {}

    def run(module):
        if module not in runs:
            out = tmp_path_factory.mktemp(module.__name__) / "run"
            printed = io.StringIO()
            before = os.environ.get("BPO_HEARTBEAT_SECONDS")
            if module is ppo:
                os.environ["BPO_HEARTBEAT_SECONDS"] = "0.01"
            try:
                with contextlib.redirect_stdout(printed):
                    summary = module.run(args_of(module, num_seeds=2, seed=5, output_dir=str(out)))
            finally:
                if before is None:
                    os.environ.pop("BPO_HEARTBEAT_SECONDS", None)
                else:
                    os.environ["BPO_HEARTBEAT_SECONDS"] = before
            runs[module] = (out, summary, printed.getvalue())
        return runs[module]

    return run


@pytest.mark.parametrize("module", [ppo, bpo, bpo_traj])
def test_outputs_exist_and_parse(module, finished):
    out, summary, _ = finished(module)
    for name in ("config.json", "metrics.csv", "summary.json", "curves.png", "params.msgpack"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.load(open(out / "summary.json"))
    assert on_disk == json.loads(json.dumps(summary))
    for key in (
        "algo",
        "env_id",
        "seeds",
        "final_eval_return",
        "final_eval_return_mean",
        "env_steps",
        "env_steps_per_second",
        "compile_seconds",
        "train_seconds",
    ):
        assert key in on_disk, key
    assert on_disk["algo"] == module.__name__ and on_disk["seeds"] == [5, 6]
    assert len(on_disk["final_eval_return"]) == 2 and on_disk["env_steps"] == 2048 and on_disk["completed"]
    config = json.load(open(out / "config.json"))
    assert config["args"]["num_seeds"] == 2 and config["versions"]["jax"] == jax.__version__
    rows = read_rows(out)
    assert len(rows) == 2 * 2  # 2 seeds x 2 logging intervals
    assert [int(r["env_steps"]) for r in rows] == [1024, 1024, 2048, 2048]
    assert set(rows[0]) == set(module.METRIC_COLUMNS) | {"diverged"}  # runner.py adds the divergence flag
    for r in rows:
        for k in module.METRIC_COLUMNS:
            if k not in ("train_return", "train_length"):  # nan when no episode ended
                assert np.isfinite(float(r[k])), k
    saved = flax.serialization.msgpack_restore(open(out / "params.msgpack", "rb").read())
    kernel = saved["params"]["pi"]["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (2, 4, 64) and list(saved["seeds"]) == [5, 6]
    if module in (bpo, bpo_traj):
        assert set(saved["params"]) == {"pi", "mu", "v", "q", "q_target", "q_hat", "q_hat_target"}


# bpo_traj.py is bpo.py outside its estimator (tests/test_traj_copy.py): the run's plumbing is tested on two
@pytest.mark.parametrize("module", [ppo, bpo])
def test_same_command_same_numbers(module, finished, tmp_path):
    out, summary, _ = finished(module)
    again = module.run(args_of(module, num_seeds=2, seed=5, output_dir=str(tmp_path / "again")))
    assert read_rows(tmp_path / "again") == read_rows(out)
    assert again["final_eval_return"] == summary["final_eval_return"]
    # and another seed trains to other numbers
    rows = read_rows(out)
    numbers = lambda seed: [{k: v for k, v in r.items() if k != "seed"} for r in rows if r["seed"] == seed]  # noqa: E731
    assert len(numbers("5")) == 2 and numbers("5") != numbers("6")


@pytest.mark.parametrize("module", [ppo, bpo])  # bpo_traj.py: bpo.py's code here (tests/test_traj_copy.py)
def test_seed_in_batch_equals_seed_alone(module, finished, tmp_path):
    """Seed 6 inside seeds 5 and 6 starts from the parameters and random streams of seed 6 alone,
    and (same arithmetic, batched) trains to the same numbers."""
    out, _, _ = finished(module)
    args = args_of(module, num_seeds=1, seed=6, output_dir=str(tmp_path / "alone"))
    trainer = module.make_train(args, envs.make("CartPole-v1"))
    batched = runner.init_seeds(trainer.init, [5, 6])
    alone = trainer.init(jax.random.PRNGKey(6))
    for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(np.asarray(x)[1], np.asarray(y))
    module.run(args)
    in_batch = [r for r in read_rows(out) if r["seed"] == "6"]
    by_itself = read_rows(tmp_path / "alone")
    for r, s in zip(in_batch, by_itself, strict=True):
        for k in module.METRIC_COLUMNS:
            np.testing.assert_allclose(float(r[k]), float(s[k]), rtol=1e-4, atol=1e-5, err_msg=k)


def test_bpo_mu_starts_equal_to_pi():
    trainer = bpo.make_train(args_of(bpo), envs.make("CartPole-v1"))
    state = trainer.init(jax.random.PRNGKey(0))
    for x, y in zip(jax.tree.leaves(state.params["pi"]), jax.tree.leaves(state.params["mu"])):
        np.testing.assert_array_equal(x, y)


def test_progress_lines_from_the_start(finished, capsys):
    """A line when compilation starts, one when it ends (with its seconds), and heartbeats while an
    interval is in flight: a user sees something within seconds, whatever the interval."""
    import time

    lines = []
    with runner.heartbeat(lambda t: lines.append(t) or "beat", every=0.05):
        time.sleep(0.3)
    assert len(lines) >= 2 and "beat" in capsys.readouterr().out
    out = finished(ppo)[2].splitlines()  # printed with a heartbeat every 0.01 s
    start = next(i for i, line in enumerate(out) if "compiling the training program" in line)
    end = next(i for i, line in enumerate(out) if "compiled in" in line)
    first = next(i for i, line in enumerate(out) if "steps/s" in line)
    assert start < end < first
    assert any("in flight" in line for line in out[end:first])
