"""Training throughput of ppo.py, bpo.py or bpo_traj.py against stepping the environment alone.

    python throughput.py bpo.py --env-id ant --num-seeds 16
    python throughput.py --iterations 4 ppo.py --env-id ant --num-seeds 16

Flags before the script name are this tool's; everything after it goes to that script's own
parser, so the run is configured exactly as the script would configure it (presets included).
Three programs are compiled (compilation is not timed), then timed in `--repeats` rounds, each
calling the three in turn (so a slow moment of a shared machine falls on all three alike):
- training: `--iterations` training iterations of every seed (rollout and every update, no
  evaluation), vmapped over seeds in one scan, as the script runs them;
- ceiling: the same number of environment steps on the same environments (num_seeds x num_envs
  of them in parallel, the same wrappers: time limit, auto-reset, action clipping) with uniform
  random actions and nothing else;
- bare: the same number of steps of the backend's own step (Brax's env.step, gymnax's step_env,
  Playground's env.step, through envs' raw adapters) on as many environments, with uniform random
  actions: no wrapper, no time limit, no reset (an environment whose episode ended steps on).
It prints env steps per second of each (the median over rounds), training / ceiling,
training / bare and ceiling / bare (what the wrappers cost), each ratio the median over rounds of
that round's ratio.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import tyro

import envs
import runner

runner.configure_jax()  # the scripts' CPU compilation options, before anything compiles

SCRIPTS = ("ppo", "bpo", "bpo_traj")


@dataclass
class Bench:
    """Flags of the tool; the script's flags follow the script name."""

    iterations: int = 2
    """training iterations per timed call (the ceiling steps as many env steps)"""
    repeats: int = 3
    """rounds of timed calls (each program once per round) after compilation; medians are reported"""
    out: str = ""
    """if set, write the figures to this JSON file"""
    training_only: bool = False
    """time the training program alone (no ceiling or bare program: a third of the compilation)"""


def random_actions(spec: envs.ActionSpec, key, n: int):
    if spec.discrete:
        return jax.random.randint(key, (n,), 0, spec.n)
    return jax.random.uniform(key, (n, spec.n), minval=spec.low, maxval=spec.high)


def make_ceiling(env: envs.Env, num_envs: int, num_steps: int):
    """One seed: num_steps steps of num_envs environments with random actions. The carry
    (env_state, key, reward sum, observation sum) goes in and comes out; the sums keep XLA from
    dropping any of the stepping."""

    def run(carry):
        def step(carry, _):
            env_state, key, reward_sum, obs_sum = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action = random_actions(env.action_spec, k_act, num_envs)
            ts = jax.vmap(env.step)(jax.random.split(k_env, num_envs), env_state, action)
            return (ts.state, key, reward_sum + ts.reward.sum(), obs_sum + ts.obs.sum()), None

        return jax.lax.scan(step, carry, None, length=num_steps)[0]

    return run


def make_raw(args) -> envs.RawEnv:
    """The backend's raw environment (no time limit, no reset, no clipping) that args name."""
    env_id = envs.canonical_id(args.env_id)
    if env_id in envs.BRAX_IDS:
        from envs.brax_envs import make_brax

        return make_brax(env_id, args.env_backend)
    if env_id in envs.PLAYGROUND_IDS:
        from envs.playground_envs import make_playground

        return make_playground(env_id, args.env_backend)[0]
    from envs.gymnax_envs import make_gymnax

    return make_gymnax(env_id)[0]


def make_bare(raw: envs.RawEnv, num_envs: int, num_steps: int):
    """One seed: num_steps raw steps of num_envs environments with random actions, ignoring
    `terminated` (no reset). The carry is as make_ceiling's."""

    def run(carry):
        def step(carry, _):
            raw_state, key, reward_sum, obs_sum = carry
            key, k_act, k_env = jax.random.split(key, 3)
            action = random_actions(raw.action_spec, k_act, num_envs)
            obs, raw_state, reward, _ = jax.vmap(raw.step)(jax.random.split(k_env, num_envs), raw_state, action)
            return (raw_state, key, reward_sum + jnp.sum(reward), obs_sum + obs.sum()), None

        return jax.lax.scan(step, carry, None, length=num_steps)[0]

    return run


