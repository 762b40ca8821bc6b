"""Learning on small budgets, fixed seeds, thresholds with margin."""

import dataclasses

import bpo
import bpo_traj
import ppo
import runner


def test_ppo_learns_cartpole(tmp_path):
    # Defaults (the reference's cartpole_ppo settings) reach 500 on both seeds by ~75k steps.
    s = ppo.run(ppo.Args(num_seeds=2, total_timesteps=100_000, eval_every=25_000, output_dir=str(tmp_path)))
    assert min(s["final_eval_return"]) >= 400, s["final_eval_return"]


def test_ppo_improves_on_pendulum(tmp_path):
    # A random policy scores about -1200; these settings reach about -200 by 50k steps.
    args = runner.apply_presets(ppo.Args(), ppo.PRESETS, ["pendulum_ppo"])
    s = ppo.run(dataclasses.replace(args, num_seeds=2, total_timesteps=98_304, output_dir=str(tmp_path)))
    assert s["final_eval_return_mean"] > -600, s["final_eval_return"]


def test_bpo_learns_cartpole(tmp_path):
    # Defaults (cartpole_ppo + ppo_bpo_zero1.0) reach ~490 on 4 seeds by 60k steps.
    s = bpo.run(bpo.Args(num_seeds=2, total_timesteps=80_000, eval_every=20_000, output_dir=str(tmp_path)))
    assert min(s["final_eval_return"]) >= 400, s["final_eval_return"]


def test_bpo_improves_on_pendulum(tmp_path):
    # Continuous actions (Q on concat(s, a), reparameterised kl_qhat mu loss): about -280 by 98k steps.
    args = runner.apply_presets(bpo.Args(), bpo.PRESETS, ["pendulum_ppo", "ppo_bpo_zero1.0"])
    s = bpo.run(dataclasses.replace(args, num_seeds=2, total_timesteps=98_304, output_dir=str(tmp_path)))
    assert s["final_eval_return_mean"] > -600, s["final_eval_return"]


def test_bpo_traj_learns_cartpole(tmp_path):
    s = bpo_traj.run(bpo_traj.Args(num_seeds=2, total_timesteps=80_000, eval_every=20_000, output_dir=str(tmp_path)))
    assert min(s["final_eval_return"]) >= 400, s["final_eval_return"]
