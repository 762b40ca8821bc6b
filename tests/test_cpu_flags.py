"""runner.py's CPU compilation options (README, "Speed"). The flag: YNNPACK for the matmuls only, added to
XLA_FLAGS before any computation, never over the user's own setting of it or with BPO_XLA_DEFAULTS=1.
The random generator's unrolled CPU lowering: the same numbers, without a loop per draw."""

import os
import subprocess
import sys

import jax
import pytest

pytestmark = pytest.mark.cpu_only  # the CPU backend's options (tests/conftest.py skips them elsewhere)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = (
    "import os, runner, jax, jax.numpy as jnp; runner.configure_jax(); jnp.tanh(jnp.ones(3)).block_until_ready(); "
    "print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))"
)


def flags_seen(probe=PROBE, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "BPO_XLA_DEFAULTS")}
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, check=True
    )
    return [line for line in out.stdout.splitlines() if line.startswith("XLA_FLAGS=")][-1][len("XLA_FLAGS=") :]


@pytest.mark.skipif(jax.__version__ != "0.10.2", reason="the flag is set only for the jax it was measured on")
def test_flag_added_kept_beside_others_and_never_over_the_users():
    import runner

    assert flags_seen() == runner.CPU_XLA_FLAG
    assert flags_seen(XLA_FLAGS="--xla_force_host_platform_device_count=2").split() == [
        "--xla_force_host_platform_device_count=2",
        runner.CPU_XLA_FLAG,
    ]
    own = "--xla_cpu_experimental_ynn_fusion_type="
    assert flags_seen(XLA_FLAGS=own) == own
    assert flags_seen(BPO_XLA_DEFAULTS="1") == ""
    # importing runner.py (or training.py) changes nothing: only the scripts' call does
    assert flags_seen(PROBE.replace("runner.configure_jax(); ", "import training; ")) == ""


# A jitted, vmapped program of the draws a rollout makes: key splits, uniform and categorical draws.
DRAWS = (
    "import os, runner, jax, jax.numpy as jnp, numpy as np\n"
    "runner.configure_jax()\n"
    "def draws(seed):\n"
    "    key = jax.random.PRNGKey(seed)\n"
    "    def step(key, _):\n"
    "        key, k1, k2 = jax.random.split(key, 3)\n"
    "        return key, (jax.random.uniform(k1, (4,)), jax.random.categorical(k2, jnp.zeros((4, 3))))\n"
    "    return jax.lax.scan(step, key, None, length=50)\n"
    "f = jax.jit(jax.vmap(draws))\n"
    "out = jax.tree.leaves(f(jnp.arange(3)))\n"
    "hlo = f.lower(jnp.arange(3)).compile().as_text()\n"
    "print('WHILE=' + str(hlo.count(' while(')))\n"
    "np.savez(os.environ['DRAWS_OUT'], *[np.asarray(x) for x in out])\n"
)


@pytest.mark.skipif(jax.__version__ != "0.10.2", reason="the lowering is changed only for the jax it was measured on")
def test_unrolled_threefry_gives_the_same_numbers_without_a_loop_per_draw(tmp_path):
    import numpy as np

    def run(**env):
        base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "BPO_XLA_DEFAULTS")}
        out = tmp_path / f"draws{len(env)}.npz"
        res = subprocess.run(
            [sys.executable, "-c", DRAWS],
            cwd=ROOT,
            env={**base, **env, "DRAWS_OUT": str(out)},
            capture_output=True,
            text=True,
            check=True,
        )
        loops = int([line for line in res.stdout.splitlines() if line.startswith("WHILE=")][-1][len("WHILE=") :])
        with np.load(out) as f:
            return loops, [f[k] for k in sorted(f.files)]

    loops, ours = run()
    default_loops, default = run(BPO_XLA_DEFAULTS="1")
    assert loops == 1  # the scan alone; jax's default adds a while loop per threefry call
    assert default_loops > 1
    assert len(ours) == len(default) == 3
    for a, b in zip(ours, default):
        np.testing.assert_array_equal(a, b)
