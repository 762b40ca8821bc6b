"""--sweep: the grid of swept values trains in one compiled program, each member with each seed
exactly as the standalone run with those values; bad keys are one-line errors before anything is
compiled; the rows spread over several devices give the same numbers."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SWEEP_RUN
from helpers import read_rows as rows
from helpers import tiny as tiny_run

import bpo
import bpo_traj
import compare
import envs
import ppo
import runner


def tiny(module, **kw):
    """helpers' tiny settings, 2 intervals of 4 iterations, no checkpoints."""
    return tiny_run(module, **{"total_timesteps": 1024, "eval_every": 512, "checkpoint_every": 0, **kw})


def assert_rows_equal(a, b, columns):
    assert len(a) == len(b) > 0
    for r, s in zip(a, b):
        assert (r["seed"], r["env_steps"]) == (s["seed"], s["env_steps"])
        for k in columns[2:]:
            np.testing.assert_allclose(float(r[k]), float(s[k]), rtol=1e-4, atol=1e-5, err_msg=k)


# ----------------------------------------------------------------------------------------------
# Bad input: one line, before anything is compiled or written
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sweep,message",
    [
        (["num_envs=4,8"], "num_envs sets an array shape"),
        (["hidden_sizes=32,64"], "hidden_sizes sets an array shape"),
        (["env_id=CartPole-v1"], "env_id sets an array shape"),
        (["clip_cof=0.1,0.2"], "'clip_cof' is not a flag"),
        (["clip_coef=0.1,big"], "clip_coef takes numbers, got 'big'"),
        (["norm_adv=true,maybe"], "norm_adv takes true or false"),
        (["clip_coef"], "write KEY=V1,V2"),
        (["clip_coef=0.1", "clip_coef=0.2"], "clip_coef is given twice"),
        (["clip_coef=0.1,0.1"], "clip_coef repeats a value"),
        (["gamma=0.99,1.5"], "--gamma must be in [0, 1], got 1.5"),
    ],
)
def test_bad_sweeps_are_one_line_errors(sweep, message, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(runner.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        ppo.run(tiny(ppo, sweep=tuple(sweep), output_dir=str(out)))
    assert "\n" not in str(e.value) and not out.exists()
    if "is not a flag" in message or "sets an array shape" in message:
        assert "the keys that can be swept: " + ", ".join(ppo.SWEEPABLE) in str(e.value)


def test_a_sweep_key_that_decides_structure_here_is_an_error_before_compiling(tmp_path):
    """bpo.py's probe horizon is a loop count computed from gamma: with the probe on, gamma cannot
    vary inside one program (the error comes from tracing, before any output is written)."""
    out = tmp_path / "out"
    args = tiny(bpo, sweep=("gamma=0.9,0.99",), variance_probe=8, output_dir=str(out))
    with pytest.raises(runner.ConfigError, match="a swept value decides the program's structure"):
        bpo.run(args)
    assert not out.exists()


def test_the_cli_takes_a_sweep():
    args = bpo.parse_args(["--sweep", "clip_rho=1.0,1.5", "clip_c=1.0,2.0", "--num-devices", "1"])
    assert args.sweep == ("clip_rho=1.0,1.5", "clip_c=1.0,2.0") and args.num_devices == 1
    grid = runner.parse_sweep(args, bpo.SWEEPABLE, bpo.validate)
    assert grid.keys == ("clip_rho", "clip_c")
    assert grid.members == [
        dict(clip_rho=1.0, clip_c=1.0),
        dict(clip_rho=1.0, clip_c=2.0),
        dict(clip_rho=1.5, clip_c=1.0),
        dict(clip_rho=1.5, clip_c=2.0),
    ]


@pytest.mark.parametrize("module,probe", [(ppo, 0), (bpo, 0), (bpo_traj, 0), (bpo, 4), (bpo_traj, 4)])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_every_sweepable_key_is_a_traced_input(module, probe, env_id):
    """SWEEPABLE is honest: with every listed key traced at once, init and the interval's program
    trace (no Python control flow on them, no shape from them); with the variance probe on, all but
    gamma (the probe's horizon)."""
    args = tiny(module, env_id=env_id, **({"variance_probe": probe} if probe else {}))
    values = runner.with_values(module.make_train, args, envs.make(env_id))
    hp = {
        k: jax.ShapeDtypeStruct((), jnp.bool_ if isinstance(getattr(args, k), bool) else jnp.float32)
        for k in module.SWEEPABLE
        if not (probe and k == "gamma")
    }
    like = jax.eval_shape(lambda key, hp: values(hp).init(key), jax.random.PRNGKey(0), hp)
    batched = lambda x: jax.ShapeDtypeStruct((3, *x.shape), x.dtype)  # noqa: E731
    chunk = jax.vmap(lambda s, hp, n: values(hp).train_interval(s, n), in_axes=(0, 0, None), axis_name="seeds")
    _, metrics = jax.eval_shape(chunk, jax.tree.map(batched, like), jax.tree.map(batched, hp), jnp.int32(1))
    assert metrics["eval_return"].shape == (3,)


# ----------------------------------------------------------------------------------------------
# Member k with seed i trains exactly as the standalone run
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module,env_id,sweep,alone",
    [
        (ppo, "CartPole-v1", ("clip_coef=0.1,0.3", "norm_adv=true,false"), dict(clip_coef=0.3, norm_adv=False)),
        (bpo, "Pendulum-v1", ("clip_rho=1.0,2.0", "learning_rate=1e-3,3e-4"), dict(clip_rho=2.0, learning_rate=3e-4)),
    ],
)
def test_member_equals_the_standalone_run(module, env_id, sweep, alone, tmp_path):
    columns = module.METRIC_COLUMNS
    summary = module.run(tiny(module, env_id=env_id, num_seeds=2, sweep=sweep, output_dir=str(tmp_path / "sweep")))
    module.run(tiny(module, env_id=env_id, num_seeds=2, output_dir=str(tmp_path / "alone"), **alone))
    swept = rows(tmp_path / "sweep")
    config = json.load(open(tmp_path / "sweep" / "config.json"))
    k = config["members"].index(alone)
    assert summary["members"] == config["members"] and len(summary["final_eval_return"]) == len(config["members"])
    member = [r for r in swept if int(r["member"]) == k]
    assert all(float(r[f"sweep.{key}"]) == float(v) for r in member for key, v in alone.items())
    assert_rows_equal(member, rows(tmp_path / "alone"), columns)
    # the swept values are not ignored: another member's numbers differ
    other = [r for r in swept if int(r["member"]) == (k + 1) % len(config["members"])]
    assert any(float(r["pg_loss"]) != float(s["pg_loss"]) for r, s in zip(member, other))
    # compare.py reads the sweep folder as one run per member
    runs = compare.load_runs(str(tmp_path / "sweep"), None)
    assert len(runs) == len(config["members"]) and all(run.returns.shape == (2, 2) for run in runs)
    assert " ".join(f"{key}={v}" for key, v in alone.items()) in runs[k].label


def test_sweep_resumes_exactly(tmp_path):
    """A sweep extended with --resume writes what the longer sweep writes (no annealing, so the
    first half's schedule does not depend on the total)."""
    ppo.run(tiny(ppo, **SWEEP_RUN, output_dir=str(tmp_path / "whole")))
    ppo.run(tiny(ppo, **{**SWEEP_RUN, "total_timesteps": 1024}, output_dir=str(tmp_path / "cut")))
    ppo.run(ppo.parse_args(["--resume", str(tmp_path / "cut"), "--total-timesteps", "2048"]))
    assert open(tmp_path / "cut" / "metrics.csv").read() == open(tmp_path / "whole" / "metrics.csv").read()


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------
DEVICE_FLAGS = [
    "--total-timesteps",
    "1024",
    "--num-envs",
    "4",
    "--num-steps",
    "32",
    "--minibatch-size",
    "64",
    "--num-epochs",
    "2",
    "--eval-every",
    "512",
    "--eval-episodes",
    "2",
    "--checkpoint-every",
    "0",
    "--num-seeds",
    "1",
    "--sweep",
    "clip_coef=0.1,0.2,0.3",
]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """The 3-member sweep of DEVICE_FLAGS on this process's one device: the reference."""
    out = tmp_path_factory.mktemp("one")
    ppo.run(ppo.parse_args(DEVICE_FLAGS + ["--output-dir", str(out), "--overwrite"]))
    assert len(json.load(open(out / "config.json"))["devices"]) == len(jax.devices())
    return rows(out)


@pytest.mark.cpu_only  # CPU subprocesses against this process's numbers
def test_rows_sharded_over_two_devices_give_the_same_numbers(one_device, tmp_path):
    """3 members x 1 seed on 2 forced host devices (padded to 4 rows, the padding dropped) against
    the same sweep on this process's one device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "ppo.py", *DEVICE_FLAGS, "--output-dir", str(tmp_path / "two")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on 2 device(s)" in proc.stdout
    assert len(json.load(open(tmp_path / "two" / "config.json"))["devices"]) == 2
    two = rows(tmp_path / "two")
    assert [r["member"] for r in two] == ["0", "1", "2"] * 2
    assert_rows_equal(two, one_device, ppo.METRIC_COLUMNS)


def test_num_devices_beyond_the_machine_is_an_error(tmp_path):
    with pytest.raises(runner.ConfigError, match=f"--num-devices 64: there are {len(jax.devices())}"):
        ppo.run(tiny(ppo, num_devices=64, output_dir=str(tmp_path / "x")))


LAUNCH = """
import runpy, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
jax.distributed.initialize("localhost:{port}", num_processes=2, process_id=int(sys.argv[1]))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.cpu_only  # CPU subprocesses against this process's numbers
def test_two_processes_under_jax_distributed_write_the_one_process_numbers(one_device, tmp_path):
    """Two hosts in miniature: two processes on this machine joined by jax.distributed, one CPU
    device each; the rows spread over both, process 0 writes the outputs."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    flags = DEVICE_FLAGS
    code = LAUNCH.format(port=port)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i), "ppo.py", *flags, "--output-dir", str(tmp_path / "many")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        for i in (1, 0)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len(json.load(open(tmp_path / "many" / "config.json"))["devices"]) == 2
    assert_rows_equal(rows(tmp_path / "many"), one_device, ppo.METRIC_COLUMNS)
    # checkpoints across hosts are refused, one line, before compiling
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code.replace(str(port), str(port + 1)),
                str(i),
                "ppo.py",
                *flags[:-6],
                "--output-dir",
                str(tmp_path / "refused"),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        for i in (1, 0)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(
        p.returncode == 1 and "checkpoints and --resume are not supported across hosts" in out
        for p, out in zip(procs, outputs)
    ), outputs
