"""What the losses that learn from the policy's own rollouts share (PPO, RLOO, GRPO): the declarations
``zoo.rollout.Experience`` reads and how a rollout's scores become per-token rewards.

``Experience`` samples ``samples_per_prompt`` completions for each prompt of a rollout batch (a prompt's
completions are consecutive rows), scores them, and asks the loss for two things:

1. ``shape_rewards``: the scores -> per-token rewards (B, T): the score on each response's last token
   (``missing_eos_penalty`` instead for a response without EOS), minus ``kl_coef`` times a per-token KL
   estimate on every token when the KL is a reward penalty (``kl_penalty="reward"``; Ziegler et al. 2019,
   Eq. 2), or the score alone when the KL is a loss term (``kl_penalty="loss"``, as GRPO);
2. ``advantages(rewards, values, mask, over_processes)``: the policy-gradient targets, (advantages (B, T),
   returns (B, T) or None for a loss without a value model).

Scores may be normalised to mean 0 and std 1 on the first rollout (the initial policy's samples;
``normalize_scores``, Huang et al. 2024 sec. 4.2), so one ``kl_coef`` means the same for every reward model;
the KL coefficient is fixed or follows Ziegler et al.'s adaptive controller (``adaptive_kl_target``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from zoo.losses import ppo_math
from zoo.losses.base import Loss, SequenceLogps


@dataclass
class PolicyValueOutput:
    """The policy's (and, for PPO, the value model's) output on a rollout minibatch, next to the rollout's
    fixed targets. All tensors (N, T-1), aligned with ``SequenceLogps`` (column t scores token t+1):
    """

    policy: SequenceLogps  # log pi_theta at the sampling temperature, with grad; .completion_mask = response
    values: torch.Tensor | None  # V_phi(state before each token), with grad; None without a value model
    old_logps: torch.Tensor  # log pi_old of the sampled tokens (the policy that generated them)
    old_values: torch.Tensor | None  # V_old, for the clipped value loss; None without a value model
    ref_logps: torch.Tensor  # log pi_ref, for kl_penalty="loss"
    advantages: torch.Tensor  # the loss's advantages (``OnPolicyLoss.advantages``), constant along a row
    # for a sequence-level advantage
    returns: torch.Tensor | None  # value targets: advantages (before whitening) + V_old; None without a value model
    kl_coef: float  # the KL coefficient in force for this rollout (the adaptive controller moves it)


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) one advantage per row from (B, T) advantages constant on each row's valid tokens."""
    return (advantages * mask).sum(1) / mask.sum(1).clamp(min=1)


class OnPolicyLoss(Loss):
    """The base of losses trained on rollouts of the policy: reward shaping and the KL controller.

    Declarations ``zoo.rollout.Experience`` reads: ``samples_per_prompt`` (completions per prompt in a
    rollout batch, consecutive rows; 1 for PPO) and ``model_output`` (``"policy_values"``: a value model is
    built and trained beside the policy; ``"rollout_logps"``: the policy alone).
    """

    batch_kind: ClassVar[str] = "prompts"  # the trainer gets rollout minibatches from an online source
    needs_reference: ClassVar[bool] = False  # reference log-probs are taken once per rollout by the source
    samples_per_prompt: int = 1

    def __init__(self, kl_coef: float, kl_estimator: str = "k1", kl_penalty: str = "reward",
                 adaptive_kl_target: float | None = None, adaptive_kl_horizon: float = 10_000,
                 normalize_scores: bool = True, missing_eos_penalty: float | None = -1.0):
        super().__init__()
        if kl_estimator not in ppo_math.KL_KINDS:
            raise ValueError(f"algo.loss.kl_estimator must be one of {ppo_math.KL_KINDS}, got {kl_estimator!r}")
        if kl_penalty not in ("reward", "loss"):
            raise ValueError(f"algo.loss.kl_penalty must be 'reward' or 'loss', got {kl_penalty!r}")
        if kl_coef < 0:
            raise ValueError(f"algo.loss.kl_coef must be >= 0, got {kl_coef}")
        self.kl_coef, self.kl_estimator, self.kl_penalty = kl_coef, kl_estimator, kl_penalty
        self.adaptive_kl_target, self.adaptive_kl_horizon = adaptive_kl_target, adaptive_kl_horizon
        self.normalize_scores, self.missing_eos_penalty = normalize_scores, missing_eos_penalty

    def kl_controller(self):
        """Ziegler et al.'s adaptive controller if a target KL (nats per sequence) is set, else a fixed one."""
        if self.adaptive_kl_target is not None:
            return ppo_math.AdaptiveKLController(self.kl_coef, self.adaptive_kl_target, self.adaptive_kl_horizon)
        return ppo_math.FixedKLController(self.kl_coef)

    @torch.no_grad()
    def shape_rewards(self, scores: torch.Tensor, ended: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) scores -> per-token rewards (B, T) and the per-token KL estimate (B, T).

        A response without EOS scores ``missing_eos_penalty`` instead of its RM score. With
        ``kl_penalty="loss"`` the rewards carry the score only and the KL goes into the loss.
        """
        if self.missing_eos_penalty is not None:
            scores = ppo_math.eos_penalty(scores, ended, self.missing_eos_penalty)
        coef = kl_coef if self.kl_penalty == "reward" else 0.0
        return ppo_math.token_rewards(scores, logps, ref_logps, mask, coef, self.kl_estimator)

    def advantages(self, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                   over_processes: Callable[[torch.Tensor], torch.Tensor] = ppo_math.local
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        """(advantages (B, T), returns (B, T) or None) of a rollout batch; ``over_processes`` sums a tensor
        over the processes holding the rest of it (for statistics over the whole batch)."""
        raise NotImplementedError


def check_group_settings(samples_per_prompt: int, clip_eps: float) -> None:
    """The arguments every loss with a baseline from a prompt's other samples (RLOO, GRPO) checks first."""
    if samples_per_prompt < 2:
        raise ValueError(f"algo.loss.samples_per_prompt must be >= 2 (the baseline is taken from a prompt's other "
                         f"samples), got {samples_per_prompt}")
    if clip_eps <= 0:
        raise ValueError(f"algo.loss.clip_eps must be > 0, got {clip_eps}")

