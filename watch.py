"""Watching a trained policy: its actions, episodes recorded step by step, frames and videos.

Shared by evaluate.py (re-evaluate a run, `--video`) and runner.py (`--capture-video`):

- `policy`: observation -> action of a run's pi or mu (BPO's behaviour policy), the mode of its
  distribution (what every evaluation uses) or a sample, with the run's frozen observation
  statistics; built from the networks of the script that trained it;
- `record`: the first episodes of an evaluation, with the keys of `training.evaluate` (so its
  episode i is the evaluation's episode i), keeping each step's state for rendering;
- `renderer`: one frame per recorded step. MuJoCo-based environments (Brax on MJX, Playground)
  through `mujoco.Renderer` (headless with `MUJOCO_GL=egl`, set when no display is; `MUJOCO_GL=osmesa`
  or `glfw` choose another backend), gymnax's classic control through gymnax's adapter of
  gymnasium's renderers (pygame), MinAtar as gymnax's visualiser colours it;
- `episode_frames` and `write_video`: the frames with the episode, step and return so far in the
  top-left corner, written as mp4 (imageio with imageio-ffmpeg's bundled ffmpeg) or, where those
  are not installed, as GIF (Pillow).

Nothing here changes a number the evaluation reports: recording is a separate program.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import envs

# MuJoCo picks its OpenGL backend when it is first imported: with no display, Mesa's software EGL
# (headless). MUJOCO_GL=osmesa, or glfw with a display, chooses another; import this module first.
if not os.environ.get("DISPLAY") and not os.environ.get("MUJOCO_GL"):
    os.environ["MUJOCO_GL"] = "egl"

FRAME_SIZE = (480, 480)  # height, width of MuJoCo frames
MAX_FPS = 50  # frames per second of a video, at most (faster simulations play slowed down)


class NotRenderable(ValueError):
    """An environment with no renderer here (one line, before anything is compiled)."""


# ----------------------------------------------------------------------------------------------
# The policy of a run
# ----------------------------------------------------------------------------------------------
def policy(module, trainer, args, which: str = "pi", stochastic: bool = False) -> Callable:
    """(params, obs_rms) -> act, the policy `which` ("pi" or "mu") of a run of `module` (ppo, bpo
    or bpo_traj), whose `make_train` gave `trainer`: act(obs) is the mode of its distribution, as the
    run's evaluations act; with `stochastic`, act(obs, key) samples it. Observations are normalised
    with the run's statistics where it normalised them (frozen, as in evaluation), then go through
    the run's torso (torsos.py) to the actor."""
    actor, torso = trainer.actor, trainer.torso

    def make(params, obs_rms):
        def dist(obs):
            obs = envs.normalize_obs(envs.RunningMeanStd(**obs_rms), obs) if args.normalize_obs else obs
            return actor.apply(params[which], torso.features(params, obs))

        if stochastic:
            return lambda obs, key: module.sample(actor.action_spec, dist(obs), key)
        return lambda obs: module.mode(actor.action_spec, dist(obs))

    return make


# ----------------------------------------------------------------------------------------------
# Recording episodes
# ----------------------------------------------------------------------------------------------
class Recording(NamedTuple):
    """[max_episode_steps, episodes] arrays of `record`; step t of episode i is real where
    active[t, i]."""

    states: Any  # the rendered part of the state each action was taken in
    active: np.ndarray  # the episode had not ended before this step
    returns: np.ndarray  # the return so far, this step's reward included
    episode_returns: np.ndarray  # [episodes]


