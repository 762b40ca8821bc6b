"""The divergence guard: a seed whose parameters go non-finite is frozen at its last finite state
and flagged; the other seeds train on with exactly the numbers of a clean run. And TensorBoard."""

import csv
import glob
import json
import struct

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compare
import ppo

TINY = dict(
    num_seeds=3,
    total_timesteps=1536,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=2,
    eval_every=256,
    eval_episodes=2,
)


def poisoned(seed_index: int, after_iterations: int):
    """ppo.make_train whose seed `seed_index` (its place on the vmapped "seeds" axis) gets NaN
    parameters at the end of every interval past `after_iterations` iterations."""

    def make_train(args, env):
        trainer = ppo.make_train(args, env)

        def train_interval(state, num_active):
            state, metrics = trainer.train_interval(state, num_active)
            bad = (jax.lax.axis_index("seeds") == seed_index) & (state.iteration > after_iterations)
            return state._replace(params=jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), state.params)), metrics

        return trainer._replace(train_interval=train_interval)

    return make_train


def read_rows(folder):
    with open(folder / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("donate", ["0", "1"])
def test_a_diverged_seed_is_frozen_and_the_others_train_on(tmp_path, capsys, monkeypatch, donate):
    """Also with the state donated to the compiled interval (BPO_DONATE=1, a GPU's default): the
    frozen seed keeps its last finite state inside the program, and every number is the clean,
    undonated run's."""
    import runner

    monkeypatch.setenv("BPO_DONATE", "0")
    clean = ppo.run(ppo.Args(**TINY, output_dir=str(tmp_path / "clean")))
    monkeypatch.setenv("BPO_DONATE", donate)
    args = ppo.Args(**TINY, output_dir=str(tmp_path / "bad"))
    summary = runner.run(args, "ppo", ppo.validate, poisoned(1, 4), ppo.METRIC_COLUMNS)  # NaN from interval 3 on
    assert summary["peak_host_memory_mb"] > 0
    assert summary["peak_device_memory_mb"] is None or summary["peak_device_memory_mb"] > 0  # None on a CPU
    assert "seed 1 diverged" in capsys.readouterr().out
    assert summary["diverged"] == {"1": 768} and summary["completed"]
    assert summary["final_eval_return"][1] is None and summary["final_eval_return_seeds"] == 2
    assert summary["final_eval_return"][0] == clean["final_eval_return"][0]
    assert summary["final_eval_return"][2] == clean["final_eval_return"][2]
    assert summary["final_eval_return_mean"] == np.mean([clean["final_eval_return"][i] for i in (0, 2)])

    bad, good = read_rows(tmp_path / "bad"), read_rows(tmp_path / "clean")
    assert len(bad) == len(good) == 3 * 6
    for b, g in zip(bad, good):
        if b["seed"] == "1" and int(b["env_steps"]) >= 768:
            assert b["diverged"] == "1" and b["eval_return"] == "" and b["pg_loss"] == ""  # no garbage numbers
        else:
            assert b == g  # the healthy seeds (and seed 1 before) have the clean run's numbers exactly
    # the saved parameters of seed 1 are its last finite ones (as of 512 steps), the others' final
    saved = flax.serialization.msgpack_restore(open(tmp_path / "bad" / "params.msgpack", "rb").read())
    clean_saved = flax.serialization.msgpack_restore(open(tmp_path / "clean" / "params.msgpack", "rb").read())
    for x, y in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(clean_saved["params"])):
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x[[0, 2]], y[[0, 2]])
    # compare.py leaves the diverged seed out, and says so
    md = compare.compare(compare.Args(runs=(str(tmp_path / "bad"),), output=str(tmp_path / "cmp")))
    assert "| ppo | CartPole-v1 | 2 |" in md and "seeds 1 diverged" in md


def read_events(path):
    """Scalars of a TensorBoard event file, read back from its records (length, crc, event, crc)."""
    from tensorboardX.proto import event_pb2

    scalars, texts = {}, []
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
            else:
                texts.append(v.tag)
    return scalars, texts


def test_tensorboard_holds_every_metric_of_every_seed_and_the_mean(tmp_path):
    summary = ppo.run(ppo.Args(**{**TINY, "num_seeds": 2}, output_dir=str(tmp_path), tensorboard=True))
    [events] = glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))
    scalars, texts = read_events(events)
    rows = read_rows(tmp_path)
    for k in ppo.METRIC_COLUMNS[2:]:
        for seed in (0, 1):
            logged = scalars[f"{k}/seed_{seed}"]
            expected = [(int(r["env_steps"]), float(r[k])) for r in rows if r["seed"] == str(seed)]
            assert [s for s, _ in logged] == [s for s, _ in expected]
            np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)
    means = dict(scalars["eval_return/mean"])
    assert means[1536] == np.float32(summary["final_eval_return_mean"])
    assert any("config" in t for t in texts)
    assert json.load(open(tmp_path / "config.json"))["args"]["tensorboard"] is True
