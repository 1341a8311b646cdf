"""Gradient accumulation, per loss: ``trainer.grad_accum_steps=2`` at batch B against one step at batch 2B.

The trainer's update is read exactly: AdamW is swapped for plain SGD at lr 1 without clipping, so after
one optimizer step every weight has moved by minus the gradient the trainer accumulated. (Adam's first
step, m / sqrt(v), is blind to the gradient's scale and would hide a wrongly normalised loss.)

- DPO and IPO (a mean over pairs) and SFT (zoo's is a mean over examples of each one's token mean):
  the two gradients are equal to float tolerance.
- ORPO: the odds-ratio term is a mean over pairs, the NLL a token mean over the chosen tokens; the trainer
  divides the NLL by the tokens of the whole window, so the two are equal too (a token mean per
  micro-batch, as TRL takes, would not be: the micro-batches' token counts differ).
- KTO: z0 and its mismatched pairs are per micro-batch (as in TRL), so accumulation equals the mean of the
  two micro-batches' own gradients, and differs from the 2B batch: both are asserted.
"""

from __future__ import annotations

import pytest
import torch

import scratch_model
from zoo.config import TrainerConfig
from zoo.data.collate import COLLATORS
from zoo.data.load import load_rows, tokenize_rows
from zoo.losses import CPOLoss, DPOLoss, IPOLoss, KTOLoss, ORPOLoss, SimPOLoss
from zoo.losses.sft import SFTLoss
from zoo.models import Reference, load_causal_lm, load_tokenizer
from zoo.trainer import DatasetBatches, fit

B = 4  # micro-batch; the scratch data has 8 pairs (16 unpaired rows), so one 2B batch covers the epoch's start


class SGDForTest(torch.optim.SGD):
    """Plain SGD standing in for the trainer's AdamW (same keyword arguments), so an update is -lr * gradient."""

    def __init__(self, params, lr, weight_decay=0.0, fused=None):
        super().__init__(params, lr=lr)


def update(loss_fn, kind: str, rows: list[dict], scratch, batch_size: int, accum: int, tmp_path,
           monkeypatch) -> dict[str, torch.Tensor]:
    """Weight change of one optimizer step (SGD, lr 1) of ``loss_fn`` over micro-batches of ``batch_size`` rows
    (the seeded order of ``StepBatches``: a batch of 2B holds the rows of the two micro-batches of B)."""
    monkeypatch.setattr(torch.optim, "AdamW", SGDForTest)
    tokenizer = load_tokenizer(str(scratch["policy"]))
    tokens, _ = tokenize_rows(load_rows(kind, "rows", rows)[0], kind, tokenizer, "rows", 128,
                              prepend_bos=loss_fn.prepend_bos)
    policy = load_causal_lm(str(scratch["policy"]))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    reference = Reference(policy, load_causal_lm(str(scratch["reference"]))) if loss_fn.needs_reference else None
    cfg = TrainerConfig(max_steps=1, learning_rate=1.0, batch_size=batch_size, grad_accum_steps=accum, warmup_steps=1,
                        max_grad_norm=0.0, log_every=1, save_every=0)
    source = DatasetBatches(tokens, COLLATORS[loss_fn.batch_kind](tokenizer.pad_token_id, 128), batch_size)
    fit(policy, loss_fn, source, cfg, tmp_path / f"run-{batch_size}-{accum}", reference=reference)
    return {k: v - before[k] for k, v in policy.state_dict().items()}


def assert_same_update(a: dict, b: dict) -> None:
    """Equal to float32 tolerance: 1e-4 relative, and 1e-4 of the largest update absolute (two batches pad to
    different widths, so sums run in a different order; a wrong normalisation is off by a factor of order 1)."""
    scale = max(v.abs().max().item() for v in b.values())
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


def in_batch_order(rows: list[dict], batch_size: int) -> list[dict]:
    """``rows`` reordered so that the seeded order of a ``batch_size`` batch is the file order (the split into
    micro-batches is then the same for both runs whatever the batch size: StepBatches shuffles by row count)."""
    from zoo.trainer import StepBatches

    (order,) = list(StepBatches(len(rows), batch_size, seed=0, start_batch=0, end_batch=1))
    out = [None] * len(rows)
    for position, i in enumerate(order):
        out[i] = rows[position]
    return out


