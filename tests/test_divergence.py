"""The divergence guard: a seed whose parameters go non-finite is frozen at its last finite state
and flagged; the other seeds train on with exactly the numbers of a clean run. And TensorBoard."""

import glob
import json
import os
import struct
from typing import Callable

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SWEEP_RUN, read_rows, tiny

import compare
import ppo

RUN = dict(num_seeds=3, total_timesteps=1536, eval_every=256)  # 6 intervals of 2 iterations


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The clean run (3 seeds, the state not donated, TensorBoard on): (folder, summary)."""
    out = tmp_path_factory.mktemp("clean")
    before = os.environ.get("BPO_DONATE")
    os.environ["BPO_DONATE"] = "0"
    try:
        summary = ppo.run(tiny(ppo, **RUN, tensorboard=True, output_dir=str(out)))
    finally:
        if before is None:
            del os.environ["BPO_DONATE"]
        else:
            os.environ["BPO_DONATE"] = before
    return out, summary


def poisoned(seed_index: int, after_iterations: int):
    """ppo.make_train whose seed `seed_index` (its place on the vmapped "seeds" axis) gets NaN
    parameters at the end of every interval past `after_iterations` iterations."""
    return poisoned_where(lambda row, iteration: (row == seed_index) & (iteration > after_iterations))


def poisoned_where(bad: Callable):
    """ppo.make_train whose rows get NaN parameters at the end of every interval where
    bad(row on the vmapped "seeds" axis, iteration) holds."""

    def make_train(args, env):
        trainer = ppo.make_train(args, env)

        def train_interval(state, num_active):
            state, metrics = trainer.train_interval(state, num_active)
            nan = bad(jax.lax.axis_index("seeds"), state.iteration)
            return state._replace(params=jax.tree.map(lambda x: jnp.where(nan, jnp.nan, x), state.params)), metrics

        return trainer._replace(train_interval=train_interval)

    return make_train


@pytest.mark.parametrize("donate", ["0", "1"])
def test_a_diverged_seed_is_frozen_and_the_others_train_on(clean, tmp_path, capsys, monkeypatch, donate):
    """Also with the state donated to the compiled interval (BPO_DONATE=1, a GPU's default): the
    frozen seed keeps its last finite state inside the program, and every number is the clean,
    undonated run's."""
    import runner

    clean_dir, clean = clean
    monkeypatch.setenv("BPO_DONATE", donate)
    args = tiny(ppo, **RUN, output_dir=str(tmp_path / "bad"))
    summary = runner.run(args, "ppo", ppo.validate, poisoned(1, 4), ppo.METRIC_COLUMNS)  # NaN from interval 3 on
    assert summary["peak_host_memory_mb"] > 0
    assert summary["peak_device_memory_mb"] is None or summary["peak_device_memory_mb"] > 0  # None on a CPU
    assert "seed 1 diverged" in capsys.readouterr().out
    assert summary["diverged"] == {"1": 768} and summary["completed"]
    assert summary["final_eval_return"][1] is None and summary["final_eval_return_seeds"] == 2
    assert summary["final_eval_return"][0] == clean["final_eval_return"][0]
    assert summary["final_eval_return"][2] == clean["final_eval_return"][2]
    assert summary["final_eval_return_mean"] == np.mean([clean["final_eval_return"][i] for i in (0, 2)])

    bad, good = read_rows(tmp_path / "bad"), read_rows(clean_dir)
    assert len(bad) == len(good) == 3 * 6
    for b, g in zip(bad, good):
        if b["seed"] == "1" and int(b["env_steps"]) >= 768:
            assert b["diverged"] == "1" and b["eval_return"] == "" and b["pg_loss"] == ""  # no garbage numbers
        else:
            assert b == g  # the healthy seeds (and seed 1 before) have the clean run's numbers exactly
    # the saved parameters of seed 1 are its last finite ones (as of 512 steps), the others' final
    saved = flax.serialization.msgpack_restore(open(tmp_path / "bad" / "params.msgpack", "rb").read())
    clean_saved = flax.serialization.msgpack_restore(open(clean_dir / "params.msgpack", "rb").read())
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


def test_tensorboard_holds_every_metric_of_every_seed_and_the_mean(clean):
    out, summary = clean
    [events] = glob.glob(str(out / "tb" / "events.out.tfevents.*"))
    scalars, texts = read_events(events)
    rows = read_rows(out)
    for k in ppo.METRIC_COLUMNS[2:]:
        for seed in (0, 1, 2):
            logged = scalars[f"{k}/seed_{seed}"]
            expected = [(int(r["env_steps"]), float(r[k])) for r in rows if r["seed"] == str(seed)]
            assert [s for s, _ in logged] == [s for s, _ in expected]
            np.testing.assert_allclose([v for _, v in logged], [v for _, v in expected], rtol=1e-6)
    means = dict(scalars["eval_return/mean"])
    assert means[1536] == np.float32(summary["final_eval_return_mean"])
    assert any("config" in t for t in texts)
    assert json.load(open(out / "config.json"))["args"]["tensorboard"] is True


def test_a_run_stops_when_every_seed_has_diverged(tmp_path, capsys, monkeypatch):
    """A sweep (2 members x 2 seeds) whose member 1 diverges in the 1st interval trains on; stopped by
    SIGINT after the 2nd, it prints its closing table (it raised TypeError there, and exited 1) and
    the resume command, and exits 130. Resumed, member 0 diverges in the 3rd interval, and there the
    run stops, with every output written and exit code 3 (it used to train nothing to the end of
    the budget and exit 0). The divergence is flagged on the host, as the compiled guard flags it,
    so the program is tests/test_sweep.py's (helpers.SWEEP_RUN)."""
    import signal

    import runner

    compile_program, bad_rows = runner.compile_program, []

    def diverging(plan, state):
        compiled, seconds = compile_program(plan, state)

        def program(state, hp, n, frozen):
            state, metrics = compiled(state, hp, n, frozen)
            bad = np.isin(np.arange(4), bad_rows)  # rows: member-major
            return state, {**metrics, "finite": metrics["finite"] & ~bad}

        return program, seconds

    def stop_at_1024(row):
        if row["env_steps"] == 1024 and row["member"] == 1 and row["seed"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the run's last interval row is written

    def main(args, row_warning=None):
        with pytest.raises(SystemExit) as e:
            runner.main(
                lambda argv: args,
                lambda a: runner.run(
                    a, "ppo", ppo.validate, ppo.make_train, ppo.METRIC_COLUMNS, ppo.SWEEPABLE, row_warning
                ),
            )
        return e.value.code, capsys.readouterr().out

    monkeypatch.setattr(runner, "compile_program", diverging)
    monkeypatch.setattr(runner, "_AS_SCRIPT", False)  # main() sets it
    bad_rows[:] = [2, 3]
    args = tiny(ppo, **SWEEP_RUN, output_dir=str(tmp_path))
    code, printed = main(args, stop_at_1024)
    assert code == runner.EXIT_INTERRUPTED
    assert "member 1 (ent_coef=0.01): no final eval return: every seed diverged (0 of 2 seeds)" in printed
    assert "member 0 (ent_coef=0): mean final eval return " in printed
    assert f"every output describes that point; resume with: python ppo.py --resume {tmp_path}" in printed

    bad_rows[:] = [0, 1, 2, 3]
    code, printed = main(ppo.parse_args(["--resume", str(tmp_path)]))
    assert code == runner.EXIT_DIVERGED
    assert "every seed of every member has diverged: stopped after 1,536 env steps per seed" in printed
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["all_diverged"] and not summary["completed"] and not summary["interrupted"]
    assert summary["env_steps"] == 1536 and summary["final_eval_return_mean"] == [None, None]
    assert summary["diverged"] == {"0/0": 1536, "0/1": 1536, "1/0": 512, "1/1": 512}
    rows = read_rows(tmp_path)
    assert len(rows) == 3 * 4  # 3 of the budget's 4 intervals
    assert [r["diverged"] for r in rows if r["member"] == "0"] == ["0"] * 4 + ["1"] * 2
    for name in ("params.msgpack", "curves.png", "config.json"):
        assert (tmp_path / name).exists()
    with pytest.raises(runner.ConfigError, match="every seed of this run has diverged; nothing is left to train"):
        ppo.run(ppo.parse_args(["--resume", str(tmp_path)]))
