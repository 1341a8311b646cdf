"""Parity with TRL 1.16 on a model, tokenizer and rows built from scratch (``tests/scratch_model.py``), not the world's.

For each of DPO, IPO, KTO, ORPO, SimPO and CPO, in the standard and the conversational format, the same rows
go through

- ``zoo train algo=X data=local data.path=FILE model.name_or_path=POLICY model.reference_path=REFERENCE
  eval.num_prompts=0`` (composed and run in-process: the real config, loading, tokenization, collation and
  trainer), and
- TRL's own trainer (``DPOTrainer``, ``KTOTrainer``, ``experimental.orpo.ORPOTrainer``,
  ``experimental.cpo.CPOTrainer`` with ``loss_type="simpo", cpo_alpha=0`` for SimPO and ``"sigmoid"`` for CPO)
  with the same policy and ``ref_model=`` the same reference (none for ORPO, SimPO, CPO),

for one step at learning rate 0 with the whole file as one batch. Every metric both libraries log at that
step must agree to 1e-5 relative, and zoo's per-row log-probabilities (the trainer's own collation and
forward) must equal a hand computation, row by row without padding, on the token ids TRL's trainer
prepared, which are checked to be zoo's ids. The policy is the reference with perturbed weights, so
the log-ratios, rewards and KTO's reference point are not trivially 0.

KTO pairs each prompt with the previous row's completion *within the batch* to estimate z0; zoo batches
rows in its seeded order (``StepBatches``), TRL in dataset order with ``train_sampling_strategy=
"sequential"``. TRL is given the rows in zoo's batch order, so both form the same mismatched pairs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from datasets import Dataset

from zoo.config import compose_train_config
from zoo.data.collate import COLLATORS
from zoo.data.load import load_rows, read_rows, tokenize_rows
from zoo.models import load_causal_lm, load_tokenizer, sequence_logps
from zoo.run import train
from zoo.trainer import StepBatches

BETA = 0.1
MAX_LENGTH = 128
REL = 1e-5
# zoo's forward is padding-free (sequences packed into rows, zoo.models._packed_hidden), TRL's padded: the same
# math in matmuls of other shapes. Float32 rounding of sequence log-probs of ~100 nats is ~1e-5 nats, so a
# metric that is beta times a difference of them (the reward margins, ~0.04 here) agrees to ~1e-6 absolute.
ABS = 1e-6
LOSS_TYPES = {"dpo": "sigmoid", "ipo": "ipo"}
SIMPO_GAMMA, CPO_ALPHA = 0.5, 1.0  # TRL's defaults (simpo_gamma, cpo_alpha), set on both sides
REFERENCE_FREE = ("orpo", "simpo", "cpo")
# overrides of zoo's loss that match TRL's arguments below
LOSS_OVERRIDES = {"simpo": [f"algo.loss.gamma={SIMPO_GAMMA}"], "cpo": [f"algo.loss.alpha={CPO_ALPHA}"]}
# metrics TRL logs that zoo does not (optimizer state and logits means) or logs differently (the step clock)
NOT_COMPARED = {"grad_norm", "learning_rate", "epoch", "step", "lr", "elapsed_s", "logits/chosen", "logits/rejected",
                "count/desirable", "count/undesirable", "entropy"}


def zoo_step(algo: str, data_file, scratch, run_dir) -> dict:
    """The first log line of ``zoo train`` on ``data_file``: one step at lr 0, the whole file as one batch."""
    n = len(read_rows(data_file))
    reference = [] if algo in REFERENCE_FREE else [f"model.reference_path={scratch['reference']}"]
    overrides = [f"algo={algo}", "data=local", f"data.path={data_file}", f"model.name_or_path={scratch['policy']}",
                 *reference, "eval.num_prompts=0", f"data.max_length={MAX_LENGTH}", "trainer.max_steps=1",
                 "trainer.learning_rate=0", f"trainer.batch_size={n}", "trainer.warmup_steps=1",
                 "trainer.log_every=1", "trainer.save_every=0", f"algo.loss.beta={BETA}",
                 f"stages.cache_dir={run_dir.parent / 'cache'}", *LOSS_OVERRIDES.get(algo, [])]
    metrics = train(compose_train_config(overrides), run_dir)
    assert metrics["train_rows"] == n and metrics["eval_source"] == "none"  # every row of the file trained
    return json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])


def trl_trainer(algo: str, rows: list[dict], scratch, out):
    """TRL's trainer for ``algo`` on ``rows`` (one batch, lr 0), trained one step."""
    common = dict(output_dir=str(out), per_device_train_batch_size=len(rows), max_steps=1, learning_rate=0.0,
                  logging_steps=1, report_to=[], beta=BETA, max_length=MAX_LENGTH, use_cpu=True, save_strategy="no",
                  disable_dropout=True, bf16=False)
    policy = load_causal_lm(str(scratch["policy"]))
    tokenizer = load_tokenizer(str(scratch["reference"]))
    if algo in LOSS_TYPES:
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=policy, ref_model=load_causal_lm(str(scratch["reference"])),
                             args=DPOConfig(loss_type=[LOSS_TYPES[algo]], **common),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    elif algo == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0,
                         train_sampling_strategy="sequential", precompute_ref_log_probs=False,
                         gradient_checkpointing=False, **common)
        trainer = KTOTrainer(model=policy, ref_model=load_causal_lm(str(scratch["reference"])), args=args,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    elif algo in ("simpo", "cpo"):
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(loss_type="simpo" if algo == "simpo" else "sigmoid", simpo_gamma=SIMPO_GAMMA,
                         cpo_alpha=0.0 if algo == "simpo" else CPO_ALPHA, gradient_checkpointing=False,
                         remove_unused_columns=False, **common)
        trainer = CPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(gradient_checkpointing=False, remove_unused_columns=False, **common)
        trainer = ORPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    return trainer


def hand_logps(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """The sum of log p(completion token | everything before it) of one unpadded row, in float64."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1:].sum().item()


def zoo_rows_logps(algo: str, rows: list[dict], scratch) -> tuple[list[dict], torch.Tensor]:
    """zoo's tokenized rows (in file order) and the trainer's per-row completion log-probs of their collated
    batch: (2N,) chosen then rejected rows (pairs), or examples then KL rows (unpaired)."""
    from hydra.utils import instantiate

    loss_fn = instantiate(compose_train_config([f"algo={algo}"]).algo.loss)
    kind = loss_fn.batch_kind
    tokenizer = load_tokenizer(str(scratch["reference"]))
    loaded, _ = load_rows(kind, "rows", rows)
    tokens, _ = tokenize_rows(loaded, kind, tokenizer, "rows", MAX_LENGTH, prepend_bos=loss_fn.prepend_bos)
    batch = COLLATORS[kind](tokenizer.pad_token_id, MAX_LENGTH)(tokens)
    with torch.no_grad():
        out = sequence_logps(load_causal_lm(str(scratch["policy"])), batch, all_tokens=loss_fn.needs_all_token_logps)
    return tokens, out.logps


def trl_completion(example: dict, side: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one side of a row of TRL's tokenized train dataset."""
    if "chosen_labels" in example:  # ORPO's, CPO's: full sequences with the prompt masked out of the labels
        ids, labels = example[f"{side}_input_ids"], example[f"{side}_labels"]
        start = next(i for i, label in enumerate(labels) if label != -100)
        return ids[:start], ids[start:]
    key = "completion_ids" if side == "completion" else f"{side}_ids"
    return example["prompt_ids"], example[key]


def zoo_batch_order(n: int) -> list[int]:
    (order,) = list(StepBatches(n, n, seed=0, start_batch=0, end_batch=1))
    return order


def assert_all_shared_metrics_agree(ours: dict, theirs: dict, expected: set[str]) -> None:
    shared = (set(ours) & set(theirs)) - NOT_COMPARED
    assert expected <= shared, f"not logged by both: {expected - shared}"
    for key in sorted(shared):
        assert ours[key] == pytest.approx(theirs[key], rel=REL, abs=ABS), (key, ours[key], theirs[key])


EXPECTED = {
    "dpo": {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected"},
    "kto": {"loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"},
    "orpo": {"loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected",
             "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"},
}
EXPECTED["ipo"] = EXPECTED["simpo"] = EXPECTED["dpo"]
EXPECTED["cpo"] = EXPECTED["dpo"] | {"nll_loss"}


@pytest.mark.parametrize("fmt", ["standard", "conversational"])
@pytest.mark.parametrize("algo", ["dpo", "ipo", "kto", "orpo", "simpo", "cpo"])
def test_first_step_and_per_row_logps_match_trl(algo, fmt, scratch, tmp_path):
    unpaired = algo == "kto"
    data_file = scratch[f"{'unpaired' if unpaired else 'pairs'}_{fmt}"]
    rows = read_rows(data_file)
    ours = zoo_step(algo, data_file, scratch, tmp_path / "zoo")
    trl_rows = [rows[i] for i in zoo_batch_order(len(rows))] if unpaired else rows
    trainer = trl_trainer(algo, trl_rows, scratch, tmp_path / "trl")
    theirs = trainer.state.log_history[0]
    assert_all_shared_metrics_agree(ours, theirs, EXPECTED[algo])
    assert abs(theirs["rewards/margins"]) > 1e-3  # the policy differs from its reference: rewards are compared
    if unpaired:
        assert theirs["kl"] > 1e-3  # z0 is not clamped to 0 on both sides: the mismatched pairs are compared

    # per row: zoo's ids are TRL's, and zoo's batched log-probs are the hand computation on them
    tokens, logps = zoo_rows_logps(algo, rows, scratch)
    model = load_causal_lm(str(scratch["policy"]))
    trl_by_row = list(trainer.train_dataset)
    if unpaired:  # TRL holds the rows in the order it was given (zoo's batch order); map back to file order
        trl_by_row = [trl_by_row[zoo_batch_order(len(rows)).index(i)] for i in range(len(rows))]
    sides = ["completion"] if unpaired else ["chosen", "rejected"]
    n = len(rows)
    for i, (ours_row, theirs_row) in enumerate(zip(tokens, trl_by_row)):
        for s, side in enumerate(sides):
            prompt_ids, completion_ids = trl_completion(theirs_row, side)
            ours_completion = ours_row["completion_ids" if unpaired else f"{side}_ids"]
            assert (ours_row["prompt_ids"], ours_completion) == (prompt_ids, completion_ids), (i, side)
            expected = hand_logps(model, prompt_ids, completion_ids)
            assert logps[s * n + i].item() == pytest.approx(expected, rel=REL), (i, side)
    if algo in ("dpo", "ipo"):  # the logged means are the means of these rows (DPO logs summed log-probs)
        assert ours["logps/chosen"] == pytest.approx(logps[:n].mean().item(), rel=REL)
        assert ours["logps/rejected"] == pytest.approx(logps[n:].mean().item(), rel=REL)
    lengths = {len(r["chosen_ids"] if not unpaired else r["completion_ids"]) for r in tokens}
    assert max(lengths) >= 4 * min(lengths)  # completions of very different lengths are in the batch


def test_dpo_under_lora_matches_trl_with_a_perturbed_adapter(scratch, tmp_path):
    """One PeftModel for both: TRL wraps the policy with ``peft_config=`` (its reference is then the base with
    the adapter disabled, as zoo's ``Reference(policy, None)`` under ``peft=lora``), the adapter of that very
    model is perturbed (a fresh one has B = 0 and the policy would equal its reference), and zoo's trainer
    and TRL's each take one step at lr 0 on it. (Handed an already-wrapped PeftModel, TRL 1.16 would take a
    frozen copy of its adapter as the reference instead; zoo's LoRA adapters always start fresh.)"""
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from zoo.config import TrainerConfig
    from zoo.data.collate import PairCollator
    from zoo.losses import DPOLoss
    from zoo.models import Reference
    from zoo.trainer import DatasetBatches, fit

    rows = read_rows(scratch["pairs_standard"])
    tokenizer = load_tokenizer(str(scratch["reference"]))
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(rows), max_steps=1,
                     learning_rate=0.0, logging_steps=1, report_to=[], beta=BETA, loss_type=["sigmoid"],
                     max_length=MAX_LENGTH, use_cpu=True, save_strategy="no", disable_dropout=True, bf16=False)
    trainer = DPOTrainer(model=load_causal_lm(str(scratch["policy"])), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    model = trainer.model
    assert "ref" not in model.peft_config  # TRL's reference is the base with the adapter disabled
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    tokens, _ = tokenize_rows(load_rows("pairs", "rows", rows)[0], "pairs", tokenizer, "rows", MAX_LENGTH)
    cfg = TrainerConfig(max_steps=1, learning_rate=0.0, batch_size=len(rows), warmup_steps=1, log_every=1, save_every=0)
    fit(model, DPOLoss(beta=BETA), DatasetBatches(tokens, PairCollator(tokenizer.pad_token_id, MAX_LENGTH), len(rows)),
        cfg, tmp_path / "zoo", reference=Reference(model, None))
    ours = json.loads((tmp_path / "zoo" / "log.jsonl").read_text().splitlines()[0])
    trainer.train()
    theirs = trainer.state.log_history[0]
    assert_all_shared_metrics_agree(ours, theirs, EXPECTED["dpo"])
    assert abs(theirs["rewards/margins"]) > 1e-3 and not math.isclose(theirs["loss"], math.log(2), rel_tol=1e-4)
