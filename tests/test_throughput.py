"""throughput.py: the training, ceiling and bare programs run what they claim, and bad input is one
line."""

import json

import numpy as np
import pytest

import throughput


@pytest.mark.parametrize("script", ["ppo", "bpo"])  # bpo_traj.py runs through the same code (test_traj_copy.py)
def test_measures_training_and_ceiling(script, tmp_path, monkeypatch):
    out = tmp_path / "tp.json"
    # The bare program's raw CartPole, paying 1 per step even after its episode ended (raw
    # CartPole pays 0 then): its reward sum counts the environment steps it took.
    make_raw = throughput.make_raw

    def paying_raw(args):
        raw = make_raw(args)

        def step(key, state, action):
            obs, state, _, terminated = raw.step(key, state, action)
            return obs, state, 1.0, terminated

        return raw._replace(step=step)

    monkeypatch.setattr(throughput, "make_raw", paying_raw)
    argv = [
        "--iterations",
        "2",
        "--repeats",
        "2",
        "--out",
        str(out),
        f"{script}.py",
        "--num-seeds",
        "2",
        "--num-envs",
        "4",
        "--num-steps",
        "16",
        "--minibatch-size",
        "32",
    ]
    if script != "ppo":
        argv += ["--replay-size", "128", "--fqe-minibatch-size", "32", "--mu-minibatch-size", "32"]
    r = throughput.main(argv)
    assert r["env_steps_per_call"] == 2 * 4 * 16 * 2
    # The training program ran its iterations on every seed, once per timed call.
    assert r["train_iterations_run"] == [4, 4]
    # CartPole pays 1 per step: the ceiling stepped every environment of every seed each step,
    # in each of the 2 timed calls.
    assert r["ceiling_reward_sum"] == [2 * 4 * 16 * 2, 2 * 4 * 16 * 2]
    assert r["train_env_steps_per_second"] > 0 and r["ceiling_env_steps_per_second"] > 0
    # timed in rounds of the three programs in turn: the figures are medians over rounds, each ratio
    # the median of the rounds' ratios
    train, ceiling, bare = (np.asarray(r[f"{k}_seconds"]) for k in ("train", "ceiling", "bare"))
    assert len(train) == len(ceiling) == len(bare) == 2
    assert r["train_env_steps_per_second"] == pytest.approx(r["env_steps_per_call"] / np.median(train))
    assert r["ratio"] == pytest.approx(np.median(ceiling / train))
    # The bare program too stepped every environment of every seed each step, in each timed call,
    # with no reset: episodes end (CartPole with random actions lasts about 20 steps) and go on.
    assert r["bare_reward_sum"] == [2 * 4 * 16 * 2, 2 * 4 * 16 * 2]
    assert r["bare_env_steps_per_second"] > 0
    assert r["bare_ratio"] == pytest.approx(np.median(bare / train))
    assert r["ceiling_bare_ratio"] == pytest.approx(np.median(bare / ceiling))
    saved = json.loads(out.read_text())
    assert saved["ratio"] == pytest.approx(r["ratio"]) and saved["bare_ratio"] == pytest.approx(r["bare_ratio"])


def test_ceiling_random_actions_within_bounds():
    import jax
    import jax.numpy as jnp

    import envs

    spec = envs.make("Pendulum-v1").action_spec
    a = throughput.random_actions(spec, jax.random.PRNGKey(0), 1000)
    assert a.shape == (1000, 1) and jnp.all(a >= spec.low) and jnp.all(a <= spec.high)
    assert float(a.std()) > 0.5  # spread over [-2, 2], not a constant
    spec = envs.make("CartPole-v1").action_spec
    a = throughput.random_actions(spec, jax.random.PRNGKey(0), 1000)
    assert set(a.tolist()) == {0, 1}


