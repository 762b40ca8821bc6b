"""The output folder: one process at a time (a lock file with the owner's pid and host; a stale one
taken over), leftover empty folders, and a full disk (one line, everything already written intact,
an exact resume)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import cli

import ppo
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/test_resume.py's run (the same compiled program): 2 seeds, 20 intervals of one iteration
FLAGS = dict(
    num_seeds=2,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=2,
    eval_every=128,
    eval_episodes=2,
    total_timesteps=2560,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run uninterrupted (checkpoints at 10 and 20 intervals)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    ppo.run(ppo.Args(**FLAGS, output_dir=str(out)))
    return out


# ----------------------------------------------------------------------------------------------
# One process at a time
# ----------------------------------------------------------------------------------------------
def test_a_folder_in_use_is_refused_and_its_lock_held_for_the_whole_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    other = runner.FolderLock(str(out))  # another run's (another open file: flock tells them apart)
    try:
        for flags in (dict(), dict(overwrite=True)):
            with pytest.raises(runner.ConfigError) as e:
                ppo.run(ppo.Args(**FLAGS, **flags, output_dir=str(out)))
            owner = json.load(open(out / runner.LOCK_FILE))
            assert str(e.value) == (
                f"{str(out)!r} is in use by another run (pid {os.getpid()} on host {owner['host']} since "
                f"{owner['started']}); wait for it to end or choose another --output-dir"
            )
        assert os.listdir(out) == [runner.LOCK_FILE]  # nothing written, nothing emptied
    finally:
        other.release()
    assert os.listdir(out) == []

    # A lock left by a killed process (its file, no flock) is taken over, and said so; while the run
    # goes on its own lock refuses others (checked after each interval); at the end it is gone.
    (out / runner.LOCK_FILE).write_text(json.dumps(dict(pid=999999, host="elsewhere", started="2026-11-30 08:00:00")))
    refused = []

    def try_to_take_it(row):
        with pytest.raises(runner.ConfigError, match="is in use by another run"):
            runner.FolderLock(str(out))
        refused.append(row["env_steps"])

    args = ppo.Args(**FLAGS, checkpoint_every=0, output_dir=str(out))
    runner.run(args, "ppo", ppo.validate, ppo.make_train, ppo.METRIC_COLUMNS, ppo.SWEEPABLE, try_to_take_it)
    assert f"{out}: taking over the lock that pid 999999 on host elsewhere since 2026-11-30 08:00:00 left" in (
        capsys.readouterr().out
    )
    assert refused == [128 * (i // 2 + 1) for i in range(2 * 20)] and not (out / runner.LOCK_FILE).exists()
    held = runner.FolderLock(str(out))
    try:
        with pytest.raises(runner.ConfigError, match="in use by another run"):  # --resume too
            ppo.run(ppo.parse_args(["--resume", str(out)]))
    finally:
        held.release()


def test_two_runs_started_together_in_one_folder(tmp_path):
    """One of them runs; the other is refused in one line, whether it finds the folder locked or
    already written; nothing of the two runs is mixed."""
    out = tmp_path / "run"
    flags = [*cli(FLAGS), "--checkpoint-every", "10", "--output-dir", str(out)]
    procs = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "ppo.py"), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.communicate(timeout=300), p.returncode) for p in procs]
    assert sorted(code for _, code in results) == [0, 1], results
    [(_, err)] = [streams for streams, code in results if code == 1]
    assert len(err.splitlines()) == 1 and err.startswith("ppo.py: error: "), err
    assert "is in use by another run (pid " in err or "exists and is not empty" in err
    written = set(runner.OUTPUT_FILES) - {"eval.json"}  # evaluate.py's, not a run's
    assert sorted(os.listdir(out)) == sorted(written | {"checkpoints"})
    assert sorted(os.listdir(out / "checkpoints"), key=int) == ["10", "20"]
    summary = json.load(open(out / "summary.json"))
    assert summary["completed"] and len(open(out / "metrics.csv").readlines()) == 1 + 2 * 20


def test_leftover_empty_output_folders_are_not_contents(tmp_path):
    """An empty checkpoints/ (left by a run stopped while compiling, before this was fixed) and a
    stale lock file do not make the folder "not empty"; a file does."""
    (tmp_path / "checkpoints" / "sub").mkdir(parents=True)
    (tmp_path / "tb").mkdir()
    (tmp_path / runner.LOCK_FILE).write_text("")
    folder = runner.prepare_output_dir(ppo.Args(output_dir=str(tmp_path)), "ppo")
    folder.release()
    assert os.listdir(tmp_path) == []
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("mine")
    with pytest.raises(runner.ConfigError, match="exists and is not empty"):
        runner.prepare_output_dir(ppo.Args(output_dir=str(tmp_path)), "ppo")
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]


# ----------------------------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------------------------
class NoSpace:
    """A value whose writing fails as a full disk does (csv formats it with str())."""

    def __str__(self):
        raise OSError(28, "No space left on device")


def test_a_full_disk_stops_at_once_with_whole_outputs_and_an_exact_resume(reference, tmp_path, monkeypatch):
    """Simulated in this process: the 2nd checkpoint fails as tensorstore reports ENOSPC under orbax;
    in a second run, a row of metrics.csv fails half written. Each time: one message naming the
    file, saying what is intact and how to resume; metrics.csv holds whole rows only; and the
    resume writes the uninterrupted run's rows exactly."""
    manager_of = runner.checkpoint_manager
    saves = []

    def failing_manager(out):
        manager = manager_of(out)
        save = manager.save

        def save_or_fail(step, **kw):
            saves.append(step)
            if len(saves) == 2:
                raise ValueError(
                    f'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at local file "{out}": Failed '
                    "to write 446439 bytes to file 19: No space left on device [os_error_code='28']"
                )
            return save(step, **kw)

        manager.save = save_or_fail
        return manager

    monkeypatch.setattr(runner, "checkpoint_manager", failing_manager)
    out = tmp_path / "checkpoint"
    with pytest.raises(runner.WriteFailed) as e:
        ppo.run(ppo.Args(**FLAGS, checkpoint_every=2, output_dir=str(out)))
    assert str(e.value) == (
        "cannot write checkpoint 4: No space left on device; stopped at once after 512 env steps per seed; "
        f"metrics.csv holds every completed interval; free some space, then resume with: python ppo.py --resume {out} "
        "(from its checkpoint at 256 steps)"
    )
    assert os.listdir(out / "checkpoints") == ["2"]
    assert not (out / runner.LOCK_FILE).exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(runner, "checkpoint_manager", manager_of)
    reference_rows = open(reference / "metrics.csv", "rb").read()
    assert reference_rows.startswith(open(out / "metrics.csv", "rb").read())
    ppo.run(ppo.parse_args(["--resume", str(out), "--checkpoint-every", "10"]))
    assert open(out / "metrics.csv", "rb").read() == reference_rows

    metric_rows = runner.metric_rows

    def half_written(sweep, runs, steps, *args):
        rows = metric_rows(sweep, runs, steps, *args)
        if steps == 5 * 128:
            rows[1]["eval_return"] = NoSpace()  # seed 0's row is written, seed 1's fails
        return rows

    monkeypatch.setattr(runner, "metric_rows", half_written)
    out = tmp_path / "metrics"
    with pytest.raises(runner.WriteFailed, match=r"^cannot write metrics.csv: No space left on device; stopped"):
        ppo.run(ppo.Args(**FLAGS, checkpoint_every=0, output_dir=str(out)))
    assert open(out / "metrics.csv", "rb").read() == b"".join(open(reference / "metrics.csv", "rb").readlines()[:9])


