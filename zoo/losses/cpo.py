"""Contrastive Preference Optimization (Xu et al. 2024, https://arxiv.org/abs/2401.08417, Eq. 3 and sec. 3).

CPO drops DPO's reference model (its uniform-reference approximation) and adds a behaviour-cloning NLL
term on the chosen completions, which keeps the policy on the preferred data:

    L_prefer = -log sigmoid(beta * (log pi(y_w|x) - log pi(y_l|x)))      (summed log-probs)
    L_CPO    = L_prefer + alpha * NLL(y_w)

As TRL's ``CPOTrainer(loss_type="sigmoid")`` (``cpo_alpha`` = alpha, default 1): the NLL is one token
mean over every chosen *completion* token of the batch (its labels mask the prompt), which the loss
returns as per-pair sums (``token_loss``) for the trainer to divide by the window's chosen completion
tokens (``count_tokens``), so gradient accumulation keeps it a mean over the whole window. BOS is put
before every prompt, as CPOTrainer's tokenization does (``prepend_bos``). ``label_smoothing`` eps: the
conservative form, as cDPO.

Metrics, with TRL's names: ``rewards/*`` are beta * summed log-prob, ``logps/*`` the summed log-probs,
``nll_loss`` this micro-batch's token-mean NLL.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from zoo.losses.base import (Loss, LossOutput, SequenceLogps, check_preference_settings, reward_metrics,
                             smoothed_sigmoid_loss, split_pairs)


class CPOLoss(Loss):
    """Reference-free sigmoid preference loss plus alpha times the chosen completions' NLL."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    prepend_bos: ClassVar[bool] = True

    def __init__(self, beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        check_preference_settings(beta, label_smoothing)
        if alpha < 0:
            raise ValueError(f"algo.loss.alpha (the NLL weight) must be >= 0, got {alpha}")
        self.beta, self.alpha, self.label_smoothing = beta, alpha, label_smoothing

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None = None) -> LossOutput:
        chosen, rejected = split_pairs(policy.logps.float())  # (B,), (B,) summed completion log-probs
        h = self.beta * (chosen - rejected)  # (B,)
        prefer = smoothed_sigmoid_loss(h, self.label_smoothing)
        chosen_token_logps, _ = split_pairs(policy.token_logps.float() * policy.completion_mask)  # (B, T-1)
        chosen_nll_sums = -chosen_token_logps.sum(dim=-1)  # (B,)
        num_tokens = split_pairs(policy.completion_mask.float())[0].sum()  # this micro-batch's chosen tokens
        metrics = reward_metrics(self.beta * chosen, self.beta * rejected, chosen, rejected)
        metrics["nll_loss"] = chosen_nll_sums.detach().sum() / num_tokens.clamp(min=1)
        return LossOutput(prefer, metrics, token_loss=self.alpha * chosen_nll_sums, num_tokens=num_tokens)

    def count_tokens(self, batch: dict) -> torch.Tensor:
        """The chosen rows' completion tokens of a collated pair batch (shifted by one as the log-probs are)."""
        return split_pairs(batch["completion_mask"][:, 1:])[0].sum()
