"""Whole runs of each script in-process: outputs, reproducibility, the seeds contract."""

import csv
import dataclasses
import json

import flax.serialization
import jax
import numpy as np
import pytest

import bpo
import bpo_traj
import envs
import ppo
import runner

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
    extra = BPO_TINY if module in (bpo, bpo_traj) else {}
    return module.Args(**{**TINY, **extra, **kw})


def read_rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("module", [ppo, bpo, bpo_traj])
def test_outputs_exist_and_parse(module, tmp_path):
    out = tmp_path / "run"
    summary = module.run(tiny(module, num_seeds=2, seed=5, output_dir=str(out)))
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
def test_same_command_same_numbers(module, tmp_path):
    a = module.run(tiny(module, num_seeds=2, output_dir=str(tmp_path / "a")))
    b = module.run(tiny(module, num_seeds=2, output_dir=str(tmp_path / "b")))
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
    assert a["final_eval_return"] == b["final_eval_return"]
    module.run(tiny(module, num_seeds=2, seed=1, output_dir=str(tmp_path / "c")))
    assert read_rows(tmp_path / "c") != read_rows(tmp_path / "a")


@pytest.mark.parametrize("module", [ppo, bpo])  # bpo_traj.py: bpo.py's code here (tests/test_traj_copy.py)
def test_seed_in_batch_equals_seed_alone(module, tmp_path):
    """Seed 2 inside seeds 0..3 starts from the parameters and random streams of seed 2 alone,
    and (same arithmetic, batched) trains to the same numbers."""
    args = tiny(module, num_seeds=4, seed=0, output_dir=str(tmp_path / "batch"))
    trainer = module.make_train(args, envs.make("CartPole-v1"))
    batched = runner.init_seeds(trainer.init, [0, 1, 2, 3])
    alone = trainer.init(jax.random.PRNGKey(2))
    for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(np.asarray(x)[2], np.asarray(y))
    module.run(args)
    module.run(dataclasses.replace(args, num_seeds=1, seed=2, output_dir=str(tmp_path / "alone")))
    in_batch = [r for r in read_rows(tmp_path / "batch") if r["seed"] == "2"]
    by_itself = read_rows(tmp_path / "alone")
    for r, s in zip(in_batch, by_itself, strict=True):
        for k in module.METRIC_COLUMNS:
            np.testing.assert_allclose(float(r[k]), float(s[k]), rtol=1e-4, atol=1e-5, err_msg=k)


def test_bpo_mu_starts_equal_to_pi():
    trainer = bpo.make_train(tiny(bpo), envs.make("CartPole-v1"))
    state = trainer.init(jax.random.PRNGKey(0))
    for x, y in zip(jax.tree.leaves(state.params["pi"]), jax.tree.leaves(state.params["mu"])):
        np.testing.assert_array_equal(x, y)


def test_progress_lines_from_the_start(tmp_path, capsys, monkeypatch):
    """A line when compilation starts, one when it ends (with its seconds), and heartbeats while an
    interval is in flight: a user sees something within seconds, whatever the interval."""
    import runner

    lines = []
    with runner.heartbeat(lambda t: lines.append(t) or "beat", every=0.05):
        import time

        time.sleep(0.3)
    assert len(lines) >= 2 and "beat" in capsys.readouterr().out
    monkeypatch.setenv("BPO_HEARTBEAT_SECONDS", "0.01")
    ppo.run(tiny(ppo, num_seeds=2, seed=5, output_dir=str(tmp_path / "run")))  # test_outputs_exist_and_parse's program
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if "compiling the training program" in line)
    end = next(i for i, line in enumerate(out) if "compiled in" in line)
    first = next(i for i, line in enumerate(out) if "steps/s" in line)
    assert start < end < first
    assert any("in flight" in line for line in out[end:first])
