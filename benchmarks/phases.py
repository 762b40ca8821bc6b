"""Where an iteration's time goes: each phase of ppo.py, bpo.py or bpo_traj.py timed on its own,
interleaved in one process.

    python benchmarks/phases.py bpo.py --env-id ant --num-seeds 16
    python benchmarks/phases.py --repeats 9 bpo.py --preset cartpole_ppo ppo_bpo_zero1.0 --num-seeds 16
    python benchmarks/phases.py ppo.py --env-id ant --num-seeds 16

Flags before the script name are this tool's; everything after it goes to the script's own parser
(as throughput.py's). The scripts' `make_train` returns each phase as a function of one seed's
state. Each program here is one of them for every seed, vmapped over seeds as the script runs them,
compiled on its own (compilation is not timed):
- iteration: one whole training iteration (steps 1-7 of docs/algorithm.md; ppo.py: rollout,
  estimator, update);
- rollout: step 1, the environment steps and the batched passes after them;
- fit_q: step 4, FQE of Q; fit_q_hat: steps 5-6, the variance rewards and FQE of q_hat; update_mu:
  step 7 (bpo.py and bpo_traj.py);
- the rest: the iteration less the phases: the estimator (step 2), the PPO update (step 3) and
  the iteration's statistics.
The programs start from the state after `--fill` training iterations (so BPO's replay buffer holds
data) and are called in turn for `--repeats` rounds, each carrying its own state on, so a slow
moment of a shared machine falls on every phase alike; medians over rounds are reported. A phase
alone computes its own inputs: inside the iteration, FQE of Q and of q_hat share theirs
(`fqe_inputs`), so the phases can add up to a little more than the iteration.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import runner  # noqa: E402
from throughput import compile_program, split_argv, time_interleaved, write_json  # noqa: E402  (configures jax)


@dataclass
class Bench:
    """Flags of the tool; the script's flags follow the script name."""

    fill: int = 1
    """training iterations run before timing (the phases then start from a filled replay buffer)"""
    repeats: int = 5
    """rounds of timed calls (each phase once per round); medians are reported"""
    out: str = ""
    """if set, write the figures to this JSON file"""


def phases(trainer, learning_rate: float) -> dict:
    """name -> function of one seed's state returning its next state: the iteration, then each
    phase the trainer exposes (ppo.py's trainer has no BPO phases)."""
    out = {"iteration": lambda s: trainer.iteration(s)[0], "rollout": lambda s: trainer.rollout(s)[0]}
    if hasattr(trainer, "update_mu"):
        out["fit_q"] = lambda s: trainer.fit_q(s, learning_rate)[0]
        out["fit_q_hat"] = lambda s: trainer.fit_q_hat(s, trainer.variance_rewards(s), learning_rate)[0]
        out["update_mu"] = lambda s: trainer.update_mu(s, learning_rate)[0]
    return out


def measure(script: str, script_argv: list[str], bench: Bench) -> dict:
    """Compile and time every phase; returns the figures."""
    module = importlib.import_module(script)
    args = module.parse_args(script_argv)
    module.validate(args)
    env = runner.make_env(args)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    trainer = module.make_train(args, env)
    state = jax.block_until_ready(runner.init_seeds(trainer.init, seeds))

    programs, compile_seconds = {}, {}
    for name, fn in phases(trainer, args.learning_rate).items():
        compiled, compile_seconds[name] = compile_program(jax.vmap(fn), state)
        programs[name] = compiled
    for _ in range(bench.fill):
        state = jax.block_until_ready(programs["iteration"](state))

    timed = time_interleaved({name: (c, state, lambda y: y) for name, c in programs.items()}, bench.repeats)
    seconds = {name: float(np.median(t)) for name, (t, _) in timed.items()}
    rest = seconds["iteration"] - sum(s for name, s in seconds.items() if name != "iteration")
    device = jax.devices()[0]
    return dict(
        script=f"{script}.py",
        argv=script_argv,
        num_seeds=len(seeds),
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        fill=bench.fill,
        repeats=bench.repeats,
        median_seconds=seconds,
        rest_seconds=rest,
        seconds={name: t.tolist() for name, (t, _) in timed.items()},
        compile_seconds=compile_seconds,
        # per seed, after every call: what the test checks was run
        iterations_run=np.asarray(timed["iteration"][1].iteration).tolist(),
        device=f"{device.platform}: {device.device_kind}",
        jax=jax.__version__,
        args=dataclasses.asdict(args),
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    bench, script, script_argv = split_argv(argv, "benchmarks/phases.py", Bench)
    if bench.fill < 0:
        raise SystemExit("benchmarks/phases.py: error: --fill must be >= 0")
    try:
        r = measure(script, script_argv, bench)
    except ValueError as e:  # the scripts' ConfigError and envs.UnknownEnvError
        raise SystemExit(f"benchmarks/phases.py: error: {e}")
    total = r["median_seconds"]["iteration"]
    print(
        f"{script}.py {' '.join(script_argv)} on {r['device']}: {r['num_seeds']} seeds, "
        f"median of {r['repeats']} rounds, after {r['fill']} training iteration{'s' * (r['fill'] != 1)}"
    )
    for name, s in r["median_seconds"].items():
        print(f"  {name:10s} {s * 1e3:10.1f} ms  {s / total:6.1%}  (compile {r['compile_seconds'][name]:.1f}s)")
    print(
        f"  {'the rest':10s} {r['rest_seconds'] * 1e3:10.1f} ms  {r['rest_seconds'] / total:6.1%}  "
        "(the iteration less the phases: estimator, PPO update, statistics)",
        flush=True,
    )
    if bench.out:
        write_json(bench.out, r)
    return r


if __name__ == "__main__":
    main()
