"""Supervised fine-tuning: negative log-likelihood of the completion tokens.

    L_SFT(x, y) = -(1/|y|) * sum_t log pi_theta(y_t | x, y_<t)

The prompt is context only (masked out), so the model learns to continue prompts, not to write
them. Each example's NLL is averaged over its own completion tokens; the trainer then averages
over examples (a per-example mean, so long demonstrations do not dominate the batch). Being a mean
over examples, it needs no token count from the trainer: accumulating micro-batches of B gives exactly
the loss of one batch of the window's size. (TRL's SFTTrainer takes a token mean over the batch instead.)
"""

from __future__ import annotations

from typing import ClassVar

from zoo.losses.base import Loss, LossOutput, SequenceLogps


class SFTLoss(Loss):
    """Token-averaged NLL on completions; no reference model."""

    batch_kind: ClassVar[str] = "demonstrations"
    needs_reference: ClassVar[bool] = False

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None = None) -> LossOutput:
        nll = -policy.logps / policy.num_tokens.clamp(min=1)  # (B,)
        return LossOutput(loss=nll, metrics={"nll": nll.detach(), "logps/completion": policy.logps.detach()})
