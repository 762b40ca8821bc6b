"""Whole runs of ppo.py in-process: outputs, reproducibility, the seeds contract."""

import csv
import json

import flax.serialization
import jax
import numpy as np

import envs
import ppo

TINY = dict(env_id="CartPole-v1", total_timesteps=2048, num_envs=4, num_steps=32,
            minibatch_size=64, num_epochs=2, eval_every=1024, eval_episodes=3)


def read_rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_outputs_exist_and_parse(tmp_path):
    out = tmp_path / "run"
    summary = ppo.run(ppo.Args(num_seeds=2, seed=5, output_dir=str(out), **TINY))
    for name in ("config.json", "metrics.csv", "summary.json", "curves.png", "params.msgpack"):
        assert (out / name).stat().st_size > 0, name
    on_disk = json.load(open(out / "summary.json"))
    assert on_disk == json.loads(json.dumps(summary))
    for key in ("algo", "env_id", "seeds", "final_eval_return", "final_eval_return_mean", "env_steps",
                "env_steps_per_second", "compile_seconds", "train_seconds"):
        assert key in on_disk, key
    assert on_disk["seeds"] == [5, 6] and len(on_disk["final_eval_return"]) == 2
    assert on_disk["env_steps"] == 2048 and on_disk["completed"]
    config = json.load(open(out / "config.json"))
    assert config["args"]["num_seeds"] == 2 and config["versions"]["jax"] == jax.__version__
    rows = read_rows(out)
    assert len(rows) == 2 * 2  # 2 seeds x 2 logging intervals
    assert [int(r["env_steps"]) for r in rows] == [1024, 1024, 2048, 2048]
    assert set(rows[0]) == set(ppo.METRIC_COLUMNS)
    assert all(np.isfinite(float(r["eval_return"])) for r in rows)
    saved = flax.serialization.msgpack_restore(open(out / "params.msgpack", "rb").read())
    kernel = saved["params"]["pi"]["params"]["MLP_0"]["Dense_0"]["kernel"]
    assert kernel.shape == (2, 4, 64) and list(saved["seeds"]) == [5, 6]


def test_same_command_same_numbers(tmp_path):
    a = ppo.run(ppo.Args(num_seeds=2, output_dir=str(tmp_path / "a"), **TINY))
    b = ppo.run(ppo.Args(num_seeds=2, output_dir=str(tmp_path / "b"), **TINY))
    assert read_rows(tmp_path / "a") == read_rows(tmp_path / "b")
    assert a["final_eval_return"] == b["final_eval_return"]
    c = ppo.run(ppo.Args(num_seeds=2, seed=1, output_dir=str(tmp_path / "c"), **TINY))
    assert read_rows(tmp_path / "c") != read_rows(tmp_path / "a")


def test_seed_in_batch_equals_seed_alone(tmp_path):
    """Seed 2 inside seeds 0..3 starts from the parameters and random streams of seed 2 alone,
    and (same arithmetic, batched) trains to the same numbers."""
    args = ppo.Args(num_seeds=4, seed=0, output_dir=str(tmp_path / "batch"), **TINY)
    trainer = ppo.make_train(args, envs.make("CartPole-v1"))
    keys = jax.vmap(jax.random.PRNGKey)(np.arange(4))
    batched = jax.vmap(trainer.init)(keys)
    alone = trainer.init(jax.random.PRNGKey(2))
    for x, y in zip(jax.tree.leaves(batched), jax.tree.leaves(alone)):
        np.testing.assert_array_equal(np.asarray(x)[2], np.asarray(y))
    ppo.run(args)
    ppo.run(ppo.Args(num_seeds=1, seed=2, output_dir=str(tmp_path / "alone"), **TINY))
    in_batch = [r for r in read_rows(tmp_path / "batch") if r["seed"] == "2"]
    by_itself = read_rows(tmp_path / "alone")
    for r, s in zip(in_batch, by_itself, strict=True):
        for k in ppo.METRIC_COLUMNS:
            np.testing.assert_allclose(float(r[k]), float(s[k]), rtol=1e-4, atol=1e-6, err_msg=k)