@pytest.mark.parametrize("loss_fn, kind", [(DPOLoss(beta=0.1), "pairs"), (IPOLoss(beta=0.1), "pairs"),
                                           (ORPOLoss(beta=0.1), "pairs"), (SFTLoss(), "demonstrations"),
                                           (SimPOLoss(), "pairs"), (CPOLoss(beta=0.1), "pairs")],
                         ids=["dpo", "ipo", "orpo", "sft", "simpo", "cpo"])
def test_two_micro_batches_equal_one_batch_of_both(loss_fn, kind, scratch, tmp_path, monkeypatch):
    rows = long_then_short()
    if kind == "demonstrations":
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    accumulated = update(loss_fn, kind, rows, scratch, B, 2, tmp_path, monkeypatch)
    whole = update(loss_fn, kind, rows, scratch, 2 * B, 1, tmp_path, monkeypatch)
    assert_same_update(accumulated, whole)
    assert max(v.abs().max().item() for v in whole.values()) > 1e-3  # a real gradient was compared


def long_then_short() -> list[dict]:
    """The scratch pairs arranged so the first micro-batch of B holds the 4 longest chosen completions and the
    second the 4 shortest (the order of a 2B batch is then the file order, see ``in_batch_order``)."""
    pairs = sorted(scratch_model.standard_pairs(), key=lambda r: -len(r["chosen"]))
    return in_batch_order(pairs, 2 * B)


def test_orpo_token_counts_differ_between_the_micro_batches(scratch):
    """The case the window's token count exists for: the two micro-batches hold different numbers of chosen
    tokens, so a per-micro-batch token mean would weigh their tokens differently."""
    from zoo.trainer import StepBatches

    tokenizer = load_tokenizer(str(scratch["policy"]))
    tokens, _ = tokenize_rows(load_rows("pairs", "r", long_then_short())[0], "pairs", tokenizer, "r", 128,
                              prepend_bos=True)
    (first, second) = list(StepBatches(len(tokens), B, seed=0, start_batch=0, end_batch=2))
    collate = COLLATORS["pairs"](tokenizer.pad_token_id, 128)
    counts = [ORPOLoss(beta=0.1).count_tokens(collate([tokens[i] for i in part])).item() for part in (first, second)]
    assert counts[0] > 1.5 * counts[1], counts


def test_kto_accumulates_per_micro_batch_z0(scratch, tmp_path, monkeypatch):
    """KTO under accumulation = the mean of its two micro-batches trained alone (each with its own z0 and
    mismatched pairs), which is not one batch of 2B."""
    from zoo.trainer import StepBatches

    rows = scratch_model.unpaired(scratch_model.standard_pairs())[: 2 * B]  # 4 prompts, each desirable and not
    accumulated = update(KTOLoss(beta=0.1), "unpaired", rows, scratch, B, 2, tmp_path, monkeypatch)
    whole = update(KTOLoss(beta=0.1), "unpaired", rows, scratch, 2 * B, 1, tmp_path, monkeypatch)
    # each micro-batch of the accumulated window trained alone, its rows in the same batch order (so the same
    # mismatched pairs): a 4-row dataset whose seeded order is that micro-batch
    halves = list(StepBatches(2 * B, B, seed=0, start_batch=0, end_batch=2))
    alone = [update(KTOLoss(beta=0.1), "unpaired", in_batch_order([rows[i] for i in half], B), scratch, B, 1,
                    tmp_path / f"half{j}", monkeypatch) for j, half in enumerate(halves)]
    mean_of_halves = {k: (alone[0][k] + alone[1][k]) / 2 for k in alone[0]}
    assert_same_update(accumulated, mean_of_halves)
    difference = max((accumulated[k] - whole[k]).abs().max().item() for k in whole)
    assert difference > 1e-4  # z0 per micro-batch is a real difference from one 2B batch, as documented
