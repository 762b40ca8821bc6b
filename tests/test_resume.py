"""Long runs: an interrupted run resumes from its checkpoint and writes exactly what the
uninterrupted run would have; flags that would change a resumed run are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import bpo
import ppo
import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--num-seeds",
    "2",
    "--num-envs",
    "4",
    "--num-steps",
    "32",
    "--minibatch-size",
    "64",
    "--num-epochs",
    "2",
    "--eval-every",
    "128",
    "--eval-episodes",
    "2",
    "--total-timesteps",
    "2560",
]
BPO_FLAGS = ["--replay-size", "256", "--fqe-epochs", "1", "--mu-epochs", "1"]


def data_rows(folder):
    path = os.path.join(folder, "metrics.csv")
    return max(0, len(open(path).readlines()) - 1) if os.path.exists(path) else 0


def start(module, flags, out):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, f"{module.__name__}.py"), *flags, "--output-dir", out],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_rows(proc, out, n, timeout=240):
    deadline = time.time() + timeout
    while data_rows(out) < n:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0] if proc.poll() is not None else ""
        time.sleep(0.1)


@pytest.mark.parametrize("module,sig", [(ppo, signal.SIGINT), (bpo, signal.SIGTERM), (ppo, signal.SIGKILL)])
def test_resumed_run_writes_exactly_the_uninterrupted_runs_metrics(module, sig, tmp_path):
    """SIGINT / SIGTERM: a checkpoint of the last completed interval is saved on the way out.
    SIGKILL: nothing is saved on the way out; the run resumes from its last periodic checkpoint
    and the rows written after it are computed again."""
    flags = FLAGS + (BPO_FLAGS if module is bpo else []) + ["--checkpoint-every", "2"]
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    module.run(module.parse_args(flags + ["--output-dir", whole]))

    proc = start(module, flags, cut)
    wait_for_rows(proc, cut, 2 * 7)  # 7 of the 20 intervals written
    proc.send_signal(sig)
    output = proc.communicate(timeout=120)[0]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == runner.EXIT_INTERRUPTED and f"--resume {cut}" in output, output
    assert 0 < data_rows(cut) < 40

    module.run(module.parse_args(["--resume", cut]))
    assert open(os.path.join(cut, "metrics.csv"), "rb").read() == open(os.path.join(whole, "metrics.csv"), "rb").read()
    import json

    summary = json.load(open(os.path.join(cut, "summary.json")))
    assert (
        summary["completed"]
        and summary["final_eval_return"] == json.load(open(os.path.join(whole, "summary.json")))["final_eval_return"]
    )
    assert len(os.listdir(os.path.join(cut, "checkpoints"))) <= runner.KEEP_CHECKPOINTS


def test_resume_refuses_changes_and_extends(tmp_path, capsys):
    out = str(tmp_path / "run")
    ppo.run(ppo.parse_args(FLAGS + ["--output-dir", out]))  # 20 intervals: checkpoints at 10, 20
    for flags, message in [
        (["--learning-rate", "0.1"], "--learning-rate 0.1 differs from the run's 0.001"),
        (["--total-timesteps", "1280"], "it may only grow"),
        (["--output-dir", str(tmp_path / "elsewhere")], "--output-dir"),
        (["--preset", "cartpole_ppo"], "--preset"),
    ]:
        with pytest.raises(runner.ConfigError, match=message):
            ppo.parse_args(["--resume", out, *flags])
    with pytest.raises(runner.ConfigError, match="a run of ppo.py"):
        bpo.parse_args(["--resume", out])
    with pytest.raises(runner.ConfigError, match="no config.json"):
        ppo.parse_args(["--resume", str(tmp_path)])
    # the same programs need the same jax and XLA flags: a change is named in a warning (not refused)
    capsys.readouterr()
    ppo.parse_args(["--resume", out])
    assert "warning" not in capsys.readouterr().err
    config_path = os.path.join(out, "config.json")
    saved = open(config_path).read()
    config = json.loads(saved)
    config["versions"]["XLA_FLAGS"] = "--another-flag"
    with open(config_path, "w") as f:
        json.dump(config, f)
    ppo.parse_args(["--resume", out])
    assert "XLA_FLAGS '--another-flag' is now" in capsys.readouterr().err
    with open(config_path, "w") as f:
        f.write(saved)
    never = str(tmp_path / "never")
    ppo.run(ppo.parse_args(FLAGS + ["--output-dir", never, "--checkpoint-every", "0", "--total-timesteps", "256"]))
    with pytest.raises(runner.ConfigError, match="no checkpoint"):
        ppo.run(ppo.parse_args(["--resume", never]))
    # a larger budget extends the run: the first 20 intervals stay, 10 more follow
    before = open(os.path.join(out, "metrics.csv")).readlines()
    summary = ppo.run(ppo.parse_args(["--resume", out, "--total-timesteps", "3840"]))
    after = open(os.path.join(out, "metrics.csv")).readlines()
    assert after[: len(before)] == before and len(after) == len(before) + 2 * 10
    assert summary["completed"] and summary["env_steps"] == 3840


@pytest.mark.parametrize("module_name", ["bpo", "bpo_traj"])
def test_a_run_made_before_a_flag_existed_resumes_as_it_was_made(module_name, tmp_path, capsys):
    """A config.json written before --freeze-pi and --variance-reward existed: each is filled in with
    the behaviour of the old code (OLD_RUN_VALUES); where that is not today's default the run goes
    on with the old behaviour and one line says so. A missing flag not in the table is refused."""
    import dataclasses

    module = __import__(module_name)
    args = dataclasses.asdict(module.Args())
    old = {k: v for k, v in args.items() if k not in ("freeze_pi", "variance_reward")}
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(algo=module_name, args=old, versions={}), f)
    resumed = module.parse_args(["--resume", str(tmp_path)])
    assert resumed.variance_reward == "reference" and resumed.freeze_pi is False
    assert capsys.readouterr().out.splitlines() == [
        f"--resume {tmp_path}: the run predates --variance-reward, so it goes on as it was made, with "
        "--variance-reward reference (a new run's default is unbiased)"
    ]
    with pytest.raises(runner.ConfigError, match="--variance-reward unbiased differs from the run's reference"):
        module.parse_args(["--resume", str(tmp_path), "--variance-reward", "unbiased"])
    del old["clip_c"]
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(algo=module_name, args=old, versions={}), f)
    with pytest.raises(runner.ConfigError, match=r"flags differ from this script's \(clip_c\)"):
        module.parse_args(["--resume", str(tmp_path)])
