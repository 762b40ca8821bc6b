"""`bpo.py --no-bpo` and `bpo_traj.py --no-bpo` train exactly as ppo.py, and every learning
rate reaches zero at the end of training (not early, as in the reference)."""

import csv
import dataclasses

import jax
import numpy as np
import pytest

import bpo
import bpo_traj
import envs
import ppo


def read_rows(out):
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


# Short runs: float rounding differs between the two programs (XLA fuses them differently) and
# PPO amplifies it over many updates, so "equal" is checked over the first 4 iterations.
SHORT = dict(
    num_seeds=2,
    total_timesteps=1024,
    num_envs=4,
    num_steps=64,
    minibatch_size=64,
    num_epochs=2,
    eval_every=256,
    eval_episodes=2,
)
CASES = {
    "discrete": dict(env_id="CartPole-v1"),
    # continuous, with every PPO option that --no-bpo must carry over to pi's update
    "continuous": dict(
        env_id="Pendulum-v1",
        ent_coef=0.01,
        clip_vloss=True,
        normalize_obs=True,
        normalize_reward=True,
        anneal_clip=True,
        kernel_init="orthogonal",
    ),
}


@pytest.fixture(scope="module")
def ppo_runs(tmp_path_factory):
    """ppo.py's metrics for each case, run once."""
    rows = {}
    for case, settings in CASES.items():
        out = tmp_path_factory.mktemp(case)
        ppo.run(ppo.Args(**SHORT, **settings, output_dir=str(out)))
        rows[case] = read_rows(out)
    return rows


@pytest.mark.parametrize("module", [bpo, bpo_traj])
@pytest.mark.parametrize("case", list(CASES))
def test_no_bpo_trains_as_ppo(module, case, ppo_runs, tmp_path):
    shared = {f.name: getattr(ppo.Args(**SHORT, **CASES[case]), f.name) for f in dataclasses.fields(ppo.Args)}
    bpo_args = module.Args(**{**shared, "output_dir": str(tmp_path / "bpo")}, no_bpo=True, replay_size=256)
    module.run(bpo_args)
    a, b = ppo_runs[case], read_rows(tmp_path / "bpo")
    assert len(a) == len(b) == 8
    for row_p, row_b in zip(a, b):
        for k in ppo.METRIC_COLUMNS:
            np.testing.assert_allclose(
                float(row_b[k]), float(row_p[k]), rtol=2e-3, atol=1e-5, err_msg=f"{case} {k} at {row_p['env_steps']}"
            )
        # mu was pi at every rollout: every ratio is 1, and the BPO phases did not run
        assert float(row_b["ratio_max"]) == 1.0 and float(row_b["kl_mu_pi"]) == 0.0
        assert np.isnan(float(row_b["q_loss"])) and np.isnan(float(row_b["mu_loss"]))
    if module is bpo_traj or case == "continuous":
        return
    # BPO proper does differ from PPO on the same settings (the comparison can tell)
    module.run(dataclasses.replace(bpo_args, no_bpo=False, output_dir=str(tmp_path / "bpo_on")))
    on = read_rows(tmp_path / "bpo_on")
    assert any(abs(float(r["pg_loss"]) - float(s["pg_loss"])) > 1e-3 for r, s in zip(on, a))


def test_learning_rates_follow_progress():
    """With anneal_lr, pi and V decay per optimizer step (ppo.py's schedule) and mu and the Q
    heads by training progress: at the start of the last iteration every rate is 1/N of the
    initial one, not zero (the reference's mu rate reaches zero after about a quarter of a run)."""
    args = bpo.Args(
        total_timesteps=4 * 256,
        num_envs=8,
        num_steps=32,
        minibatch_size=64,
        num_epochs=3,
        replay_size=256,
        fqe_epochs=2,
        fqe_minibatch_size=64,
        mu_epochs=5,
        mu_minibatch_size=32,
        learning_rate=1e-3,
        anneal_lr=True,
    )
    trainer = bpo.make_train(args, envs.make("CartPole-v1"))
    state = trainer.init(jax.random.PRNGKey(0))
    iteration = jax.jit(trainer.iteration)
    rates = []
    for _ in range(trainer.num_iterations):
        before = state
        state, stats = iteration(state)
        rates.append(float(stats["learning_rate"]))  # pi's and V's, at the iteration's start
    np.testing.assert_allclose(rates, [1e-3, 0.75e-3, 0.5e-3, 0.25e-3], rtol=1e-5)
    # mu takes 5 x 8 = 40 optimizer steps per iteration, Q and q_hat 2 x 4 = 8, the PPO update
    # 3 x 4 = 12: decayed by their own step counts against the PPO update's total of 48 (the
    # reference), mu's rate would be 0 from the second iteration on. Here all still move in the last.
    for name in ("mu", "q", "q_hat"):
        moved = max(
            float(np.abs(x - y).max())
            for x, y in zip(jax.tree.leaves(before.params[name]), jax.tree.leaves(state.params[name]))
        )
        assert moved > 1e-6, name
    ppo_trainer = ppo.make_train(
        ppo.Args(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ppo.Args)}), envs.make("CartPole-v1")
    )
    ppo_state = ppo_trainer.init(jax.random.PRNGKey(0))
    ppo_rates = []
    for _ in range(ppo_trainer.num_iterations):
        ppo_state, s = jax.jit(ppo_trainer.iteration)(ppo_state)
        ppo_rates.append(float(s["learning_rate"]))
    np.testing.assert_allclose(ppo_rates, rates, rtol=1e-6)
