"""Odds Ratio Preference Optimization (Hong et al. 2024, https://arxiv.org/abs/2403.07691, Eqs. 4, 6, 7).

ORPO needs no reference model: it adds to the chosen completion's NLL a penalty on the log odds
ratio between chosen (y_w) and rejected (y_l) completions. With the length-averaged likelihood
log P(y|x) = (1/|y|) sum_t log p(y_t | x, y_<t) and odds(y|x) = P(y|x) / (1 - P(y|x)) (Eq. 4):

    log odds(y|x) = log P - log(1 - P) = log P - log1mexp(log P)
    L_OR   = -log sigmoid(log odds(y_w|x) - log odds(y_l|x))          (Eq. 7)
    L_ORPO = NLL(y_w) + lambda * L_OR                                  (Eq. 6)

``beta`` is the paper's lambda (TRL's name for it). log(1 - P) is computed with a stable
:func:`log1mexp`, since P is close to 1 for confident models.

NLL, as TRL's ``ORPOTrainer`` computes it (``nn.CrossEntropyLoss()`` over the chosen rows): one
token-level mean over *all* chosen tokens of the batch, not a mean of per-example means (examples with
more tokens carry more of it). The loss returns each pair's NLL *sum* as ``token_loss`` and the trainer
divides by the chosen tokens of the whole accumulation window (``count_tokens``), so
``trainer.grad_accum_steps=2`` at batch B gives the gradient of one batch of 2B; TRL divides per
micro-batch, and the two agree without accumulation.

Which tokens the NLL covers: TRL's covers every real token of the chosen rows, *prompt included*
(its cross-entropy labels are all non-padding input ids), and so does this loss by default
(``nll_on_prompt=True``), so the two agree number for number. ``nll_on_prompt=False`` restricts it
to the chosen completion's tokens, the paper's L_SFT over the response.

Tokens, as TRL's ``ORPOTrainer`` makes them: it puts the tokenizer's BOS token before every prompt that
does not already start with it, whether or not the tokenizer adds BOS by itself (``prepend_bos``); a
tokenizer that defines ``<s>`` without adding it gives every ORPO sequence one more token, and every
log-prob a different context, than in DPO. (zoo's first ORPO missed this and disagreed with TRL by 0.1%
on the loss of such a tokenizer; the world's has no BOS token.)

Metrics, with TRL's names and meanings (``ORPOTrainer.get_batch_loss_metrics``):

- ``log_odds_ratio``: log sigmoid(log odds(y_w) - log odds(y_l)), i.e. -L_OR (<= 0; the *log sigmoid*,
  despite the name);
- ``log_odds_chosen``: log odds(y_w) - log odds(y_l) (the log odds *ratio*, despite the name);
- ``nll_loss``: the NLL above (scalar);
- ``rewards/chosen`` / ``rewards/rejected``: beta * length-averaged log-prob; ``rewards/margins``,
  ``rewards/accuracies`` from those;
- ``logps/chosen`` / ``logps/rejected``: the *length-averaged* log-probs (not summed, unlike DPO).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from zoo.losses.base import Loss, LossOutput, SequenceLogps, reward_metrics, split_pairs

_LN2 = math.log(2.0)
# Upper clamp on the mean log-prob before log1mexp: at exactly 0 (every token predicted with float32
# probability 1, which a tiny peaked model does reach) log(1 - P) = -inf and the gradient is NaN.
# Below the clamp nothing changes; TRL has no clamp and returns inf/NaN there.
_MAX_MEAN_LOGP = -1e-12


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere (Maechler 2012, "Accurately computing log(1 - exp(-|a|))").

    Near 0, 1 - exp(x) cancels: use log(-expm1(x)). For x < -ln 2, exp(x) < 1/2 and log1p(-exp(x)) is
    accurate, while expm1 would lose the tiny difference from -1. log1mexp(0) = -inf.
    """
    near_zero = x > -_LN2
    # evaluate each branch only where it is accurate (and finite), so neither leaks NaN into the gradient
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


class ORPOLoss(Loss):
    """ORPO: chosen NLL plus beta (the paper's lambda) times the odds-ratio loss."""

    batch_kind: ClassVar[str] = "pairs"
    needs_reference: ClassVar[bool] = False
    model_output: ClassVar[str] = "logps"
    prepend_bos: ClassVar[bool] = True

    def __init__(self, beta: float = 0.1, nll_on_prompt: bool = True):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"algo.loss.beta must be > 0, got {beta} (ORPO's lambda, the odds-ratio weight)")
        self.beta = beta
        self.nll_on_prompt = nll_on_prompt
        self.needs_all_token_logps = nll_on_prompt  # the NLL term reads the prompt tokens' log-probs too

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None = None) -> LossOutput:
        token_logps = policy.token_logps.float() * policy.completion_mask  # (2B, T-1)
        num_tokens = policy.completion_mask.float().sum(dim=-1)  # (2B,)
        mean_logps = token_logps.sum(dim=-1) / num_tokens.clamp(min=1)  # (2B,) log P, length-averaged
        chosen_mean, rejected_mean = split_pairs(mean_logps)  # (B,), (B,)

        # --- odds-ratio term (Eqs. 4 and 7) ---
        log_odds = mean_logps - log1mexp(mean_logps.clamp(max=_MAX_MEAN_LOGP))  # (2B,) log P - log(1 - P)
        log_odds_chosen, log_odds_rejected = split_pairs(log_odds)
        log_odds_ratio = log_odds_chosen - log_odds_rejected  # (B,)
        log_sigmoid_ratio = F.logsigmoid(log_odds_ratio)  # (B,) = -L_OR

        # --- NLL of the chosen completions: one token mean over the batch, split across pairs ---
        if self.nll_on_prompt:
            if policy.all_token_logps is None or policy.token_mask is None:
                raise ValueError("ORPOLoss(nll_on_prompt=True) needs SequenceLogps.all_token_logps and token_mask")
            nll_logps, nll_mask = policy.all_token_logps.float() * policy.token_mask, policy.token_mask.float()
        else:
            nll_logps, nll_mask = token_logps, policy.completion_mask.float()
        chosen_token_logps, _ = split_pairs(nll_logps)  # (B, T-1)
        chosen_nll_sums = -chosen_token_logps.sum(dim=-1)  # (B,) summed over each chosen row's NLL tokens
        num_tokens = split_pairs(nll_mask)[0].sum()  # scalar: this micro-batch's chosen NLL tokens

        metrics = reward_metrics(self.beta * chosen_mean, self.beta * rejected_mean, chosen_mean, rejected_mean)
        metrics.update({
            "log_odds_ratio": log_sigmoid_ratio.detach(),
            "log_odds_chosen": log_odds_ratio.detach(),
            "nll_loss": chosen_nll_sums.detach().sum() / num_tokens.clamp(min=1),  # this batch's token mean
        })
        return LossOutput(-self.beta * log_sigmoid_ratio, metrics, token_loss=chosen_nll_sums, num_tokens=num_tokens)

    def count_tokens(self, batch: dict) -> torch.Tensor:
        """The chosen rows' NLL tokens of a collated pair batch: every predicted real token (prompt included)
        or, with ``nll_on_prompt=False``, the completion's; shifted by one as ``sequence_logps`` does."""
        mask = batch["attention_mask"] if self.nll_on_prompt else batch["completion_mask"]
        return split_pairs(mask[:, 1:])[0].sum()
