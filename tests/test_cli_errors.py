"""Bad input: a clear one-line error, a non-zero exit, no traceback, before anything compiles.

The cases run through each script's entry point (runner.main) in this process; one case per script
runs it as a program, so its own output and exit code are checked too."""

import dataclasses
import os

import pytest
from helpers import main_in_process, run_script

SCRIPTS = ["ppo.py", "bpo.py", "bpo_traj.py"]


CASES = [
    (["--env-id", "NoSuchEnv-v0"], ["unknown env id 'NoSuchEnv-v0'", "CartPole-v1", "hopper"]),
    (
        ["--num-envs", "3", "--num-steps", "10", "--minibatch-size", "4"],
        ["--num-envs 3 x --num-steps 10 = 30", "--minibatch-size 4"],
    ),
    (["--num-envs", "0"], ["--num-envs must be positive"]),
    (["--total-timesteps", "-5"], ["--total-timesteps must be positive"]),
    (["--total-timesteps", "100"], ["less than one rollout"]),
    (["--preset", "nonsense"], ["unknown preset 'nonsense'", "cartpole_ppo"]),
    (["--env-id", "hopper", "--env-backend", "warp"], ["--env-backend 'warp'", "mjx"]),
    (["--noise-hold-steps", "4"], ["--noise-hold-steps 4 needs continuous actions", "CartPole-v1"]),
    (["--noise-hold-steps", "-1"], ["--noise-hold-steps must be >= 0"]),
    (["--gamma", "1.5"], ["--gamma must be in [0, 1], got 1.5"]),
    (["--gae-lambda", "-0.1"], ["--gae-lambda must be in [0, 1]"]),
    (["--max-grad-norm", "0"], ["--max-grad-norm must be positive"]),
    (["--ent-coef", "-1"], ["--ent-coef must be >= 0"]),
    (["--hidden-sizes", "64", "0"], ["--hidden-sizes must be one or more positive widths"]),
    (["--env-id", "tabular-sparse", "--max-episode-steps", "5"], ["--max-episode-steps", "H = 20"]),
]
BPO_CASES = [
    (["--replay-size", "0"], ["--replay-size must be positive"]),
    (["--fqe-epochs", "-1"], ["--fqe-epochs must be >= 0"]),
    (["--clip-rho", "0"], ["--clip-rho must be positive"]),
    (["--polyak-tau", "1.5"], ["--polyak-tau must be in [0, 1]"]),
    (["--symlog-reg-coef", "-1"], ["--symlog-reg-coef must be >= 0"]),
    (["--freeze-pi", "--no-bpo"], ["--freeze-pi with --no-bpo would train nothing"]),
]


