"""evaluate.py and watch.py: a finished run evaluated again to summary.json's numbers, mu against pi,
videos, a headless MuJoCo frame, and bad input. One tiny CartPole run per script, shared."""

import json
import os
import shutil

import imageio.v2 as imageio
import jax
import numpy as np
import pytest

import bpo
import evaluate
import ppo
import watch

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ffmpeg, a program of its own

TINY = dict(
    env_id="CartPole-v1",
    total_timesteps=1024,
    num_envs=4,
    num_steps=32,
    minibatch_size=64,
    num_epochs=1,
    eval_every=1024,
    eval_episodes=3,
    num_seeds=2,
)


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ppo") / "run")
    ppo.run(ppo.Args(**TINY, output_dir=out, capture_video=True, capture_video_every=1, tensorboard=True))
    return out


@pytest.fixture(scope="module")
def bpo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bpo") / "run")
    bpo.run(bpo.Args(**TINY, replay_size=256, fqe_epochs=1, mu_epochs=2, output_dir=out, checkpoint_every=0))
    return out


def run_eval(run, tmp_path, *flags):
    return evaluate.evaluate(evaluate.parse([run, "--output-dir", str(tmp_path), *flags]))


def final_returns(run):
    return json.load(open(os.path.join(run, "summary.json")))["final_eval_return"]


def test_ppo_reproduces_the_final_evaluation(ppo_run, tmp_path):
    """The run's last evaluation keys (params.msgpack) and --eval-episodes: summary.json exactly;
    more episodes begin with the same ones; the latest checkpoint holds the same parameters."""
    result = run_eval(ppo_run, tmp_path)
    assert [r["mean"] for r in result["rows"]] == final_returns(ppo_run)
    assert json.load(open(tmp_path / "eval.json")) == json.loads(json.dumps(result))
    longer = run_eval(ppo_run, tmp_path, "--episodes", "7", "--seeds", "1")
    assert longer["rows"][0]["returns"][:3] == result["rows"][1]["returns"]
    assert [r["mean"] for r in run_eval(ppo_run, tmp_path, "--checkpoint")["rows"]] == final_returns(ppo_run)
    fresh = run_eval(ppo_run, tmp_path, "--eval-seed", "11")
    assert fresh["keys"].startswith("fresh keys")


def test_a_sweep_folder_is_evaluated_per_member(tmp_path):
    """A --sweep run: every member's seeds in one program, each row summary.json's value exactly."""
    out = str(tmp_path / "sweep")
    ppo.run(ppo.Args(**TINY, sweep=("ent_coef=0,0.01",), output_dir=out, checkpoint_every=0))
    result = run_eval(out, tmp_path)
    rows = [(r["member"], r["seed"], r["mean"]) for r in result["rows"]]
    expected = [(k, s, m) for k, means in enumerate(final_returns(out)) for s, m in zip((0, 1), means)]
    assert rows == expected


def test_bpo_pi_reproduces_and_mu_differs(bpo_run, tmp_path):
    assert [r["mean"] for r in run_eval(bpo_run, tmp_path)["rows"]] == final_returns(bpo_run)
    saved = evaluate.load(evaluate.parse([bpo_run]))
    differs = [np.any(a != b) for a, b in zip(jax.tree.leaves(saved.params["pi"]), jax.tree.leaves(saved.params["mu"]))]
    assert any(differs)  # mu was trained away from pi
    pi = run_eval(bpo_run, tmp_path, "--stochastic", "--episodes", "8")
    mu = run_eval(bpo_run, tmp_path, "--stochastic", "--episodes", "8", "--policy", "mu")
    assert mu["policy"] == "mu"
    assert [r["returns"] for r in mu["rows"]] != [r["returns"] for r in pi["rows"]]


