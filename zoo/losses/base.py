"""The loss interface every algorithm implements.

A loss is a small, pure ``nn.Module``: tensors in, :class:`LossOutput` out. It declares what it
needs as class attributes, and the trainer reads those declarations instead of the algorithm's
name:

- ``batch_kind``: which rows it consumes, tokenized and collated how (``"demonstrations"``, ``"pairs"``,
  ``"unpaired"``; one entry each in ``zoo.data.collate.BATCH_KINDS``);
- ``needs_reference``: whether the trainer must run the frozen reference policy on the batch;
- ``model_output``: ``"logps"`` (a causal LM, completion log-probs), ``"scores"`` (a scalar-head
  reward model, one score per sequence) or ``"policy_values"`` (PPO's policy and value model); one entry
  each in ``zoo.builders.MODEL_KINDS``: the forward, the models a run builds and their evaluation;
- ``prepend_bos``: whether every prompt starts with the tokenizer's BOS token even where the tokenizer
  does not add it by itself (TRL's ORPOTrainer does this; its DPO and KTO trainers do not).

The trainer turns a batch into :class:`SequenceLogps` for the policy (with gradients) and, where
asked, for the reference (without), and reduces a :class:`LossOutput` over a whole accumulation window
(``trainer.grad_accum_steps`` micro-batches on every process), as if the window were one batch:

- ``loss`` (one value per example) by a mean over the window's examples (each micro-batch holds the same
  number, so the mean of the micro-batch means is exact);
- ``token_loss`` (one *sum* of per-token terms per example; SFT-style token means such as ORPO's NLL) by
  the window's total count of those tokens, which the trainer takes from :meth:`Loss.count_tokens` on
  every micro-batch of the window before the first backward. A token mean per micro-batch would weigh
  a token of a short micro-batch more than one of a long micro-batch;
- ``batch_loss`` (one scalar the loss already reduced over its micro-batch: PPO's token means over each
  minibatch, as TRL's PPO takes them) by a mean over the window's micro-batches.

A loss gives its terms unscaled; only the trainer weights them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SequenceLogps:
    """Log-probabilities of the completion tokens of N sequences.

    For paired batches N = 2B: the first B rows are the chosen completions, the last B the
    rejected ones (one concatenated forward pass, as TRL does).
    """

    token_logps: torch.Tensor  # (N, T-1) log p(x_t | x_<t), zero outside the completion
    completion_mask: torch.Tensor  # (N, T-1) 1 on completion tokens (shifted to align with token_logps)
    labels: torch.Tensor | None = None  # unpaired (KTO) batches: (N/2,) bool, True = desirable
    all_token_logps: torch.Tensor | None = None  # (N, T-1) log-probs of every real token, prompt included
    token_mask: torch.Tensor | None = None  # (N, T-1) 1 on every real (non-pad) predicted token

    @property
    def logps(self) -> torch.Tensor:
        """(N,) summed completion log-probability, log pi(y | x)."""
        return (self.token_logps * self.completion_mask).sum(dim=-1)

    @property
    def num_tokens(self) -> torch.Tensor:
        """(N,) number of completion tokens per sequence."""
        return self.completion_mask.sum(dim=-1)


@dataclass
class SequenceScores:
    """Scalar scores of N sequences from a reward-model head, read at each sequence's last non-pad token."""

    scores: torch.Tensor  # (N,); paired batches: chosen rows first, then rejected


