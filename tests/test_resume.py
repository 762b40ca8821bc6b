"""Long runs: an interrupted run resumes from its checkpoint and writes exactly what the
uninterrupted run would have; flags that would change a resumed run are refused."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
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


def test_resume_refuses_changes_and_extends(checkpointed, tmp_path, capsys):
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(checkpointed, out)  # 20 intervals of 1 iteration
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
    # a larger budget extends the run: the first 20 intervals stay, 10 more follow, and the annealed
    # schedules go on as if they had decayed over the new total from the start (and the resume says so)
    before = open(os.path.join(out, "metrics.csv")).readlines()
    capsys.readouterr()
    summary = ppo.run(ppo.parse_args(["--resume", out, "--total-timesteps", "3840"]))
    assert (
        "--total-timesteps 3,840 extends the run from 2,560 steps per seed: the annealed schedules (--anneal-lr, "
        "--anneal-clip) go on as if they had decayed over the new total from the start, so at 2,560 steps they "
        "rise from 0% to 33% of their initial values"
    ) in capsys.readouterr().out
    after = open(os.path.join(out, "metrics.csv")).readlines()
    assert after[: len(before)] == before and len(after) == len(before) + 2 * 10
    assert summary["completed"] and summary["env_steps"] == 3840
    for row in runner.read_metrics(os.path.join(out, "metrics.csv"))[2 * 20 :]:
        iteration = row["env_steps"] // 128 - 1  # one iteration per interval; the rates as it began
        assert row["learning_rate"] == pytest.approx(1e-3 * (1 - iteration / 30), rel=1e-5)
        assert row["clip_coef"] == pytest.approx(0.2 * (1 - iteration / 30), rel=1e-5)


@pytest.mark.parametrize("module_name", ["bpo", "bpo_traj"])
def test_a_run_made_before_a_flag_existed_resumes_as_it_was_made(module_name, tmp_path, capsys):
    """A config.json written before --freeze-pi and --variance-reward existed: each is filled in with
    the behaviour of the old code (OLD_RUN_VALUES); where that is not today's default the run goes
    on with the old behaviour and one line says so. A missing flag not in the table is refused."""
    import dataclasses

    module = __import__(module_name)
    args = dataclasses.asdict(module.Args())
    newer = ("q_hat_head", "mu_form", "mu_temper", "mu_mix", "mu_target", "capture_video", "capture_video_every")
    old = {k: v for k, v in args.items() if k not in ("freeze_pi", "variance_reward") + newer}
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(algo=module_name, args=old, versions={}), f)
    resumed = module.parse_args(["--resume", str(tmp_path)])
    assert resumed.variance_reward == "reference" and resumed.freeze_pi is False
    assert all(getattr(resumed, k) == args[k] for k in newer)  # the behaviour old runs had: today's default
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


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints: named in one line, the newest intact one resumed, never a different run
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished 20-interval ppo.py run that kept checkpoints 10, 15 and 20."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    ppo.run(ppo.parse_args(FLAGS + ["--checkpoint-every", "5", "--output-dir", str(out)]))
    assert sorted(os.listdir(out / "checkpoints"), key=int) == ["10", "15", "20"]
    return out


def largest_file(folder):
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names]
    return max(files, key=os.path.getsize)


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def random_bytes(path):
    open(path, "wb").write(os.urandom(os.path.getsize(path)))


def flip_one_bit(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 1
    open(path, "wb").write(bytes(data))


DAMAGE = {
    "truncated data": lambda step: truncate(largest_file(step / "state")),
    "random bytes": lambda step: random_bytes(largest_file(step / "state")),
    "one flipped bit": lambda step: flip_one_bit(largest_file(step / "state")),
    "truncated _METADATA": lambda step: truncate(step / "state" / "_METADATA"),
    "truncated meta/metadata": lambda step: truncate(step / "meta" / "metadata"),
}


@pytest.fixture(scope="module")
def initial_state(checkpointed):
    """The rows' initial states: the structure a checkpoint is restored into."""
    args = ppo.parse_args(["--resume", str(checkpointed)])
    plan = runner.plan_run(args, "ppo", ppo.validate, ppo.make_train, ppo.METRIC_COLUMNS, ppo.SWEEPABLE)
    return plan, runner.init_seeds(plan.init, plan.seeds, plan.hp)


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_named_and_the_newest_intact_one_restored(
    damage, checkpointed, initial_state, tmp_path, capsys
):
    """Truncated or overwritten data and metadata make orbax raise pages of tracebacks; a bit flipped
    in a data file restores without an error at all, and only the checksums see it."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpointed, copy)
    DAMAGE[damage](copy / "checkpoints" / "20")
    capsys.readouterr()
    state, progress = runner.restore_checkpoint(str(copy), initial_state[1])
    out, err = capsys.readouterr()
    assert progress["done_iters"] == 15
    assert err.startswith(f"warning: checkpoint 20 in {copy / 'checkpoints'} is damaged (") and err.count("\n") == 1
    aside = copy / "checkpoints-damaged"
    assert out == f"resuming from checkpoint 15, the newest intact one (the damaged ones are now in {aside})\n"
    assert sorted(os.listdir(copy / "checkpoints")) == ["10", "15"] and os.listdir(copy / "checkpoints-damaged") == [
        "20"
    ]


def test_a_checkpoint_from_before_checksums_is_restored_with_a_warning(initial_state, tmp_path, capsys):
    """A week-long run checkpointed by the code before checksums still resumes, unverified, and says so."""
    import orbax.checkpoint as ocp

    plan, state = initial_state
    progress = dict(done_iters=7, num_rows=14, diverged={}, train_seconds=1.0, checkpoint_seconds=[0.1])
    manager = runner.checkpoint_manager(str(tmp_path))
    manager.save(
        7,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(runner._without_empty(state)), meta=ocp.args.JsonSave(progress)
        ),
    )
    manager.wait_until_finished()
    manager.close()
    restored, meta = runner.restore_checkpoint(str(tmp_path), state)
    assert (
        meta == progress and "warning: checkpoint 7 predates checksums: restored unverified" in capsys.readouterr().err
    )
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_resume_past_a_flipped_bit_is_the_uninterrupted_run(checkpointed, tmp_path, capsys):
    """Resumed from checkpoint 15 past a damaged 20, the run writes the uninterrupted run's rows and
    parameters exactly (before checksums, it resumed from 20 with wrong numbers and no warning)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpointed, copy)
    flip_one_bit(largest_file(copy / "checkpoints" / "20" / "state"))
    summary = ppo.run(ppo.parse_args(["--resume", str(copy)]))
    assert summary["completed"] and "is damaged" in capsys.readouterr().err
    for name in ("metrics.csv", "params.msgpack"):
        assert open(copy / name, "rb").read() == open(checkpointed / name, "rb").read(), name
    assert sorted(os.listdir(copy / "checkpoints"), key=int) == ["10", "15", "20"]  # 20 saved again, intact


