"""One small Brax/MJX end-to-end run (compilation dominates: about a minute on a 2-core CPU)."""

import csv
import dataclasses
import json

import numpy as np
import pytest

import ppo
import runner


@pytest.mark.slow  # 1-2.5 minutes of compiling here; MJX end to end in the default run: test_playground_envs.py
def test_ppo_ant_mjx_end_to_end(tmp_path):
    args = runner.apply_presets(ppo.Args(), ppo.PRESETS, ["mujoco_ppo"])
    args = dataclasses.replace(
        args,
        env_id="ant",
        num_seeds=2,
        total_timesteps=2048,
        num_envs=4,
        num_steps=256,
        minibatch_size=256,
        num_epochs=1,
        eval_every=1024,
        eval_episodes=2,
        max_episode_steps=100,
        output_dir=str(tmp_path),
    )
    summary = ppo.run(args)
    assert summary["completed"] and summary["env_steps"] == 2048
    assert len(summary["final_eval_return"]) == 2 and np.all(np.isfinite(summary["final_eval_return"]))
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(rows) == 4 and all(np.isfinite(float(r["pg_loss"])) for r in rows)
    assert json.load(open(tmp_path / "config.json"))["env_id"] == "ant"
    assert (tmp_path / "curves.png").exists() and (tmp_path / "params.msgpack").exists()
