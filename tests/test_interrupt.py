"""Ctrl-C (SIGINT) and SIGTERM: the run stops at an interval's end, every output describes that same
interval, and the process exits non-zero."""

import json
import os
import signal
import subprocess
import sys
import time

import flax.serialization
import helpers
import jax
import numpy as np
import pytest
from helpers import cli
from helpers import read_rows as rows

import bpo
import ppo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No schedule depends on the run's length, so a run of the interrupted length is the reference.
FLAGS = dict(
    num_seeds=2,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=2,
    eval_every=128,
    eval_episodes=2,
    anneal_lr=False,
    anneal_clip=False,
)
BPO_FLAGS = dict(replay_size=256, fqe_epochs=1, mu_epochs=1)


@pytest.mark.parametrize("module,sig", [(ppo, signal.SIGINT)])  # bpo.py and SIGTERM: tests/test_resume.py
def test_interrupted_run_writes_consistent_outputs(module, sig, tmp_path):
    flags = {**FLAGS, **(BPO_FLAGS if module is bpo else {})}
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            os.path.join(ROOT, f"{module.__name__}.py"),
            *cli(flags),
            "--total-timesteps",
            "10000000",
            "--output-dir",
            str(out),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not ((out / "metrics.csv").exists() and len(rows(out)) >= 4):  # two intervals written
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "stopping after the interval in flight" in output

    summary = json.load(open(out / "summary.json"))
    written = rows(out)
    steps = int(written[-1]["env_steps"])
    assert not summary["completed"] and summary["interrupted"] and summary["env_steps"] == steps
    assert len(written) == 2 * steps // 128  # complete rows for every interval, none after
    assert summary["final_eval_return"] == [float(r["eval_return"]) for r in written[-2:]]

    # The saved parameters are those of that interval: a run of exactly that length ends there too.
    reference = tmp_path / "reference"
    module.run(module.Args(**flags, total_timesteps=steps, output_dir=str(reference)))
    assert rows(reference) == written
    saved = flax.serialization.msgpack_restore(open(out / "params.msgpack", "rb").read())
    expected = flax.serialization.msgpack_restore(open(reference / "params.msgpack", "rb").read())
    for x, y in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(expected["params"]), strict=True):
        np.testing.assert_array_equal(x, y)


# ----------------------------------------------------------------------------------------------
# Before training: a signal ends the run at once, with one line, exit 130, and nothing left behind
# ----------------------------------------------------------------------------------------------
def start_script(out, env=None):
    return helpers.start_script("ppo.py", [*cli(FLAGS), "--output-dir", str(out)], env)


def test_ctrl_c_while_the_modules_import_is_one_line(tmp_path):
    """0.5 s after the start, jax is still being imported (it was a 15-74-line traceback)."""
    out = tmp_path / "run"
    proc = start_script(out)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert output.splitlines()[-1] in (
        "ppo.py: SIGINT before training began: nothing written",  # while importing (here, always)
        "SIGINT before training began: nothing computed, nothing written",  # on a machine fast enough
    ), output
    assert "Traceback" not in output and not out.exists()


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_while_compiling_leaves_nothing_and_no_crash(signals, tmp_path):
    """Compiled afresh (no cache), so the signals come during compilation. Twice used to abort the
    process natively (SIGABRT, free(): invalid pointer); once used to leave an empty checkpoints/
    that made the same command a "not empty" error."""
    out = tmp_path / "run"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = start_script(out, env)
    lines = []
    while not any("compiling the training program" in line for line in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
    time.sleep(0.1)  # (the seeds' initial states compile, then the program: seconds without a cache)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    output = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    assert output.splitlines()[-1] == "SIGINT before training began: nothing computed, nothing written", output
    assert "Traceback" not in output and not out.exists()


def test_a_stop_before_the_first_interval_ends_keeps_nothing_and_offers_no_resume(tmp_path, capsys, monkeypatch):
    """A second Ctrl-C during the first interval (here: the program raises KeyboardInterrupt, as the
    handler does): nothing was computed, so there is no checkpoint, and no "resume with" line that
    could not work; the folder goes, so the same command starts again."""
    import runner

    def interrupted_at_once(plan, state):  # (nothing compiled: the program is never run)
        def program(*args):
            raise KeyboardInterrupt

        return program, 0.0

    monkeypatch.setattr(runner, "compile_program", interrupted_at_once)
    out = tmp_path / "run"
    summary = ppo.run(ppo.Args(**FLAGS, total_timesteps=256, output_dir=str(out)))
    printed = capsys.readouterr().out
    assert summary["interrupted"] and summary["env_steps"] == 0
    assert "SIGINT before the first interval completed: nothing computed, nothing kept" in printed
    assert "resume with" not in printed and not out.exists()