def test_no_intact_checkpoint_is_one_line_and_nothing_changes(checkpointed, initial_state, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpointed, copy)
    for step in ("10", "15", "20"):
        flip_one_bit(largest_file(copy / "checkpoints" / step / "state"))
    with pytest.raises(runner.ConfigError) as e:
        runner.restore_checkpoint(str(copy), initial_state[1])
    assert str(e.value) == (
        f"--resume {str(copy)!r}: no intact checkpoint: 20 (arrays that do not match their checksums), "
        "15 (arrays that do not match their checksums), 10 (arrays that do not match their checksums)"
    )
    assert sorted(os.listdir(copy / "checkpoints"), key=int) == ["10", "15", "20"]
    assert not (copy / "checkpoints-damaged").exists()


def test_a_resume_on_another_device_count_says_what_that_changes(checkpointed, initial_state, tmp_path, capsys):
    """The rows batched otherwise per device: not bitwise the uninterrupted run (the warning used to
    promise differences in "the last bits" only)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpointed, copy)
    config = json.load(open(copy / "config.json"))
    config["devices"] = ["TFRT_CPU_0", "TFRT_CPU_1"]
    json.dump(config, open(copy / "config.json", "w"))
    plan = initial_state[0]
    capsys.readouterr()
    runner.output_folder(plan._replace(args=plan.args.__class__(**{**vars(plan.args), "resume": str(copy)}))).release()
    assert capsys.readouterr().err == (
        f"warning: --resume {copy}: the run was made on 2 device(s) and goes on on 1, which batches its rows "
        "differently: the resumed part is not the uninterrupted run's, it differs by float rounding, which "
        "training amplifies (for exactly the same numbers, resume on 2 device(s))\n"
    )
