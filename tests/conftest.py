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
