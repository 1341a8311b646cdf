"""SimPO: Simple Preference Optimization (Meng et al. 2024, https://arxiv.org/abs/2405.14734, Eq. 6).

No reference model: the implicit reward is the policy's *length-normalised* log-likelihood,
r(x, y) = (beta / |y|) log pi_theta(y|x), and the Bradley-Terry margin must exceed a target gamma:

    L_SimPO = -log sigmoid(beta / |y_w| * log pi(y_w|x) - beta / |y_l| * log pi(y_l|x) - gamma)

|y| counts the completion's tokens (EOS included). TRL writes the same loss as
``CPOTrainer(loss_type="simpo", cpo_alpha=0)``: logits = (mean log p_w - mean log p_l) - gamma / beta,
loss = -log sigmoid(beta * logits); ``label_smoothing`` eps mixes in the flipped label as cDPO does.
Tokenization follows TRL's CPOTrainer: BOS before every prompt (``prepend_bos``).

Metrics, with TRL's names: ``rewards/*`` are beta * mean log-prob (the rewards above), ``logps/*`` the
mean log-probs themselves.
"""

from __future__ import annotations

from typing import ClassVar


from zoo.losses.base import (Loss, LossOutput, SequenceLogps, check_preference_settings, reward_metrics,
                             smoothed_sigmoid_loss, split_pairs)


class SimPOLoss(Loss):
    """Reference-free, length-normalised sigmoid loss with a target reward margin gamma."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    prepend_bos: ClassVar[bool] = True

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        check_preference_settings(beta, label_smoothing)
        self.beta, self.gamma, self.label_smoothing = beta, gamma, label_smoothing

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None = None) -> LossOutput:
        mean_logps = policy.logps.float() / policy.num_tokens.float().clamp(min=1)  # (2B,) log pi(y|x) / |y|
        chosen, rejected = split_pairs(mean_logps)  # (B,), (B,)
        h = self.beta * (chosen - rejected) - self.gamma  # (B,) the margin over the target
        loss = smoothed_sigmoid_loss(h, self.label_smoothing)
        return LossOutput(loss, reward_metrics(self.beta * chosen, self.beta * rejected, chosen, rejected))