def training_program(trainer, iterations: int):
    """`iterations` training iterations of every seed (rollout and every update, no evaluation),
    vmapped over seeds in one scan, as the scripts run them; returns the metrics too, so they are
    computed as in a real run."""

    def train(state):
        return jax.lax.scan(lambda s, _: trainer.iteration(s), state, None, length=iterations)

    return jax.vmap(train)


def compile_program(fn, x):
    """(the compiled jax.jit(fn) for arguments like x, its compile seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    return compiled, time.perf_counter() - t0


def time_interleaved(programs: dict, repeats: int) -> dict:
    """programs: name -> (compiled, x, out). `repeats` rounds, each calling every program once in
    turn (x = out(compiled(x))), so a slow moment of a shared machine falls on all alike. Returns
    name -> (the seconds of each round, the last x)."""
    times, xs = {name: [] for name in programs}, {name: x for name, (_, x, _) in programs.items()}
    for _ in range(repeats):
        for name, (compiled, _, out) in programs.items():
            t0 = time.perf_counter()
            xs[name] = jax.block_until_ready(out(compiled(xs[name])))
            times[name].append(time.perf_counter() - t0)
    return {name: (np.asarray(times[name]), xs[name]) for name in programs}


def measure(script: str, script_argv: list[str], bench: Bench) -> dict:
    """Compile and time the three programs; returns the figures."""
    module = importlib.import_module(script)
    args = module.parse_args(script_argv)
    module.validate(args)  # the script's own checks
    env = runner.make_env(args)
    seeds = list(range(args.seed, args.seed + args.num_seeds))
    steps = bench.iterations * args.num_envs * args.num_steps * len(seeds)

    trainer = module.make_train(args, env)
    state = jax.block_until_ready(runner.init_seeds(trainer.init, seeds))

    train_compiled, train_compile = compile_program(training_program(trainer, bench.iterations), state)
    device = jax.devices()[0]
    described = dict(
        script=f"{script}.py",
        argv=script_argv,
        env_id=envs.canonical_id(args.env_id),
        num_seeds=len(seeds),
        num_envs=args.num_envs,
        num_steps=args.num_steps,
        iterations=bench.iterations,
        repeats=bench.repeats,
        env_steps_per_call=steps,
    )

    def machine():  # after the timed calls: the peak memory is theirs
        return dict(
            device=f"{device.platform}: {device.device_kind}",
            peak_device_memory_mb=runner.peak_device_memory_mb(jax.devices()),  # the process's; None on a CPU
            env_reset=envs.default_reset_mode(),
            jax=jax.__version__,
            args=dataclasses.asdict(args),
        )

    if bench.training_only:
        train_times, state = time_interleaved(dict(train=(train_compiled, state, lambda y: y[0])), bench.repeats)[
            "train"
        ]
        return dict(
            **described,
            train_env_steps_per_second=steps / float(np.median(train_times)),
            train_seconds=train_times.tolist(),
            train_compile_seconds=train_compile,
            train_iterations_run=np.asarray(state.iteration).tolist(),
            **machine(),
        )

    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    env_state = jax.vmap(lambda k: jax.vmap(env.reset)(jax.random.split(k, args.num_envs))[1])(keys)
    ceiling_carry = (env_state, keys, jnp.zeros(len(seeds)), jnp.zeros(len(seeds)))
    ceiling, ceiling_compile = compile_program(
        jax.vmap(make_ceiling(env, args.num_envs, args.num_steps * bench.iterations)), ceiling_carry
    )

    raw = make_raw(args)
    raw_state = jax.vmap(lambda k: jax.vmap(raw.reset)(jax.random.split(k, args.num_envs))[1])(keys)
    bare_carry = (raw_state, keys, jnp.zeros(len(seeds)), jnp.zeros(len(seeds)))
    bare, bare_compile = compile_program(
        jax.vmap(make_bare(raw, args.num_envs, args.num_steps * bench.iterations)), bare_carry
    )

    timed = time_interleaved(
        dict(
            train=(train_compiled, state, lambda y: y[0]),
            ceiling=(ceiling, ceiling_carry, lambda y: y),
            bare=(bare, bare_carry, lambda y: y),
        ),
        bench.repeats,
    )
    (train_times, state), (ceiling_times, (_, _, reward_sum, _)), (bare_times, (_, _, bare_reward_sum, _)) = (
        timed["train"],
        timed["ceiling"],
        timed["bare"],
    )
    train_seconds, ceiling_seconds, bare_seconds = (
        float(np.median(t)) for t in (train_times, ceiling_times, bare_times)
    )

    return dict(
        **described,
        train_env_steps_per_second=steps / train_seconds,
        ceiling_env_steps_per_second=steps / ceiling_seconds,
        # the ratios: medians over rounds of each round's ratio (the calls of a round ran together)
        ratio=float(np.median(ceiling_times / train_times)),  # training / ceiling
        bare_env_steps_per_second=steps / bare_seconds,
        bare_ratio=float(np.median(bare_times / train_times)),  # training / bare
        ceiling_bare_ratio=float(np.median(bare_times / ceiling_times)),  # ceiling / bare
        # the seconds of each round's call of each program
        train_seconds=train_times.tolist(),
        ceiling_seconds=ceiling_times.tolist(),
        bare_seconds=bare_times.tolist(),
        train_compile_seconds=train_compile,
        ceiling_compile_seconds=ceiling_compile,
        bare_compile_seconds=bare_compile,
        # Per seed, over all repeats: what the test checks was run.
        train_iterations_run=np.asarray(state.iteration).tolist(),
        ceiling_reward_sum=np.asarray(reward_sum).tolist(),
        bare_reward_sum=np.asarray(bare_reward_sum).tolist(),
        **machine(),
    )


def write_json(path: str, result: dict) -> None:
    """A benchmark's figures as JSON at path (its folder created if needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)


