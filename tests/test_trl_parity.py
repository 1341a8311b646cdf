"""Parity with TRL's DPOTrainer, KTOTrainer and ORPOTrainer: same tiny model, same small standard-format
dataset, learning rate 0.

With lr = 0 the first optimizer step changes nothing, so the first logged step of both trainers is
the loss and the metrics of the initial policy against the identical reference on the same batch.
The whole dataset is one batch, so TRL's shuffling cannot change what is averaged.
To make the reference differ from the policy (otherwise every log-ratio is 0 and the test would not
see a wrong sign or a missing length normalisation), the reference is the world's base model and the
policy is the same model with a fixed perturbation of its weights (ORPO has no reference; its policy
is the same perturbed model).

KTO's reference point z0 (the ``kl`` metric) is the mean log-ratio of mismatched pairs (x_i, y_{i-1})
formed *within the batch, in batch order*: TRL pairs rows in dataset order (KTO forces
``train_sampling_strategy="sequential"`` and rotates the completions per batch of
``per_device_train_batch_size`` when it prepares the dataset), zoo in the order of its seeded shuffle
(``StepBatches``). So the TRL dataset is given in the order zoo's first batch will have, and both
sides form exactly the same mismatched pairs.
"""

import json

import pytest
import torch
from datasets import Dataset

from zoo.config import TrainerConfig
from zoo.data.collate import PairCollator, UnpairedCollator
from zoo.data.load import load_rows, tokenize_rows
from zoo.losses import DPOLoss, IPOLoss, KTOLoss, ORPOLoss
from zoo.models import Reference, load_causal_lm, load_tokenizer
from zoo.trainer import DatasetBatches, StepBatches, fit
from zoo.world import paths

ROWS = [
    {"prompt": "The acting was", "chosen": " superb, and I loved the ending.", "rejected": " dull."},
    {"prompt": "I thought the plot", "chosen": " was clever.", "rejected": " was a boring mess, sadly."},
    {"prompt": "The soundtrack", "chosen": " was wonderful!", "rejected": " felt awful and the cast was weak."},
    {"prompt": "This film", "chosen": " is a delight.", "rejected": " is bad."},
    {"prompt": "The director", "chosen": " did a great job with the pacing.", "rejected": " failed."},
    {"prompt": "Honestly, the script", "chosen": " was fresh.", "rejected": " was terrible and painful."},
]
# Unpaired (KTO) rows: 4 desirable, 3 undesirable (lambda_D * n_D / (lambda_U * n_U) = 4/3, inside Eq. 8's range).
# The row order is chosen so that the mismatched pairs of zoo's first batch have a clearly positive mean
# log-ratio (z0 ~ 1.29): z0 is clamped at 0, and a negative raw z0 would make ``kl`` 0 on both sides and
# compare nothing. (Had TRL paired the rows in this file order instead of zoo's batch order, z0 would be
# ~ 0.41, so the ``kl`` comparison does check that both sides form the same pairs.)
KTO_ROWS = [
    {"prompt": "I thought the plot", "completion": " was a boring mess, sadly.", "label": False},
    {"prompt": "The acting was", "completion": " superb, and I loved the ending.", "label": True},
    {"prompt": "The soundtrack", "completion": " was wonderful!", "label": True},
    {"prompt": "This film", "completion": " is bad.", "label": False},
    {"prompt": "The director", "completion": " did a great job with the pacing.", "label": True},
    {"prompt": "Honestly, the script", "completion": " was terrible and painful.", "label": False},
    {"prompt": "The ending", "completion": " is a delight.", "label": True},
]
BETA = 0.1
TOL = 1e-4
MAX_LENGTH = 128


def perturbed_policy():
    """The base model with every weight nudged by seeded noise: a policy that differs from its reference."""
    model = load_causal_lm(str(paths.MODEL))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def trainer_config(batch_size: int) -> TrainerConfig:
    return TrainerConfig(max_steps=1, learning_rate=0.0, batch_size=batch_size, warmup_steps=1, log_every=1,
                         save_every=0)


def first_log_line(run_dir) -> dict:
    return json.loads((run_dir / "log.jsonl").read_text().splitlines()[0])


def zoo_first_step(loss_fn, tmp_path) -> dict:
    tokenizer = load_tokenizer(str(paths.MODEL))
    tokens, _ = tokenize_rows(ROWS, "pairs", tokenizer, "parity", max_length=MAX_LENGTH)
    policy = perturbed_policy()
    reference = Reference(policy, load_causal_lm(str(paths.MODEL)))
    batches = DatasetBatches(tokens, PairCollator(tokenizer.pad_token_id, MAX_LENGTH), len(ROWS))
    fit(policy, loss_fn, batches, trainer_config(len(ROWS)), tmp_path / "zoo", reference=reference)
    return first_log_line(tmp_path / "zoo")


def trl_first_step(loss_type: str, tmp_path) -> dict:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ROWS), max_steps=1,
                     learning_rate=0.0, logging_steps=1, report_to=[], beta=BETA, loss_type=[loss_type],
                     max_length=MAX_LENGTH, use_cpu=True, save_strategy="no", disable_dropout=True, bf16=False)
    trainer = DPOTrainer(model=perturbed_policy(), ref_model=load_causal_lm(str(paths.MODEL)), args=args,
                         train_dataset=Dataset.from_list(ROWS), processing_class=load_tokenizer(str(paths.MODEL)))
    trainer.train()
    return trainer.state.log_history[0]


def assert_same_metrics(ours: dict, theirs: dict, keys: tuple[str, ...]) -> None:
    """Every key within TOL relative (1e-6 absolute near zero) between zoo's and TRL's first logged step."""
    for key in keys:
        assert ours[key] == pytest.approx(theirs[key], rel=TOL, abs=1e-6), (key, ours[key], theirs[key])


