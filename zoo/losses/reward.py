"""Bradley-Terry reward model loss (Ouyang et al. 2022, InstructGPT, Eq. 1; Bradley & Terry 1952).

With r(x, y) the scalar head read at the last non-pad token of prompt + completion, for a pair with
chosen y_w and rejected y_l:

    L = -log sigmoid(r(x, y_w) - r(x, y_l) - m)  +  c * (r(x, y_w) + r(x, y_l))^2

m is an optional margin (Llama 2 uses one per preference strength; here a constant). The second
term is reward centering (Eisenstein et al. 2023, "Helping or Herding?", sec. 3), which pins the
otherwise arbitrary offset of r near zero so scores are comparable across reward models; c ~ 0.01.
TRL's RewardTrainer has the same term (``center_rewards_coefficient``) with the same square.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from zoo.losses.base import Loss, LossOutput, SequenceScores, split_pairs


class BradleyTerryLoss(Loss):
    """Pairwise logistic loss on scalar rewards, with optional margin and reward centering."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    model_output: ClassVar[str] = "scores"

    def __init__(self, margin: float = 0.0, center_coef: float = 0.01):
        super().__init__()
        if center_coef < 0:
            raise ValueError(f"algo.loss.center_coef must be >= 0, got {center_coef}")
        self.margin = margin
        self.center_coef = center_coef

    def forward(self, policy: SequenceScores, reference=None) -> LossOutput:
        chosen, rejected = split_pairs(policy.scores)  # (B,), (B,)
        loss = -F.logsigmoid(chosen - rejected - self.margin) + self.center_coef * (chosen + rejected) ** 2
        chosen, rejected = chosen.detach(), rejected.detach()
        metrics = {
            "rewards/chosen": chosen,
            "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "rewards/accuracies": (chosen > rejected).float(),
        }
        return LossOutput(loss, metrics)
