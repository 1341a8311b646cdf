"""Numerical faults: a NaN loss, gradient norm, reward, advantage or value is caught at the step it appears,
named with its step; ``trainer.on_nonfinite=stop`` (the default) fails the run with its last checkpoint kept,
``skip`` drops the batch and counts it in ``log.jsonl`` and ``metrics.json``. Each fault is injected at a
known step; with two processes, a NaN on one of them is agreed on by both (neither waits for the other)."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from zoo import run
from zoo.config import register_configs
from zoo.feedback.base import RewardScorer
from zoo.losses.dpo import DPOLoss
from zoo.losses.grpo import GRPOLoss
from zoo.losses.ppo import PPOLoss
from zoo.rollout import Experience
from zoo_cli import log_of, zoo

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"


def config(algo, cache, *overrides):
    register_configs()
    common = [f"algo={algo}", "experiment=smoke", f"stages.cache_dir={cache}", "eval.num_prompts=0",
              "trainer.max_steps=6", "trainer.save_every=2", "trainer.log_every=1"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*common, *overrides])


def nan_on_call(monkeypatch, cls, method, nth, poison):
    """``cls.method`` with its ``nth`` call's result passed through ``poison`` (which makes it non-finite)."""
    original, calls = getattr(cls, method), {"n": 0}

    def wrapped(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        return poison(out) if calls["n"] == nth else out
    monkeypatch.setattr(cls, method, wrapped)


def nan_gradient(out):
    """The loss unchanged, its gradient NaN: + 0 * sqrt(loss - loss), whose derivative at 0 is 0 * inf."""
    loss = out.loss
    out.loss = loss + 0 * torch.sqrt(loss - loss.detach())
    return out


def rollout_values_on_call(monkeypatch, nth):
    """The values PPO's rollouts take (``Experience.value``, not the training forward's) made infinite at the
    ``nth`` call."""
    original, calls = Experience.batches, {"n": 0}

    def batches(self, *args, **kwargs):
        value = self.value

        def poisoned(*inputs):
            calls["n"] += 1
            out = value(*inputs)
            return out * float("inf") if calls["n"] == nth else out
        self.value = poisoned
        return original(self, *args, **kwargs)
    monkeypatch.setattr(Experience, "batches", batches)


# quantity[/algo] -> (algo, where it turns NaN, the step it is caught at); smoke PPO, RLOO and GRPO: 2 steps per
# rollout
FAULTS = {
    "loss": ("dpo", lambda mp: mp.setenv("ZOO_NAN_AT", "loss:3"), 3),
    "gradient norm": ("dpo", lambda mp: nan_on_call(mp, DPOLoss, "forward", 3, nan_gradient), 3),
    "reward": ("ppo", lambda mp: nan_on_call(mp, RewardScorer, "__call__", 2, lambda s: s * float("nan")), 3),
    "advantage": ("ppo", lambda mp: nan_on_call(mp, PPOLoss, "advantages",  2,
                                                 lambda out: (out[0] * float("nan"), out[1])), 3),
    "value": ("ppo", lambda mp: rollout_values_on_call(mp, 2), 3),
    "reward/rloo": ("rloo", lambda mp: nan_on_call(mp, RewardScorer, "__call__", 2, lambda s: s * float("nan")), 3),
    "advantage/grpo": ("grpo", lambda mp: nan_on_call(mp, GRPOLoss, "advantages", 2,
                                                      lambda out: (out[0] * float("nan"), out[1])), 3),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A stage cache with DPO's and PPO's stages built, so that a fault injected in a test hits the run's own
    training, not the stages' (SFT, the reward model)."""
    cache = tmp_path_factory.mktemp("cache")
    for algo in ("dpo", "ppo"):
        run.train(config(algo, cache, "trainer.max_steps=1"), tmp_path_factory.mktemp(algo))
    return cache



@pytest.mark.parametrize("fault", FAULTS)
def test_a_nonfinite_quantity_stops_the_run_naming_it_and_its_step(fault, built, monkeypatch, tmp_path):
    algo, inject, step = FAULTS[fault]
    quantity = fault.split("/")[0]
    inject(monkeypatch)
    with pytest.raises(FloatingPointError, match=f"non-finite {quantity}.* at step {step};"):
        run.train(config(algo, built), tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and f"non-finite {quantity}" in metrics["error"]
    assert (tmp_path / "run" / "checkpoints" / "step_2" / "trainer_state.json").exists()  # the last good one


@pytest.mark.parametrize("fault", FAULTS)
def test_skip_drops_the_batch_and_counts_it(fault, built, monkeypatch, tmp_path):
    algo, inject, step = FAULTS[fault]
    inject(monkeypatch)
    metrics = run.train(config(algo, built, "trainer.on_nonfinite=skip"), tmp_path / "run")
    dropped = 2 if algo in ("ppo", "rloo", "grpo") else 1  # a bad rollout: both of its minibatches
    assert metrics["status"] == "finished" and metrics["nonfinite_skipped_steps"] == dropped
    log = {row["step"]: row for row in log_of(tmp_path / "run")}
    assert [log[s].get("nonfinite_skipped") for s in range(1, 7)] == [
        1 if step <= s < step + dropped else None for s in range(1, 7)]
    assert "loss" not in log[step] and torch.isfinite(torch.tensor(log[6]["loss"]))


def test_skip_leaves_the_weights_as_they_were(built, monkeypatch, tmp_path):
    """A dropped step makes no update: a run whose step 3 is skipped and one that stops right before it hold
    the same weights after step 3 as after step 2 (no learning rate schedule step either)."""
    monkeypatch.setenv("ZOO_NAN_AT", "loss:3")
    cfg = config("dpo", built, "trainer.on_nonfinite=skip", "trainer.max_steps=3",
                 "trainer.save_every=0")
    run.train(cfg, tmp_path / "skipped")
    monkeypatch.delenv("ZOO_NAN_AT")
    run.train(config("dpo", built, "trainer.max_steps=2", "trainer.save_every=0"), tmp_path / "two")
    from safetensors.torch import load_file
    skipped, two = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("skipped", "two"))
    for name in two:
        torch.testing.assert_close(skipped[name], two[name], rtol=0, atol=0, msg=name)
    lrs = [row["lr"] for row in log_of(tmp_path / "skipped")]
    assert lrs[2] == lrs[1]  # the schedule did not move either


def test_bad_on_nonfinite_value_is_refused(built, tmp_path):
    with pytest.raises(ValueError, match="trainer.on_nonfinite must be 'stop' or 'skip'"):
        run.train(config("dpo", built, "trainer.on_nonfinite=ignore"), tmp_path / "run")


def test_two_processes_agree_on_a_nan_that_only_one_of_them_sees(cache, tmp_path):
    """Process 1 alone gets a NaN loss at step 3: both drop the step (none waits in a gradient exchange the
    other left), the run finishes and counts one skipped step."""
    proc = zoo("train", "algo=dpo", "experiment=smoke", "trainer.max_steps=4", "trainer.log_every=1",
               "trainer.batch_size=4", "trainer.save_every=0", "eval.num_prompts=0", "trainer.on_nonfinite=skip",
               "trainer.cpu_threads=1", f"hydra.run.dir={tmp_path}", cache=cache, processes=2,
               env={"ZOO_NAN_AT": "loss:3:1"})
    assert "step 3 skipped: non-finite loss" in proc.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["nonfinite_skipped_steps"] == 1
    assert [row.get("nonfinite_skipped") for row in log_of(tmp_path)] == [None, None, 1, None]
