"""PPO resumes from its last checkpoint after a crash and ends with exactly the uninterrupted run's weights.

An online run can only restart on a rollout boundary (a half-used rollout batch cannot be rebuilt),
so checkpoints fall on multiples of the optimizer steps per rollout, and the batch source's own state
(KL coefficient, RM-score normalisation) is checkpointed with the model.
"""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from zoo import run
from zoo.config import register_configs
from zoo.losses.ppo import PPOLoss

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"


def ppo_cfg(cache):
    register_configs()
    overrides = ["algo=ppo", "experiment=smoke", f"stages.cache_dir={cache}", "eval.num_prompts=0",
                 "trainer.max_steps=6", "trainer.save_every=2", "algo.loss.adaptive_kl_target=0.01"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_ppo_resume_after_crash_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg = ppo_cfg(tmp_path / "cache")
    run.train(cfg, tmp_path / "straight")

    calls = {"n": 0}
    forward = PPOLoss.forward

    def crash_at_fourth_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated crash")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(PPOLoss, "forward", crash_at_fourth_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run.train(cfg, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["status"] == "failed"
    assert (tmp_path / "resumed" / "checkpoints" / "step_2").is_dir()  # steps 1-2 = the first rollout
    monkeypatch.setattr(PPOLoss, "forward", forward)
    run.train(cfg, tmp_path / "resumed")

    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    # steps 1-3 before the crash (mid-way through the second rollout), then 3-6 again from step_2
    assert [entry["step"] for entry in log] == [1, 2, 3, 3, 4, 5, 6]
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    # the adaptive KL coefficient came back from the checkpoint (target 0.01 nats moves it every rollout)
    assert log[-1]["objective/kl_coef"] == pytest.approx(straight_log[-1]["objective/kl_coef"], rel=1e-9)
    assert straight_log[-1]["objective/kl_coef"] != straight_log[0]["objective/kl_coef"]
    straight = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)