def split_argv(argv: list[str], tool: str, bench_type):
    """A benchmark's command line, `[its flags] SCRIPT.py [the script's flags]`: (the tool's parsed
    flags, the script's name, the script's flags). The script is the first argument naming one of
    the script files (a flag's value, such as `--out ppo`, is not one)."""
    found = [i for i, a in enumerate(argv) if a.endswith(".py") and os.path.basename(a)[:-3] in SCRIPTS]
    if not found:
        raise SystemExit(
            f"{tool}: error: name a script ({', '.join(s + '.py' for s in SCRIPTS)}) "
            f"followed by its flags, e.g. `python {tool} bpo.py --env-id ant`"
        )
    i = found[0]
    bench = tyro.cli(bench_type, args=argv[:i], prog=tool)
    counts = [name for name in ("iterations", "repeats") if hasattr(bench, name)]
    if any(getattr(bench, name) < 1 for name in counts):
        raise SystemExit(f"{tool}: error: {' and '.join('--' + name for name in counts)} must be >= 1")
    return bench, os.path.basename(argv[i])[:-3], argv[i + 1 :]


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    bench, script, script_argv = split_argv(argv, "throughput.py", Bench)
    try:
        result = measure(script, script_argv, bench)
    except ValueError as e:  # the scripts' ConfigError and envs.UnknownEnvError
        raise SystemExit(f"throughput.py: error: {e}")
    head = (
        f"{script}.py {' '.join(script_argv)} on {result['device']}: "
        f"{result['num_seeds']} seeds x {result['num_envs']} envs x {result['num_steps']} steps x "
        f"{result['iterations']} iterations = {result['env_steps_per_call']:,} env steps per call\n"
        f"  training: {result['train_env_steps_per_second']:>12,.0f} env steps/s "
        f"(compile {result['train_compile_seconds']:.1f}s)"
    )
    if bench.training_only:
        print(head, flush=True)
    else:
        print(
            f"{head}\n"
            f"  ceiling:  {result['ceiling_env_steps_per_second']:>12,.0f} env steps/s "
            f"(random actions, wrapped env, compile {result['ceiling_compile_seconds']:.1f}s)\n"
            f"  bare:     {result['bare_env_steps_per_second']:>12,.0f} env steps/s "
            f"(random actions, raw backend step: no wrapper, reset or time limit, "
            f"compile {result['bare_compile_seconds']:.1f}s)\n"
            f"  training / ceiling: {result['ratio']:.3f}   training / bare: {result['bare_ratio']:.3f}   "
            f"ceiling / bare: {result['ceiling_bare_ratio']:.3f}",
            flush=True,
        )
    if bench.out:
        write_json(bench.out, result)
    return result


if __name__ == "__main__":
    main()
