import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Many tests compile the same training program more than once (a run and its resumed run, the same
# command twice, subprocesses): XLA's executables are cached on disk, in the temp folder (kept between
# sessions), keyed by the program, the compile options and the jax version, so an identical program
# is compiled once.
# Set in the environment, before jax reads its configuration, so subprocesses share the cache.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"bpo-tests-jax-cache-{os.getuid()}")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# MuJoCo chooses its OpenGL backend when first imported: headless (Mesa's EGL) unless a display is set,
# whichever test imports it first (watch.py sets the same for the scripts).
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")

# The suite runs on the CPU, also on a machine with a GPU: its figures and its CPU-only checks
# (tests/test_cpu_flags.py) are the CPU's, and jax would otherwise take 75% of the GPU's memory per
# process, so `pytest -n 2` there would fail. JAX_PLATFORMS=cuda (or tpu) runs it on the
# accelerator instead (preallocation off, so several workers can share it); the CPU-only tests
# then skip.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def pytest_addoption(parser):
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="also run the tests marked slow (docs/tests.md)"
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: compiles a large program (MJX ant); skipped unless --run-slow")
    config.addinivalue_line("markers", "cpu_only: checks of the CPU backend; skipped on any other platform")


def pytest_collection_modifyitems(config, items):
    import pytest

    run_slow = config.getoption("--run-slow") or os.environ.get("BPO_SLOW_TESTS") == "1"
    on_cpu = os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] == "cpu"
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with --run-slow or BPO_SLOW_TESTS=1"))
        if "cpu_only" in item.keywords and not on_cpu:
            item.add_marker(pytest.mark.skip(reason="checks the CPU backend; this run is on another platform"))