def test_bare_steps_the_raw_env_without_reset():
    """make_bare steps the backend's raw environment: every environment every step, past its
    episode's end (raw CartPole's time counter reaches the number of steps), with no reset and
    no time limit, and sums the raw rewards (1 per step until the episode ended, then 0)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ppo

    args = ppo.parse_args(["--env-id", "CartPole-v1"])
    raw = throughput.make_raw(args)
    num_envs, num_steps = 3, 60
    _, state = jax.vmap(raw.reset)(jax.random.split(jax.random.PRNGKey(0), num_envs))
    carry = (state, jax.random.PRNGKey(1), jnp.float32(0.0), jnp.float32(0.0))
    state, _, reward_sum, _ = jax.jit(throughput.make_bare(raw, num_envs, num_steps))(carry)
    assert np.asarray(state.time).tolist() == [num_steps] * num_envs
    assert 0 < float(reward_sum) < num_envs * num_steps  # every episode ended, none was reset


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--env-id", "ant"], "name a script"),
        (["--iterations", "0", "ppo.py"], "--iterations and --repeats must be >= 1"),
        (["ppo.py", "--env-id", "NoSuchEnv-v0"], "Valid ids: CartPole-v1"),
        (["bpo.py", "--num-steps", "30"], "minibatch"),
        # a flag's value that names a script is not the script: `--out ppo` then bpo.py's bad flag
        (["--out", "ppo", "bpo.py", "--num-steps", "30"], "minibatch"),
        (["--out", "ppo"], "name a script"),
    ],
)
def test_bad_input_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        throughput.main(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_versus_times_each_version_with_its_own_modules_and_merges_presets(tmp_path):
    import os
    import shutil
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import versus

    import runner

    assert versus.argv_for("--preset cartpole_ppo --num-seeds 2", "ppo_bpo_zero1.0") == [
        "--preset",
        "cartpole_ppo",
        "ppo_bpo_zero1.0",
        "--num-seeds",
        "2",
    ]
    assert versus.argv_for("--num-seeds 2", "--clip-rho 1.2") == ["--num-seeds", "2", "--clip-rho", "1.2"]
    # another checkout: its ppo.py runs with its own runner.py and envs/, this one's stay in place
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(os.path.join(root, "ppo.py"), other)
    shutil.copytree(os.path.join(root, "envs"), other / "envs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(root, "runner.py"), other)
    with open(other / "runner.py", "a") as f:
        f.write("\nOTHER_CHECKOUT = True\n")
    module, _ = versus.load("other", str(other / "ppo.py"))
    assert module.runner.OTHER_CHECKOUT and module.runner.__file__ == str(other / "runner.py")
    assert module.envs.__file__ == str(other / "envs" / "__init__.py")
    assert sys.modules["runner"] is runner and not hasattr(runner, "OTHER_CHECKOUT")
    assert sys.modules["envs"].__file__ == os.path.join(root, "envs", "__init__.py")
    out = tmp_path / "versus.json"
    result = versus.main(
        [
            "a=ppo.py",
            f"b={other / 'ppo.py'}",
            "--flags=--num-seeds 1 --num-envs 2 --num-steps 16 --minibatch-size 32 --num-epochs 1",
            "--iterations",
            "2",
            "--repeats",
            "2",
            "--out",
            str(out),
        ]
    )
    assert list(result) == ["a", "b"] and result["a"]["env_steps_per_call"] == 2 * 2 * 16
    assert len(result["b"]["seconds"]) == 2 and json.loads(out.read_text())["variants"]["b"]["time_vs_first"] > 0


def test_threefry_benchmark_compares_both_lowerings_and_restores_runners(tmp_path):
    import os
    import sys

    import jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import threefry

    import runner

    result = threefry.main(
        [
            "--iterations",
            "1",
            "--repeats",
            "2",
            "ppo.py",
            "--num-seeds",
            "2",
            "--num-envs",
            "2",
            "--num-steps",
            "16",
            "--minibatch-size",
            "32",
            "--num-epochs",
            "1",
        ]
    )
    assert result["bitwise_equal_params"] and result["speedup"] > 0
    assert len(result["rolled"]["seconds"]) == len(result["unrolled"]["seconds"]) == 2
    # afterwards a random draw compiles as runner.py set it up (unrolled: no while loop of its own)
    hlo = jax.jit(lambda k: jax.random.uniform(k, (3,))).lower(jax.random.PRNGKey(0)).compile().as_text()
    assert (" while(" not in hlo) == runner.CPU_THREEFRY_UNROLLED


@pytest.mark.parametrize("script", ["ppo", "bpo"])
def test_phases_times_each_phase_as_the_iteration_runs_it(script, tmp_path, monkeypatch):
    import os
    import sys

    import jax

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import phases

    timed = {}  # the programs phases.py times, and the state (after --fill iterations) they start from
    time_interleaved = phases.time_interleaved
    monkeypatch.setattr(
        phases,
        "time_interleaved",
        lambda programs, repeats: time_interleaved(timed.update(programs) or programs, repeats),
    )
    out = tmp_path / "phases.json"
    argv = [
        "--fill",
        "2",
        "--repeats",
        "2",
        "--out",
        str(out),
        f"{script}.py",
        "--num-seeds",
        "2",
        "--num-envs",
        "2",
        "--num-steps",
        "16",
        "--minibatch-size",
        "16",
        "--num-epochs",
        "1",
    ]
    if script == "bpo":
        argv += [
            "--replay-size",
            "64",
            "--fqe-minibatch-size",
            "16",
            "--mu-minibatch-size",
            "16",
            "--fqe-epochs",
            "1",
            "--mu-epochs",
            "1",
        ]
    r = phases.main(argv)
    names = ["iteration", "rollout"] + (["fit_q", "fit_q_hat", "update_mu"] if script == "bpo" else [])
    assert list(r["median_seconds"]) == names and all(len(r["seconds"][n]) == 2 for n in names)
    # the iteration program carried its state on: 2 iterations of filling, then one per round
    assert r["iterations_run"] == [4, 4]
    assert r["rest_seconds"] == pytest.approx(2 * r["median_seconds"]["iteration"] - sum(r["median_seconds"].values()))
    assert json.loads(out.read_text())["median_seconds"] == r["median_seconds"]
    if script == "bpo":  # each phase program is the trainer's own step, with step 6 fed step 5's rewards
        import bpo
        import runner

        args = bpo.parse_args(argv[argv.index("bpo.py") + 1 :])
        trainer = bpo.make_train(args, runner.make_env(args))
        state = jax.tree.map(lambda x: x[0], timed["iteration"][1])  # seed 0's, its replay buffer filled
        fns = phases.phases(trainer, args.learning_rate)
        got = jax.jit(fns["fit_q_hat"])(state).params["q_hat"]
        own_step = jax.jit(lambda s: trainer.fit_q_hat(s, trainer.variance_rewards(s), args.learning_rate)[0])
        want = own_step(state).params["q_hat"]
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jax.numpy.allclose(a, b)), got, want))
        assert not jax.tree.all(jax.tree.map(lambda a, b: bool(jax.numpy.allclose(a, b)), got, state.params["q_hat"]))