def test_video_frames(ppo_run, tmp_path):
    """One frame per step of the first K episodes (CartPole's return is its length), frames that
    differ, and the same episodes as the evaluation's first K; the numbers are unchanged."""
    result = run_eval(ppo_run, tmp_path, "--video", "--video-episodes", "2", "--seeds", "1")
    (path,) = result["videos"]
    assert path.endswith(".mp4") and os.path.dirname(path) == str(tmp_path / "videos")
    reader = imageio.get_reader(path)
    frames = [f for f in reader]
    reader.close()
    assert len(frames) == sum(result["rows"][0]["returns"][:2])
    assert result["rows"][0]["mean"] == final_returns(ppo_run)[1]
    assert np.abs(frames[0].astype(int) - frames[len(frames) // 2]).mean() > 0.1


def test_capture_video(ppo_run, tmp_path):
    """--capture-video (with --capture-video-every 1, one interval): one video, of the first seed's
    first episode of the last evaluation, named by env steps, and a GIF in TensorBoard."""
    from tensorboardX.proto.event_pb2 import Event

    assert os.listdir(os.path.join(ppo_run, "videos")) == ["env_steps_1024.mp4"]
    reader = imageio.get_reader(os.path.join(ppo_run, "videos", "env_steps_1024.mp4"))
    first = run_eval(ppo_run, tmp_path, "--seeds", "0")["rows"][0]["returns"][0]
    assert reader.count_frames() == first
    reader.close()
    images = []
    for name in os.listdir(os.path.join(ppo_run, "tb")):
        data = open(os.path.join(ppo_run, "tb", name), "rb").read()
        while data:  # TFRecords: length (8 bytes), its crc (4), the event, its crc (4)
            n = int.from_bytes(data[:8], "little")
            event = Event.FromString(data[12 : 12 + n])
            data = data[16 + n :]
            images += [(event.step, v.image) for v in event.summary.value if v.tag == "video/seed_0"]
    ((step, image),) = images
    assert step == 1024 and image.encoded_image_string[:3] == b"GIF"


def test_gif_without_ffmpeg(monkeypatch, tmp_path):
    monkeypatch.setattr(watch, "video_format", lambda: "gif")
    frames = [np.full((8, 10, 3), i * 40, np.uint8) for i in range(5)]
    path = watch.write_video(str(tmp_path / "v"), frames, 10)
    assert path.endswith(".gif") and len(imageio.mimread(path)) == 5


def test_hopper_frame_renders_headless():
    """A Brax (MJX) hopper frame, rendered by MuJoCo on the CPU (MUJOCO_GL=egl), no training."""
    render = watch.renderer("hopper", size=(120, 160))
    import mujoco  # noqa: F401  (imported by the renderer)
    from brax import envs as brax_envs

    q0 = np.asarray(brax_envs.get_environment("hopper").sys.mj_model.qpos0)
    a, b = render.render(q0), render.render(q0 + np.r_[0.0, 0.0, 0.5, np.zeros(q0.size - 3)])
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8 and a.std() > 5
    assert np.abs(a.astype(int) - b).mean() > 0.5


def test_playground_frame_renders_headless():
    """A MuJoCo Playground frame (CartpoleBalance), rendered by MuJoCo on the CPU, no training."""
    pytest.importorskip("mujoco_playground")
    from mujoco_playground import registry

    render = watch.renderer("CartpoleBalance", size=(120, 160))
    q0 = np.asarray(registry.load("CartpoleBalance").mj_model.qpos0)
    a, b = render.render(q0), render.render(q0 + 0.5)
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8 and a.std() > 5
    assert np.abs(a.astype(int) - b).mean() > 0.5


def test_minatar_frames_render():
    """A MinAtar frame (Breakout), drawn as gymnax's visualiser colours it: cells of 40 x 40 pixels,
    the ball and paddle in colour on black, and a step later a different frame."""
    import gymnax

    render = watch.renderer("Breakout-MinAtar")
    env, params = gymnax.make("Breakout-MinAtar")
    _, state = env.reset(jax.random.PRNGKey(0), params)
    frames = [render.render(np.asarray(render.extract(state)))]
    for i in range(3):
        _, state, *_ = env.step(jax.random.PRNGKey(i), state, 1, params)
        frames.append(render.render(np.asarray(render.extract(state))))
    assert frames[0].shape == (400, 400, 3) and frames[0].dtype == np.uint8
    assert 0 < (frames[0].sum(-1) > 0).mean() < 0.5  # something drawn, mostly black
    assert any(np.abs(a.astype(int) - frames[0]).sum() > 0 for a in frames[1:])


def test_bad_input_is_one_line_before_compiling(ppo_run, tmp_path, monkeypatch):
    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled before the error")

    monkeypatch.setattr(jax, "jit", no_compiling)
    no_params = tmp_path / "no_params"
    no_params.mkdir()
    shutil.copy(os.path.join(ppo_run, "config.json"), no_params)
    unrenderable = tmp_path / "bsuite"
    shutil.copytree(ppo_run, unrenderable)
    config = json.load(open(unrenderable / "config.json"))
    config["args"]["env_id"] = config["env_id"] = "Catch-bsuite"
    json.dump(config, open(unrenderable / "config.json", "w"))
    cases = [
        ([str(tmp_path)], "not the output folder of a run"),
        ([str(tmp_path / "missing")], "not a folder"),
        ([str(no_params)], "holds no parameters"),
        ([str(no_params), "--checkpoint"], "has no checkpoint"),
        ([ppo_run, "--seeds", "0,7"], "trained seeds 0, 1, not 7"),
        ([ppo_run, "--policy", "mu"], "a ppo.py run has no behaviour policy"),
        ([str(unrenderable), "--video"], "Catch-bsuite cannot be rendered"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as e:
            evaluate.main(argv)
        assert "\n" not in str(e.value)
