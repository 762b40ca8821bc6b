"""Training throughput of ppo.py, bpo.py or bpo_traj.py against stepping the environment alone.

    python throughput.py bpo.py --env-id ant --num-seeds 16
    python throughput.py --iterations 4 ppo.py --env-id ant --num-seeds 16

Flags before the script name are this tool's; everything after it goes to that script's own
parser, so the run is configured exactly as the script would configure it (presets included).
Three programs are compiled (compilation is not timed) and each is timed `--repeats` times:
- training: `--iterations` training iterations of every seed (rollout and every update, no
  evaluation), vmapped over seeds in one scan, as the script runs them;
- ceiling: the same number of environment steps on the same environments (num_seeds x num_envs
  of them in parallel, the same wrappers: time limit, auto-reset, action clipping) with uniform
  random actions and nothing else;
- bare: the same number of steps of the backend's own step (Brax's env.step, gymnax's step_env,
  Playground's env.step, through envs' raw adapters) on as many environments, with uniform random
  actions: no wrapper, no time limit, no reset (an environment whose episode ended steps on).
It prints env steps per second of each (the median over repeats), training / ceiling,
training / bare and ceiling / bare (what the wrappers cost).
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

SCRIPTS = ("ppo", "bpo", "bpo_traj")


@dataclass
class Bench:
    """Flags of the tool; the script's flags follow the script name."""

    iterations: int = 2
    """training iterations per timed call (the ceiling steps as many env steps)"""
    repeats: int = 3
    """timed calls of each program after compilation; the median is reported"""
    out: str = ""
    """if set, write the figures to this JSON file"""


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


def compile_and_time(fn, x, repeats: int, out=lambda y: y):
    """(compile seconds, median wall time of x = out(fn(x)) over repeats calls, last x)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    compile_seconds = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x = jax.block_until_ready(out(compiled(x)))
        times.append(time.perf_counter() - t0)
    return compile_seconds, float(np.median(times)), x


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

    def train(state):  # returns the metrics too, so they are computed as in a real run
        return jax.lax.scan(lambda s, _: trainer.iteration(s), state, None, length=bench.iterations)

    train_compile, train_seconds, state = compile_and_time(jax.vmap(train), state, bench.repeats, lambda y: y[0])

    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    env_state = jax.vmap(lambda k: jax.vmap(env.reset)(jax.random.split(k, args.num_envs))[1])(keys)
    carry = (env_state, keys, jnp.zeros(len(seeds)), jnp.zeros(len(seeds)))
    ceiling = jax.vmap(make_ceiling(env, args.num_envs, args.num_steps * bench.iterations))
    ceiling_compile, ceiling_seconds, (_, _, reward_sum, _) = compile_and_time(ceiling, carry, bench.repeats)

    raw = make_raw(args)
    raw_state = jax.vmap(lambda k: jax.vmap(raw.reset)(jax.random.split(k, args.num_envs))[1])(keys)
    carry = (raw_state, keys, jnp.zeros(len(seeds)), jnp.zeros(len(seeds)))
    bare = jax.vmap(make_bare(raw, args.num_envs, args.num_steps * bench.iterations))
    bare_compile, bare_seconds, (_, _, bare_reward_sum, _) = compile_and_time(bare, carry, bench.repeats)

    device = jax.devices()[0]
    return dict(
        script=f"{script}.py", argv=script_argv, env_id=envs.canonical_id(args.env_id), num_seeds=len(seeds),
        num_envs=args.num_envs, num_steps=args.num_steps, iterations=bench.iterations,
        repeats=bench.repeats, env_steps_per_call=steps,
        train_env_steps_per_second=steps / train_seconds,
        ceiling_env_steps_per_second=steps / ceiling_seconds,
        ratio=ceiling_seconds / train_seconds,
        bare_env_steps_per_second=steps / bare_seconds,
        bare_ratio=bare_seconds / train_seconds,  # training / bare
        ceiling_bare_ratio=bare_seconds / ceiling_seconds,  # ceiling / bare
        train_compile_seconds=train_compile, ceiling_compile_seconds=ceiling_compile,
        bare_compile_seconds=bare_compile,
        # Per seed, over all repeats: what the test checks was run.
        train_iterations_run=np.asarray(state.iteration).tolist(),
        ceiling_reward_sum=np.asarray(reward_sum).tolist(),
        bare_reward_sum=np.asarray(bare_reward_sum).tolist(),
        device=f"{device.platform}: {device.device_kind}", jax=jax.__version__,
        args=dataclasses.asdict(args),
    )


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The script is the first argument naming one of the script files (a flag's value, such as
    # `--out ppo`, is not one).
    found = [i for i, a in enumerate(argv) if a.endswith(".py") and os.path.basename(a)[:-3] in SCRIPTS]
    if not found:
        raise SystemExit(f"throughput.py: error: name a script ({', '.join(s + '.py' for s in SCRIPTS)}) "
                         "followed by its flags, e.g. `python throughput.py bpo.py --env-id ant`")
    i = found[0]
    bench = tyro.cli(Bench, args=argv[:i], prog="throughput.py")
    if bench.iterations < 1 or bench.repeats < 1:
        raise SystemExit("throughput.py: error: --iterations and --repeats must be >= 1")
    script = os.path.basename(argv[i])[:-3]
    try:
        result = measure(script, argv[i + 1:], bench)
    except ValueError as e:  # the scripts' ConfigError and envs.UnknownEnvError
        raise SystemExit(f"throughput.py: error: {e}")
    print(f"{script}.py {' '.join(argv[i + 1:])} on {result['device']}: "
          f"{result['num_seeds']} seeds x {result['num_envs']} envs x {result['num_steps']} steps x "
          f"{result['iterations']} iterations = {result['env_steps_per_call']:,} env steps per call\n"
          f"  training: {result['train_env_steps_per_second']:>12,.0f} env steps/s "
          f"(compile {result['train_compile_seconds']:.1f}s)\n"
          f"  ceiling:  {result['ceiling_env_steps_per_second']:>12,.0f} env steps/s "
          f"(random actions, wrapped env, compile {result['ceiling_compile_seconds']:.1f}s)\n"
          f"  bare:     {result['bare_env_steps_per_second']:>12,.0f} env steps/s "
          f"(random actions, raw backend step: no wrapper, reset or time limit, "
          f"compile {result['bare_compile_seconds']:.1f}s)\n"
          f"  training / ceiling: {result['ratio']:.3f}   training / bare: {result['bare_ratio']:.3f}   "
          f"ceiling / bare: {result['ceiling_bare_ratio']:.3f}", flush=True)
    if bench.out:
        os.makedirs(os.path.dirname(os.path.abspath(bench.out)), exist_ok=True)
        with open(bench.out, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
