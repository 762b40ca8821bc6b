"""runner.py's CPU compilation flag: YNNPACK for the matmuls only (README, "Speed"), added to
XLA_FLAGS before any computation, never over the user's own setting of it or with BPO_XLA_DEFAULTS=1."""

import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = ("import os, runner, jax, jax.numpy as jnp; jnp.tanh(jnp.ones(3)).block_until_ready(); "
         "print('XLA_FLAGS=' + os.environ.get('XLA_FLAGS', ''))")


def flags_seen(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "BPO_XLA_DEFAULTS")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.startswith("XLA_FLAGS=")][-1][len("XLA_FLAGS="):]


@pytest.mark.skipif(jax.__version__ != "0.10.2", reason="the flag is set only for the jax it was measured on")
def test_flag_added_kept_beside_others_and_never_over_the_users():
    import runner

    assert flags_seen() == runner.CPU_XLA_FLAG
    assert flags_seen(XLA_FLAGS="--xla_force_host_platform_device_count=2").split() == [
        "--xla_force_host_platform_device_count=2", runner.CPU_XLA_FLAG]
    own = "--xla_cpu_experimental_ynn_fusion_type="
    assert flags_seen(XLA_FLAGS=own) == own
    assert flags_seen(BPO_XLA_DEFAULTS="1") == ""
