"""Parity with TRL's DPOTrainer: same tiny model, same small standard-format dataset, learning rate 0.

With lr = 0 the first optimizer step changes nothing, so the first logged step of both trainers is
the loss and the metrics of the initial policy against the identical reference on the same batch.
The whole dataset is one batch, so TRL's shuffling cannot change what is averaged.
To make the reference differ from the policy (otherwise every log-ratio is 0 and the test would not
see a wrong sign or a missing length normalisation), the reference is the world's base model and the
policy is the same model with a fixed perturbation of its weights.
"""

import json

import pytest
import torch
from datasets import Dataset

from zoo.config import TrainerConfig
from zoo.data.collate import PairCollator
from zoo.data.load import tokenize_rows
from zoo.losses import DPOLoss, IPOLoss
from zoo.models import Reference, load_causal_lm, load_tokenizer
from zoo.trainer import DatasetBatches, fit
from zoo.world import paths

ROWS = [
    {"prompt": "The acting was", "chosen": " superb, and I loved the ending.", "rejected": " dull."},
    {"prompt": "I thought the plot", "chosen": " was clever.", "rejected": " was a boring mess, sadly."},
    {"prompt": "The soundtrack", "chosen": " was wonderful!", "rejected": " felt awful and the cast was weak."},
    {"prompt": "This film", "chosen": " is a delight.", "rejected": " is bad."},
    {"prompt": "The director", "chosen": " did a great job with the pacing.", "rejected": " failed."},
    {"prompt": "Honestly, the script", "chosen": " was fresh.", "rejected": " was terrible and painful."},
]
BETA = 0.1
TOL = 1e-4


def perturbed_policy():
    """The base model with every weight nudged by seeded noise: a policy that differs from its reference."""
    model = load_causal_lm(str(paths.MODEL))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def zoo_first_step(loss_fn, tmp_path) -> dict:
    tokenizer = load_tokenizer(str(paths.MODEL))
    tokens, _ = tokenize_rows(ROWS, "pairs", tokenizer, "parity", max_length=128)
    cfg = TrainerConfig(max_steps=1, learning_rate=0.0, batch_size=len(ROWS), warmup_steps=1, log_every=1, save_every=0)
    policy = perturbed_policy()
    reference = Reference(policy, load_causal_lm(str(paths.MODEL)))
    fit(policy, loss_fn, DatasetBatches(tokens, PairCollator(tokenizer.pad_token_id, 128), len(ROWS)), cfg, tmp_path / "zoo",
        reference=reference)
    return json.loads((tmp_path / "zoo" / "log.jsonl").read_text().splitlines()[0])


def trl_first_step(loss_type: str, tmp_path) -> dict:
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ROWS), max_steps=1,
                     learning_rate=0.0, logging_steps=1, report_to=[], beta=BETA, loss_type=[loss_type],
                     max_length=128, use_cpu=True, save_strategy="no", disable_dropout=True, bf16=False)
    trainer = DPOTrainer(model=perturbed_policy(), ref_model=load_causal_lm(str(paths.MODEL)), args=args,
                         train_dataset=Dataset.from_list(ROWS), processing_class=load_tokenizer(str(paths.MODEL)))
    trainer.train()
    return trainer.state.log_history[0]


@pytest.mark.parametrize("loss_type, loss_fn", [("sigmoid", DPOLoss(beta=BETA)), ("ipo", IPOLoss(beta=BETA))])
def test_first_step_matches_trl(loss_type, loss_fn, tmp_path):
    ours = zoo_first_step(loss_fn, tmp_path)
    theirs = trl_first_step(loss_type, tmp_path)
    for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margins", "rewards/chosen", "rewards/accuracies"):
        assert ours[key] == pytest.approx(theirs[key], rel=TOL, abs=1e-6), (key, ours[key], theirs[key])
    assert abs(theirs["rewards/margins"]) > 1e-3  # the comparison is not between two zeros
