"""Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, Eq. 7).

With the implicit reward r(x, y) = beta * (log pi_theta(y|x) - log pi_ref(y|x)) and
h = r(x, y_w) - r(x, y_l) (chosen minus rejected):

    L_DPO = -log sigmoid(h)

Conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy preferences") assumes each label
is flipped with probability eps and minimises the expected loss over the flip:

    L_cDPO = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)

eps = 0 (the default) is plain DPO, identical to TRL's ``loss_type="sigmoid"``.
"""

from __future__ import annotations

from typing import ClassVar


from zoo.losses.base import (Loss, LossOutput, SequenceLogps, check_preference_settings, reward_metrics,
                             smoothed_sigmoid_loss, split_pairs)


class DPOLoss(Loss):
    """Sigmoid DPO with optional cDPO label smoothing."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = True

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0):
        super().__init__()
        check_preference_settings(beta, label_smoothing)
        self.beta = beta
        self.label_smoothing = label_smoothing

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None) -> LossOutput:
        chosen_logps, rejected_logps = split_pairs(policy.logps)  # (B,), (B,)
        ref_chosen_logps, ref_rejected_logps = split_pairs(reference.logps)
        chosen_rewards = self.beta * (chosen_logps - ref_chosen_logps)
        rejected_rewards = self.beta * (rejected_logps - ref_rejected_logps)
        h = chosen_rewards - rejected_rewards  # (B,)
        loss = smoothed_sigmoid_loss(h, self.label_smoothing)
        return LossOutput(loss, reward_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps))