@dataclass
class LossOutput:
    """What every loss returns: its terms, each with the weights the trainer reduces it by, and detached
    metrics with TRL's names. A loss gives the terms it has, unscaled; the trainer does the weighting:

    - ``loss`` (B,): one value per example, weight 1 / (the window's examples);
    - ``token_loss`` (B,): per-example sums of per-token terms, weight 1 / (the window's tokens of them,
      ``Loss.count_tokens``), so every token of the window counts the same (ORPO's NLL, as TRL's);
    - ``batch_loss`` (scalar): a term the loss already reduced over this micro-batch, weight 1 / (the
      window's micro-batches) (PPO's token means over each minibatch, as TRL's PPO takes them).
    """

    loss: torch.Tensor | None  # (B,) one loss per example; averaged over the window's examples
    metrics: dict[str, torch.Tensor]  # name -> (B,) or scalar tensor, averaged for logging
    token_loss: torch.Tensor | None = None  # (B,) sum of per-token losses; divided by the window's token count
    num_tokens: torch.Tensor | None = None  # scalar: this micro-batch's tokens of token_loss (count_tokens)
    batch_loss: torch.Tensor | None = None  # scalar: this micro-batch's own reduction; averaged over micro-batches

    def objective(self, window_tokens: torch.Tensor | float | None = None, micro_batches: int = 1) -> torch.Tensor:
        """The scalar this micro-batch contributes, scaled so that averaging it over ``micro_batches``
        micro-batches (accelerate divides by the accumulation steps, DDP averages over processes) gives
        mean(loss over the window's examples) + sum(token_loss over the window) / window_tokens
        + mean(batch_loss over the window's micro-batches). Alone (the defaults) it is this batch's own."""
        parts = []
        if self.loss is not None:
            parts.append(self.loss.mean())
        if self.token_loss is not None:
            tokens = self.num_tokens if window_tokens is None else window_tokens
            parts.append(self.token_loss.sum() * micro_batches / torch.as_tensor(tokens).clamp(min=1))
        if self.batch_loss is not None:
            parts.append(self.batch_loss)
        if not parts:
            raise ValueError("a LossOutput needs at least one of loss, token_loss, batch_loss")
        return sum(parts[1:], parts[0])


class Loss(nn.Module):
    """The base of every loss, preference losses, SFT, the reward model and PPO alike: declares the batch
    kind, whether a reference forward pass is needed, and which model output it consumes (``"logps"``: a causal LM's completion log-probs, ``SequenceLogps``;
    ``"scores"``: a scalar-head model's sequence scores, ``SequenceScores``)."""

    batch_kind: ClassVar[str]
    needs_reference: ClassVar[bool]
    model_output: ClassVar[str] = "logps"
    prepend_bos: ClassVar[bool] = False
    # "logps" losses read completion log-probs; one that also reads the prompt's (ORPO's NLL) says so, and
    # only then do the prompt positions go through the LM head
    needs_all_token_logps: bool = False
    # a loss that reads the second half of a batch's rows only detached (KTO's KL rows, whose mean is the
    # reference point z0) says so, and the trainer runs the policy on that half without autograd
    detached_second_half: ClassVar[bool] = False

    def forward(self, policy, reference) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def data_warnings(self, rows: list[dict]) -> list[str]:
        """Warnings about the training rows for this loss (e.g. KTO's class balance); none by default."""
        return []

    def count_tokens(self, batch: dict) -> torch.Tensor | None:
        """The tokens of a collated micro-batch that ``LossOutput.token_loss`` sums over (the same count
        as the forward's ``num_tokens``); None for a loss without a token-mean term."""
        return None


def check_preference_settings(beta: float, label_smoothing: float) -> None:
    """The arguments of a sigmoid preference loss with cDPO smoothing (DPO, SimPO, CPO), checked alike."""
    if beta <= 0:
        raise ValueError(f"algo.loss.beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"algo.loss.label_smoothing must lie in [0, 0.5), got {label_smoothing}")


def smoothed_sigmoid_loss(h: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """-(1 - eps) log sigmoid(h) - eps log sigmoid(-h), elementwise: the Bradley-Terry loss of a margin h with
    the label flipped with probability eps (cDPO; Mitchell 2023), as DPO, SimPO and CPO use it."""
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)


def split_pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, ...) -> chosen (B, ...), rejected (B, ...): the collator puts chosen rows first."""
    chosen, rejected = x.chunk(2, dim=0)
    return chosen, rejected


def reward_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, chosen_logps: torch.Tensor,
                   rejected_logps: torch.Tensor) -> dict[str, torch.Tensor]:
    """TRL's metric names for implicit-reward preference losses (all detached, shape (B,))."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        "logps/chosen": chosen_logps.detach(),
        "logps/rejected": rejected_logps.detach(),
    }