@pytest.mark.parametrize(
    "script,flags,expected",
    [(s, f, e) for s in SCRIPTS for f, e in CASES] + [(s, f, e) for s in SCRIPTS[1:] for f, e in BPO_CASES],
)
def test_bad_input_is_one_clear_line(script, flags, expected, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = main_in_process(script, [*flags, "--output-dir", str(out)], capsys, monkeypatch)
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"{script}: error: ")
    for text in expected:
        assert text in lines[0]
    assert not out.exists()  # failed before writing (or compiling) anything


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_run_as_a_program_says_it_in_one_line(script, tmp_path):
    """The same, `python <script>` in a process of its own: its whole stderr is the line, exit code 1."""
    out = tmp_path / "out"
    r = run_script(script, "--env-id", "NoSuchEnv-v0", "--output-dir", str(out), timeout=120)
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "import warp" not in line]  # Brax's optional-import notes
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{script}: error: unknown env id 'NoSuchEnv-v0'") and "CartPole-v1" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_existing_output_dir_is_not_overwritten(script, tmp_path, capsys, monkeypatch):
    (tmp_path / "keep.txt").write_text("results")
    code, _, err = main_in_process(script, ["--output-dir", str(tmp_path)], capsys, monkeypatch)
    assert code != 0 and "exists and is not empty" in err and "--overwrite" in err
    assert os.listdir(tmp_path) == ["keep.txt"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag(script, capsys, monkeypatch):
    code, stdout, _ = main_in_process(script, ["--help"], capsys, monkeypatch)
    assert code == 0
    for flag in (
        "--env-id",
        "--num-seeds",
        "--seed",
        "--total-timesteps",
        "--num-envs",
        "--num-steps",
        "--output-dir",
        "--preset",
    ):
        assert flag in stdout
    module = __import__(script.removesuffix(".py"))
    listed = stdout.split("presets (--preset NAME ...; docs/presets.md): ")[1].split("\n")[0]
    assert listed.split(", ") == list(module.PRESETS)  # every preset's name, before the flags


@pytest.mark.parametrize("module", ["ppo", "bpo", "bpo_traj"])
def test_sweep_help_lists_the_sweepable_keys(module, tmp_path, capsys):
    module = __import__(module)
    with pytest.raises(SystemExit) as e:
        module.run(module.Args(sweep=("help",), output_dir=str(tmp_path / "out")))
    assert e.value.code == 0 and not (tmp_path / "out").exists()
    assert "the keys that can be swept: " + ", ".join(module.SWEEPABLE) in capsys.readouterr().out


@pytest.mark.parametrize("module", ["ppo", "bpo", "bpo_traj"])
def test_non_finite_or_absurd_rates_are_one_line_errors(module, tmp_path):
    """--learning-rate inf once trained a whole budget of diverged seeds; inf stays allowed where it
    means no clipping (--max-grad-norm; BPO's --clip-rho, --clip-c)."""
    import math

    import runner

    module = __import__(module)
    for flags, message in [
        (dict(learning_rate=math.inf), "--learning-rate must be a finite number, got inf"),
        (dict(learning_rate=math.nan), "--learning-rate must be a finite number, got nan"),
        (dict(learning_rate=1e30), "--learning-rate must be in (0, 1], got 1e+30"),
        (dict(ent_coef=math.inf), "--ent-coef must be a finite number"),
        (dict(adam_eps=math.inf), "--adam-eps must be a finite number"),
        (dict(reward_scale=math.inf), "--reward-scale must be a finite number"),
        (dict(sweep=("learning_rate=3e-4,inf",)), "--learning-rate must be a finite number, got inf"),
        (dict(sweep=("learning_rate=3e-4,1e30",)), "--learning-rate must be in (0, 1]"),
    ]:
        out = tmp_path / "out"
        with pytest.raises(runner.ConfigError) as e:  # (a tiny budget, should it run after all)
            module.run(
                module.Args(
                    **flags, total_timesteps=1024, num_envs=4, num_steps=32, minibatch_size=64, output_dir=str(out)
                )
            )
        assert message in str(e.value) and "\n" not in str(e.value) and not out.exists()
    allowed = dict(max_grad_norm=math.inf) | ({} if module.__name__ == "ppo" else dict(clip_rho=math.inf))
    module.validate(module.Args(**allowed))


def test_a_budget_rounded_to_whole_rollouts_is_said(capsys):
    """20,000 steps in rollouts of 4 x 128 = 512 are 39 rollouts, 19,968 steps: said, not silent."""
    import ppo
    import runner

    args = ppo.Args(total_timesteps=20_000, eval_every=5_000, num_envs=4, num_steps=128, minibatch_size=128)
    runner.plan_run(args, "ppo", ppo.validate, ppo.make_train, ppo.METRIC_COLUMNS, ppo.SWEEPABLE)
    assert capsys.readouterr().out == (
        "the run trains whole rollouts of 512 steps (--num-envs x --num-steps): "
        "--total-timesteps 20,000 -> 19,968, --eval-every 5,000 -> 4,608\n"
    )
    runner.plan_run(
        dataclasses.replace(args, total_timesteps=20_480, eval_every=5_120),
        "ppo",
        ppo.validate,
        ppo.make_train,
        ppo.METRIC_COLUMNS,
        ppo.SWEEPABLE,
    )
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("script", SCRIPTS[:1])
def test_output_dir_that_is_a_file_is_one_clear_line(script, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("results")
    code, _, err = main_in_process(script, ["--output-dir", str(tmp_path / "file")], capsys, monkeypatch)
    assert code != 0 and "Traceback" not in err and "is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == "results"


def test_overwrite_removes_the_previous_runs_outputs(tmp_path):
    """--overwrite onto a finished run: none of its outputs may stand beside the new run's (a new
    run that stops early would otherwise leave the old summary.json), other files are kept."""
    import ppo
    import runner

    for name in runner.OUTPUT_FILES + ("notes.txt",):
        (tmp_path / name).write_text("old")
    args = ppo.Args(output_dir=str(tmp_path), overwrite=True)
    folder = runner.prepare_output_dir(args, "ppo")
    assert folder.path == str(tmp_path) and sorted(os.listdir(tmp_path)) == [runner.LOCK_FILE, "notes.txt"]
    folder.release()
    assert os.listdir(tmp_path) == ["notes.txt"]
