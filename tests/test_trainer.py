"""The training loop: resume after a crash reproduces the uninterrupted run; checkpoints survive crashes."""

import json

import pytest
import torch

from zoo.config import TrainerConfig
from zoo.data.collate import PairCollator
from zoo.data.load import tokenize_rows
from zoo.losses import DPOLoss
from zoo.models import Reference, load_causal_lm, load_tokenizer
from zoo.trainer import DatasetBatches, fit
from zoo.world import paths

ROWS = [{"prompt": "The plot was", "chosen": f" great {i}.", "rejected": f" awful {i}."} for i in range(12)]


class CrashAt(DPOLoss):
    """DPO that raises on its n-th call: a stand-in for a killed process."""

    def __init__(self, n):
        super().__init__(beta=0.1)
        self.calls, self.n = 0, n

    def forward(self, policy, reference):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return super().forward(policy, reference)


def run(run_dir, loss_fn, max_steps=4, save_every=2, keep_checkpoints=2):
    tokenizer = load_tokenizer(str(paths.MODEL))
    tokens, _ = tokenize_rows(ROWS, "pairs", tokenizer, "test", 64)
    policy = load_causal_lm(str(paths.MODEL))
    cfg = TrainerConfig(max_steps=max_steps, learning_rate=1e-3, batch_size=4, warmup_steps=1, log_every=1,
                        save_every=save_every, keep_checkpoints=keep_checkpoints)
    fit(policy, loss_fn, DatasetBatches(tokens, PairCollator(tokenizer.pad_token_id, 64), 4), cfg, run_dir, seed=0,
        reference=Reference(policy, load_causal_lm(str(paths.MODEL))))
    return policy


def test_resume_after_crash_matches_uninterrupted_run(tmp_path):
    straight = run(tmp_path / "straight", DPOLoss(beta=0.1))
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", CrashAt(3))
    assert (tmp_path / "resumed" / "checkpoints" / "step_2" / "trainer_state.json").exists()  # survived the crash
    resumed = run(tmp_path / "resumed", DPOLoss(beta=0.1))
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 before the crash, 3-4 after resuming from step_2
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_training_moves_the_margin_the_right_way(tmp_path):
    """A few DPO steps on one repeated preference raise the chosen-minus-rejected margin."""
    run(tmp_path / "r", DPOLoss(beta=0.1), max_steps=6)
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["rewards/margins"] > log[0]["rewards/margins"] + 0.05
    assert log[-1]["loss"] < log[0]["loss"]


def test_lora_reference_is_the_base_with_adapters_disabled():
    """Under LoRA no second copy is loaded, and the reference's log-probs are exactly the base model's."""
    from omegaconf import OmegaConf

    from zoo.data.collate import DemonstrationCollator
    from zoo.models import sequence_logps
    from zoo.builders import build_policy
    from zoo.stages import Prepared, Stage

    cfg = OmegaConf.create({"model": {"dtype": "float32", "trust_remote_code": False}, "quant": {"bits": None},
                            "peft": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
                            "algo": {"online_feedback": False}})
    built = build_policy(cfg, str(paths.MODEL), Prepared(Stage(paths.MODEL, {}, 0.0)), tokenizer=None, task=None)
    policy, reference = built.policy, built.reference
    assert reference.separate is None and built.model is policy
    with torch.no_grad():  # LoRA's B starts at zero; move it so the policy differs from its base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)
    tokenizer = load_tokenizer(str(paths.MODEL))
    batch = DemonstrationCollator(tokenizer.pad_token_id)([{"prompt_ids": tokenizer("The plot was")["input_ids"],
                                                           "completion_ids": tokenizer(" great.")["input_ids"]}])
    with torch.no_grad(), reference.model() as ref_model:
        ref = sequence_logps(ref_model, batch).logps
    base = sequence_logps(load_causal_lm(str(paths.MODEL)), batch).logps.detach()
    torch.testing.assert_close(ref, base)
    assert not torch.allclose(sequence_logps(policy, batch).logps.detach(), base)


def test_a_separate_reference_is_frozen_and_evaluated():
    """The reference never trains: its dropout off (eval mode) and no parameter asking for a gradient, even if
    it arrives in training mode."""
    separate = load_causal_lm(str(paths.MODEL)).train()
    Reference(load_causal_lm(str(paths.MODEL)), separate)
    assert not separate.training and not any(m.training for m in separate.modules())
    assert not any(p.requires_grad for p in separate.parameters())


def test_checkpoints_kept_are_the_newest_keep_checkpoints(tmp_path):
    run(tmp_path, DPOLoss(beta=0.1), max_steps=6, save_every=1, keep_checkpoints=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4", "step_5"]


def test_without_disk_space_a_checkpoint_is_skipped_with_a_warning(tmp_path, monkeypatch, capsys):
    """Free space below the checkpoint's estimated size: no checkpoint, a warning saying how much it needs and
    how much there is, and training goes on to the end."""
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))  # 1 MB
    run(tmp_path, DPOLoss(beta=0.1), max_steps=4, save_every=2)
    out = capsys.readouterr().out
    assert "warning: no checkpoint at step 2: it needs about" in out and "has 1 MB free" in out
    assert not list((tmp_path / "checkpoints").glob("step_*"))
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