def allocated(folder) -> int:
    """Bytes a folder's files take on disk (whole blocks)."""
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(folder) for f in files)


def tmpfs(path, size) -> bool:
    """A tmpfs of `size` bytes mounted at path (as root, where mounts are allowed), or False."""
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    except FileNotFoundError:
        return False
    return r.returncode == 0


def test_a_really_full_disk_is_one_line_and_exit_code_4(reference, tmp_path):
    """A tmpfs that holds the run's files and one checkpoint, not two: the process prints its
    progress and one error line (it printed 1,604 lines with 198 tracebacks), exits 4, and a copy
    of what it wrote resumes exactly. Skipped where this process may not mount a filesystem."""
    one = allocated(reference / "checkpoints" / "10")
    small = tmp_path / "small"
    if not tmpfs(small, int(2.5 * one) + 256 * 1024):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = small / "run"
        r = subprocess.run(
            [sys.executable, "ppo.py", *cli(FLAGS), "--checkpoint-every", "2", "--output-dir", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == runner.EXIT_WRITE_FAILED, r.stdout + r.stderr
        assert r.stderr.startswith("ppo.py: error: cannot write checkpoint ") and r.stderr.count("\n") == 1, r.stderr
        assert "No space left on device" in r.stderr and f"resume with: python ppo.py --resume {out}" in r.stderr
        assert "Traceback" not in r.stdout
        shutil.copytree(out, tmp_path / "copy")
    finally:
        subprocess.run(["umount", str(small)])
    ppo.run(ppo.parse_args(["--resume", str(tmp_path / "copy"), "--checkpoint-every", "10"]))
    assert open(tmp_path / "copy" / "metrics.csv", "rb").read() == open(reference / "metrics.csv", "rb").read()