@pytest.mark.parametrize("loss_type, loss_fn", [("sigmoid", DPOLoss(beta=BETA)), ("ipo", IPOLoss(beta=BETA))])
def test_first_step_matches_trl(loss_type, loss_fn, tmp_path):
    ours = zoo_first_step(loss_fn, tmp_path)
    theirs = trl_first_step(loss_type, tmp_path)
    assert_same_metrics(ours, theirs, ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "rewards/chosen",
                                       "rewards/accuracies"))
    assert abs(theirs["rewards/margins"]) > 1e-3  # the comparison is not between two zeros


# ----------------------------------------------------------------------------------------------- KTO


def zoo_batch_order(num_rows: int) -> list[int]:
    """The row order of zoo's first batch when the whole dataset is one batch (DatasetBatches' seed 0)."""
    (order,) = list(StepBatches(num_rows, num_rows, seed=0, start_batch=0, end_batch=1))
    return order


def zoo_kto_first_step(tmp_path) -> dict:
    """TRL's KTOTrainer tokenizes standard rows as zoo does: prompt and prompt + completion + EOS text, the
    completion starting where the two diverge, no BOS added (the world tokenizer has none)."""
    tokenizer = load_tokenizer(str(paths.MODEL))
    rows, _ = load_rows("unpaired", "parity", [dict(r) for r in KTO_ROWS])
    tokens, _ = tokenize_rows(rows, "unpaired", tokenizer, "parity", MAX_LENGTH)
    policy = perturbed_policy()
    batches = DatasetBatches(tokens, UnpairedCollator(tokenizer.pad_token_id, MAX_LENGTH), batch_size=len(rows))
    fit(policy, KTOLoss(beta=BETA), batches, trainer_config(len(rows)), tmp_path / "zoo",
        reference=Reference(policy, load_causal_lm(str(paths.MODEL))))
    return first_log_line(tmp_path / "zoo")


def trl_kto_first_step(tmp_path) -> dict:
    from trl import KTOConfig, KTOTrainer

    ordered = [KTO_ROWS[i] for i in zoo_batch_order(len(KTO_ROWS))]  # zoo's batch order: the same KL pairs
    args = KTOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ordered), max_steps=1,
                     learning_rate=0.0, logging_steps=1, report_to=[], beta=BETA, loss_type="kto",
                     desirable_weight=1.0, undesirable_weight=1.0, max_length=MAX_LENGTH,
                     train_sampling_strategy="sequential", precompute_ref_log_probs=False, use_cpu=True,
                     save_strategy="no", disable_dropout=True, bf16=False, gradient_checkpointing=False)
    trainer = KTOTrainer(model=perturbed_policy(), ref_model=load_causal_lm(str(paths.MODEL)), args=args,
                         train_dataset=Dataset.from_list(ordered), processing_class=load_tokenizer(str(paths.MODEL)))
    trainer.train()
    return trainer.state.log_history[0]


def test_kto_first_step_matches_trl(tmp_path):
    ours = zoo_kto_first_step(tmp_path)
    theirs = trl_kto_first_step(tmp_path)
    assert_same_metrics(ours, theirs, ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
                                       "logps/chosen", "logps/rejected"))
    assert theirs["kl"] > 1e-3  # z0 is not clamped to 0 on both sides: the mismatched pairs are really compared
    assert abs(theirs["rewards/margins"]) > 1e-3


# ---------------------------------------------------------------------------------------------- ORPO
# TRL's ORPOTrainer (the old DPO-style tokenize_row) tokenizes without special tokens, prepends BOS when the
# tokenizer has one and appends the EOS id; zoo tokenizes with the tokenizer's defaults and the EOS text, and
# ORPOLoss declares prepend_bos. The world tokenizer has no BOS, so that declaration is not exercised here
# (tests/test_trl_parity_scratch.py has a tokenizer with one). TRL's NLL is nn.CrossEntropyLoss over every
# non-pad token of the chosen rows (prompt included): zoo's nll_on_prompt=True.


def zoo_orpo_first_step(tmp_path) -> dict:
    tokenizer = load_tokenizer(str(paths.MODEL))
    tokens, _ = tokenize_rows(ROWS, "pairs", tokenizer, "parity", max_length=MAX_LENGTH)
    batches = DatasetBatches(tokens, PairCollator(tokenizer.pad_token_id, MAX_LENGTH), len(ROWS))
    fit(perturbed_policy(), ORPOLoss(beta=BETA), batches, trainer_config(len(ROWS)), tmp_path / "zoo", reference=None)
    return first_log_line(tmp_path / "zoo")


def trl_orpo_first_step(tmp_path) -> dict:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    args = ORPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ROWS), max_steps=1,
                      learning_rate=0.0, logging_steps=1, report_to=[], beta=BETA, max_length=MAX_LENGTH,
                      use_cpu=True, save_strategy="no", disable_dropout=True, bf16=False,
                      gradient_checkpointing=False, remove_unused_columns=False)
    trainer = ORPOTrainer(model=perturbed_policy(), args=args, train_dataset=Dataset.from_list(ROWS),
                          processing_class=load_tokenizer(str(paths.MODEL)))
    trainer.train()
    return trainer.state.log_history[0]


def test_orpo_first_step_matches_trl(tmp_path):
    ours = zoo_orpo_first_step(tmp_path)
    theirs = trl_orpo_first_step(tmp_path)
    assert_same_metrics(ours, theirs, ("loss", "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/chosen",
                                       "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                                       "logps/rejected"))
    assert abs(theirs["log_odds_chosen"]) > 1e-3