def record(env: envs.Env, act: Callable, num_episodes: int, key, extract: Callable, stochastic=False) -> Recording:
    """num_episodes episodes of act, drawn with the keys `training.evaluate` draws with for the
    same key (jax's splits do not depend on how many keys are split, so episode i is the
    evaluation's episode i), as a scan of the time limit's steps that keeps extract(state) of every
    step. Traceable: jit it."""
    k_reset, k_step = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(k_reset, num_episodes))

    def body(carry, _):
        obs, env_state, done, ret, key = carry
        key, k = jax.random.split(key)
        action = act(obs, jax.random.fold_in(k, 1)) if stochastic else act(obs)
        ts = jax.vmap(env.step)(jax.random.split(k, num_episodes), env_state, action)
        ret = ret + jnp.where(done, 0.0, ts.reward)
        seen = (jax.vmap(extract)(env_state.inner), ~done, ret)
        return (ts.obs, ts.state, done | ts.terminated | ts.truncated, ret, key), seen

    zeros = jnp.zeros(num_episodes)
    carry = (obs, env_state, zeros.astype(bool), zeros, k_step)
    carry, (states, active, returns) = jax.lax.scan(body, carry, None, env.max_episode_steps)
    return Recording(states, active, returns, carry[3])


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------
class Renderer(NamedTuple):
    extract: Callable  # (traced) an environment's inner state -> what a frame needs
    render: Callable  # (host) that, for one step, as numpy -> uint8 [height, width, 3]
    fps: int


GYM_CLASSIC = ("Acrobot-v1", "CartPole-v1", "Pendulum-v1", "MountainCar-v0", "MountainCarContinuous-v0")


def check_renderable(env_id: str) -> None:
    """A one-line NotRenderable for an environment with no renderer, before anything is built."""
    env_id = envs.canonical_id(env_id)
    if envs.is_brax(env_id) or envs.is_playground(env_id) or env_id in GYM_CLASSIC or env_id.endswith("-MinAtar"):
        return
    raise NotRenderable(
        f"{env_id} cannot be rendered: videos cover Brax and Playground (MuJoCo), gymnax's classic "
        f"control ({', '.join(GYM_CLASSIC)}) and MinAtar"
    )


def renderer(env_id: str, backend: str = "mjx", size: tuple[int, int] = FRAME_SIZE) -> Renderer:
    """The renderer of env_id (check_renderable first)."""
    env_id = envs.canonical_id(env_id)
    check_renderable(env_id)
    if envs.is_brax(env_id):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from brax import envs as brax_envs

            env = brax_envs.get_environment(env_id, backend=backend)
        return _mujoco_renderer(env.sys.mj_model, lambda s: s.pipeline_state.q, float(env.dt), size)
    if envs.is_playground(env_id):
        from mujoco_playground import registry

        config = registry.get_default_config(env_id)
        config.impl = "jax"
        env = registry.load(env_id, config=config)
        return _mujoco_renderer(env.mj_model, lambda s: s.data.qpos, float(env.dt), size)
    import gymnax

    gym_env, params = gymnax.make(env_id)
    if env_id in GYM_CLASSIC:
        return _gym_renderer(env_id, params)
    return _minatar_renderer(gym_env, params)


def _frame_rate(dt: float) -> int:
    return int(min(MAX_FPS, max(1, round(1.0 / dt))))


def _mujoco_renderer(model, qpos: Callable, dt: float, size) -> Renderer:
    """MuJoCo's own renderer: qpos into MjData, mj_forward, the model's tracking camera ("track",
    else its first camera, else the free camera)."""
    import mujoco

    height = min(size[0], int(model.vis.global_.offheight))
    width = min(size[1], int(model.vis.global_.offwidth))
    state: dict = {}

    def render(q):
        if not state:  # the GL context, made on first use
            try:
                state.update(renderer=mujoco.Renderer(model, height, width), data=mujoco.MjData(model))
                atexit.register(state["renderer"].close)  # before the interpreter's teardown
            except mujoco.FatalError as e:
                raise NotRenderable(
                    f"MuJoCo could not render with MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r} ({e}); set "
                    "MUJOCO_GL=egl (headless) or osmesa before starting"
                ) from None
            names = [model.camera(i).name for i in range(model.ncam)]
            state["camera"] = names.index("track") if "track" in names else (0 if model.ncam else -1)
        data = state["data"]
        data.qpos[:] = q
        mujoco.mj_forward(model, data)
        state["renderer"].update_scene(data, camera=state["camera"])
        return state["renderer"].render().copy()

    return Renderer(qpos, render, _frame_rate(dt))


