"""Identity Preference Optimization (Azar et al. 2023, https://arxiv.org/abs/2310.12036, Eq. 17).

IPO regresses the log-likelihood-ratio gap onto a fixed target instead of pushing it to infinity,
which is what lets DPO overfit deterministic preferences:

    h = [log pi(y_w|x) - log pi_ref(y_w|x)] / |y_w|  -  [log pi(y_l|x) - log pi_ref(y_l|x)] / |y_l|
    L_IPO = (h - 1 / (2 * beta))^2

Deviation from the paper, on purpose: the log-ratios are divided by the completion lengths |y|
(per-token averages). Eq. 17 uses sequence log-probabilities; TRL normalises by length, a choice it
reports confirming with the IPO authors, and without it the squared loss scales with length. We
follow TRL so beta means the same thing in both libraries (and the parity test can hold).
``beta`` is the paper's tau: smaller beta -> larger target gap -> weaker regularisation.

The logged ``rewards/*`` are beta * (unnormalised) log-ratios, as TRL logs them.
"""

from __future__ import annotations

from typing import ClassVar

from zoo.losses.base import Loss, LossOutput, SequenceLogps, reward_metrics, split_pairs


class IPOLoss(Loss):
    """Length-normalised IPO with target gap 1 / (2 beta)."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = True

    def __init__(self, beta: float = 0.1):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"algo.loss.beta must be > 0, got {beta}")
        self.beta = beta

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None) -> LossOutput:
        chosen_logps, rejected_logps = split_pairs(policy.logps)  # (B,), (B,)
        ref_chosen_logps, ref_rejected_logps = split_pairs(reference.logps)
        chosen_tokens, rejected_tokens = split_pairs(policy.num_tokens.clamp(min=1))
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        h = chosen_logratios / chosen_tokens - rejected_logratios / rejected_tokens  # (B,)
        loss = (h - 1 / (2 * self.beta)) ** 2
        metrics = reward_metrics(self.beta * chosen_logratios, self.beta * rejected_logratios,
                                 chosen_logps, rejected_logps)
        return LossOutput(loss, metrics)
