"""What many test files share: the repository's root, the tiny CartPole runs (one set of settings, so
that their compiled programs are shared through the compilation cache), command lines built from
flag dicts, the scripts run as programs or through their entry point in this process, and
metrics.csv read back."""

import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny PPO settings of most runs: one rollout of 4 x 32 steps, 2 minibatches, 2 epochs, 2
# evaluation episodes. The tests add a budget (total_timesteps, eval_every) and seeds; where two
# tests ask for the same numbers, they get the same compiled program (compiled once a session).
TINY = dict(num_envs=4, num_steps=32, minibatch_size=64, num_epochs=2, eval_episodes=2)
# ... and bpo.py's and bpo_traj.py's: a replay buffer of two rollouts, one epoch of each phase.
BPO_TINY = dict(replay_size=256, fqe_epochs=1, mu_epochs=1)
# A sweep of 2 members x 2 seeds, 4 intervals of 4 iterations, a checkpoint after each, no annealing
# (a shorter run is the first part of the longer one): test_sweep.py resumes it, test_divergence.py
# makes it diverge. The same program in both.
SWEEP_RUN = dict(
    total_timesteps=2048,
    eval_every=512,
    num_seeds=2,
    sweep=("ent_coef=0.0,0.01",),
    anneal_lr=False,
    anneal_clip=False,
    checkpoint_every=1,
)


def tiny(module, **flags):
    """module.Args of the tiny settings (with BPO_TINY for bpo.py and bpo_traj.py), then `flags`."""
    bpo_like = hasattr(module.Args(), "replay_size")
    return module.Args(**{**TINY, **(BPO_TINY if bpo_like else {}), **flags})


def cli(flags: dict) -> list[str]:
    """A flag dict as a command line: --num-envs 4, --flag for True, --no-flag for False."""
    out = []
    for k, v in flags.items():
        flag = "--" + k.replace("_", "-")
        out += [flag] if v is True else ["--no-" + flag[2:]] if v is False else [flag, str(v)]
    return out


def read_rows(folder) -> list[dict]:
    """metrics.csv's rows, as strings."""
    with open(os.path.join(folder, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def start_script(script: str, argv, env=None) -> subprocess.Popen:
    """`python <script> <argv>` in the repository, stdout and stderr together in proc.stdout."""
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, script), *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def run_script(script: str, *argv, timeout=300, **kw) -> subprocess.CompletedProcess:
    """`python <script> <argv>` in the repository, to its end; stdout and stderr apart."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def main_in_process(script: str, argv, capsys, monkeypatch):
    """The script's entry point (runner.main, as `python <script> <argv>` calls it) in this process:
    (exit code, stdout, stderr) as the program would end, the message of a SystemExit printed to
    stderr as Python prints it. runner's record that it runs as a script is put back afterwards."""
    import runner

    module = __import__(script.removesuffix(".py"))
    monkeypatch.setattr(runner, "_AS_SCRIPT", False)
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, script), *argv])
    capsys.readouterr()
    try:
        runner.main(module.parse_args, module.run, list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    if isinstance(code, str):  # sys.exit("message"): Python prints it and exits with 1
        err, code = err + code + "\n", 1
    return code or 0, out, err
