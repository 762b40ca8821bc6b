"""Memory and time of bpo_traj.trajectory_clipped_returns, blocked (as bpo_traj.py computes it) and
unchunked (the T x T x E formula it replaced, tests/test_bpo_traj_chunks.py's `unchunked`),
vmapped over seeds.

    python benchmarks/traj_memory.py                       # 16 seeds; T=512 E=16 and T=2048 E=1
    python benchmarks/traj_memory.py --num-seeds 4 --shapes 2048x16 --repeats 3

Memory is XLA's own account of each compiled program (`compiled.memory_analysis()`): temp is the
scratch buffer the program needs beyond its arguments and outputs (the intermediate arrays live
there), total = arguments + outputs + temp, what running it allocates. (XLA's
`peak_memory_in_bytes` is not used: on CPU it counts arguments and outputs only.) Both are
deterministic for a given JAX/XLA version and backend (they do
not depend on load). Time is the median wall time of one call over --repeats calls after
compilation, and does depend on load.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from test_bpo_traj_chunks import unchunked  # noqa: E402

import bpo_traj  # noqa: E402

GAMMA, LAM, CLIP_RHO, CLIP_C = 0.99, 0.95, 1.0, 1.0


def inputs(num_seeds: int, T: int, E: int):
    """[seeds, ...] rewards, values, dones (episodes of about 50 steps), last value, log pi, log mu
    (ratios from about 0.1 to 10), float32, from a fixed seed."""
    rng = np.random.default_rng(0)
    normal = lambda *shape, scale=1.0: rng.normal(scale=scale, size=(num_seeds, *shape))
    log_mu = normal(T, E)
    d = (rng.random((num_seeds, T, E)) < 0.02).astype(np.float64)
    x = (normal(T, E), normal(T, E), d, normal(E), log_mu + normal(T, E, scale=0.7), log_mu)
    return tuple(jnp.asarray(a, jnp.float32) for a in x)


def measure(fn, args, repeats: int) -> dict:
    batched = jax.jit(jax.vmap(lambda *a: fn(*a, GAMMA, LAM, CLIP_RHO, CLIP_C)))
    compiled = batched.lower(*args).compile()
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return dict(
        temp=mem.temp_size_in_bytes,
        args=mem.argument_size_in_bytes,
        out=mem.output_size_in_bytes,
        total=mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes,
        seconds=float(np.median(times)),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-seeds", type=int, default=16)
    p.add_argument("--shapes", nargs="+", default=["512x16", "2048x1"], help="TxE, T steps x E envs")
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    mb = lambda b: f"{b / 2**20:,.1f} MiB"
    device = jax.devices()[0]
    print(f"{a.num_seeds} seeds vmapped; {device.platform}: {device.device_kind}; jax {jax.__version__}")
    for shape in a.shapes:
        T, E = map(int, shape.split("x"))
        args = inputs(a.num_seeds, T, E)
        chunk = max(1, min(T, 2**16 // (T * E)))
        for name, fn in (("unchunked", unchunked), ("blocked", bpo_traj.trajectory_clipped_returns)):
            r = measure(fn, args, a.repeats)
            print(
                f"  T={T:>5} E={E:>3} {name:>9}{f' ({chunk} rows/block)' if name == 'blocked' else '':>17}: "
                f"temp {mb(r['temp']):>11}  total {mb(r['total']):>11}  "
                f"(arguments {mb(r['args'])}, outputs {mb(r['out'])})  {r['seconds'] * 1e3:9.1f} ms/call",
                flush=True,
            )


if __name__ == "__main__":
    main()