def _gym_renderer(env_id: str, params) -> Renderer:
    """gymnax's adapter of gymnasium's classic-control renderers (gymnax.visualize.vis_gym), with
    one gymnasium environment for every frame."""
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame: no sound card needed
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gymnasium
    from gymnax.visualize import vis_gym

    made: dict = {}

    def render(state):
        if not made:
            made["env"] = gymnasium.make(env_id, render_mode="rgb_array")
            made["env"].reset(seed=0)
            vis_gym.set_gym_params(made["env"].unwrapped, env_id, params)
        unwrapped = made["env"].unwrapped
        unwrapped.state = vis_gym.get_gym_state(state, env_id)
        if env_id == "Pendulum-v1":
            unwrapped.last_u = np.asarray(state.last_u, dtype=np.float64)
        return np.asarray(made["env"].render())

    dt = float(getattr(params, "tau", getattr(params, "dt", 0.05)))
    return Renderer(lambda s: s, render, _frame_rate(dt))


def _minatar_renderer(env, params, scale: int = 40) -> Renderer:
    """MinAtar as gymnax's visualiser (gymnax.visualize.vis_minatar) draws it: each cell the colour
    of its highest channel in seaborn's cubehelix palette, black when empty; cells scale x scale."""
    import seaborn

    n_channels = env.obs_shape[-1]
    palette = np.array([(0.0, 0.0, 0.0), *seaborn.color_palette("cubehelix", n_channels)])
    palette = (palette * 255).astype(np.uint8)

    def render(obs):
        cell = np.amax(obs * np.arange(1, n_channels + 1), -1).astype(int)
        return np.kron(palette[cell], np.ones((scale, scale, 1), np.uint8))

    return Renderer(lambda s: env.get_obs(s, params), render, 10)


# ----------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------
def episode_frames(rec: Recording, episodes: int, render: Callable, label: str = "") -> list[np.ndarray]:
    """The frames of the first `episodes` recorded episodes, one per step (the state each action
    was taken in), with the episode, the step and the return so far written in the top-left corner."""
    frames = []
    for i in range(episodes):
        for t in np.flatnonzero(rec.active[:, i]):
            state = jax.tree.map(lambda x: x[t, i], rec.states)
            caption = f"{label}episode {i + 1}  step {t + 1}  return {rec.returns[t, i]:.1f}"
            frames.append(_caption(render(state), caption))
    return frames


def _caption(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(np.asarray(frame, np.uint8))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, image.height // 30))
    left, top, right, bottom = draw.textbbox((6, 4), text, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def video_format() -> str:
    """ "mp4" where imageio and imageio-ffmpeg are installed, else "gif"."""
    import importlib.util

    return "mp4" if importlib.util.find_spec("imageio") and importlib.util.find_spec("imageio_ffmpeg") else "gif"


def write_video(path_stem: str, frames: list[np.ndarray], fps: int) -> str:
    """path_stem + ".mp4" (H.264 through imageio-ffmpeg's bundled ffmpeg) or + ".gif"; returns the path."""
    path = f"{path_stem}.{video_format()}"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".mp4"):
        import warnings

        import imageio.v2 as imageio

        frames = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # H.264: even sizes
        with warnings.catch_warnings():  # jax warns of any fork; ffmpeg is a separate program
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    else:
        gif_bytes(frames, fps, path)
    return path


def gif_bytes(frames: list[np.ndarray], fps: int, path: str | None = None) -> bytes:
    """An animated GIF of the frames (Pillow), written to path if given; returns its bytes."""
    import io

    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=1000 / fps, loop=0)
    if path:
        with open(path, "wb") as f:
            f.write(buffer.getvalue())
    return buffer.getvalue()


def log_video(writer, tag: str, frames: list[np.ndarray], fps: int, step: int, scale: int = 2) -> None:
    """The frames, every `scale`-th pixel, as an animated GIF in TensorBoard's images (what
    tensorboardX's add_video writes, without moviepy)."""
    from tensorboardX.proto.summary_pb2 import Summary

    small = [np.ascontiguousarray(f[::scale, ::scale]) for f in frames]
    height, width = small[0].shape[:2]
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=gif_bytes(small, fps))
    writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
    writer.flush()
