"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", https://arxiv.org/abs/2402.03300,
Eq. 3 with outcome supervision, sec. 4.1.2).

Each prompt x gets a group of G completions o_1..o_G from the policy, scored r_1..r_G. Every token of o_i gets
the group-normalised score as its advantage, with no value model:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + 1e-4)          (std unbiased; 1e-4 as TRL)

and the objective is PPO's clipped surrogate per token, with the KL to the reference as a loss term (the k3
estimator, unbiased and >= 0) instead of a reward penalty:

    L = mean_i 1/|o_i| sum_t [ max(-A_i rho_it, -A_i clip(rho_it, 1 - eps, 1 + eps)) + kl_coef * KL3_it ]
    rho_it = pi_theta(o_it) / pi_old(o_it),   KL3_it = pi_ref(o_it) / pi_theta(o_it) - log(pi_ref / pi_theta) - 1

``loss_type="grpo"`` is this paper form: a token mean within each sequence, then a mean over sequences.
``loss_type="dapo"`` (Yu et al. 2025; TRL's default) takes one token mean over the whole accumulation window
instead, so a long completion's tokens weigh as much as a short one's. ``scale_rewards``: ``"group"`` (the
paper), ``"batch"`` (the std over the whole rollout batch, every process's) or ``"none"`` (Dr. GRPO, Liu et
al. 2025: no std division). ``kl_penalty="reward"`` moves the KL into the score before the normalisation.
The rewards, the score normalisation and the EOS penalty are ``OnPolicyLoss``'s.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.losses import ppo_math
from zoo.losses.base import LossOutput
from zoo.losses.on_policy import OnPolicyLoss, PolicyValueOutput, check_group_settings

# TRL's GRPOTrainer divides by std + 1e-4
STD_EPS = 1e-4
LOSS_TYPES = ("grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def group_advantages(rewards: torch.Tensor, k: int, scale: str = "group",
                     over_processes: Callable[[torch.Tensor], torch.Tensor] = ppo_math.local) -> torch.Tensor:
    """(N,) sequence rewards, each prompt's k in consecutive rows -> (N,) rewards minus their group's mean,
    divided by the group's std + 1e-4 (``scale="group"``), the whole batch's (``"batch"``, over the processes
    ``over_processes`` sums across) or nothing (``"none"``). Stds are unbiased (n - 1), as TRL's.

    >>> group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, "none").tolist()
    [-1.0, 1.0, 0.0, 0.0]
    """
    grouped = rewards.view(-1, k)  # (N / k, k)
    centred = (grouped - grouped.mean(1, keepdim=True)).view(-1)  # (N,)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(1).repeat_interleave(k)  # (N,)
    else:
        n = over_processes(torch.tensor(float(rewards.numel()), device=rewards.device))
        mean = over_processes(rewards.sum()) / n
        std = (over_processes(((rewards - mean) ** 2).sum()) / (n - 1)).sqrt()
    return centred / (std + STD_EPS)


class GRPOLoss(OnPolicyLoss):
    """PPO's clipped surrogate on group-normalised sequence scores, KL as a k3 loss term; no value model."""

    model_output = "rollout_logps"  # the policy alone: no value model

    def __init__(self, samples_per_prompt: int = 4, clip_eps: float = 0.2, kl_coef: float = 0.04,
                 loss_type: str = "grpo", scale_rewards: str = "group", kl_estimator: str = "k3",
                 kl_penalty: str = "loss", adaptive_kl_target: float | None = None,
                 adaptive_kl_horizon: float = 10_000, normalize_scores: bool = True,
                 missing_eos_penalty: float | None = -1.0):
        super().__init__(kl_coef, kl_estimator, kl_penalty, adaptive_kl_target, adaptive_kl_horizon, normalize_scores,
                         missing_eos_penalty)
        check_group_settings(samples_per_prompt, clip_eps)
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"algo.loss.loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"algo.loss.scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
        self.samples_per_prompt, self.clip_eps = samples_per_prompt, clip_eps
        self.loss_type, self.scale_rewards = loss_type, scale_rewards

    @torch.no_grad()
    def advantages(self, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                   over_processes: Callable[[torch.Tensor], torch.Tensor] = ppo_math.local
                   ) -> tuple[torch.Tensor, None]:
        """Per-token rewards (B, T) -> each sequence's group-normalised summed reward on every one of its
        valid tokens (B, T); no returns (no value model). A group lives on one process."""
        sequence_rewards = (rewards * mask).sum(1)  # (B,) the score (minus the KL with kl_penalty="reward")
        advantages = group_advantages(sequence_rewards, self.samples_per_prompt, self.scale_rewards, over_processes)
        return advantages.unsqueeze(1) * mask, None

    def forward(self, policy: PolicyValueOutput, reference=None) -> LossOutput:
        out = policy
        mask = out.policy.completion_mask  # (N, T-1)
        logps = out.policy.token_logps
        log_ratio = logps - out.old_logps  # (N, T-1)
        ratio = torch.exp(log_ratio)
        advantages = out.advantages  # (N, T-1), constant along each row's response
        per_token = ppo_math.clipped_surrogate(ratio, advantages, self.clip_eps)  # (N, T-1)
        tokens = mask.sum(1).clamp(min=1)  # (N,) each row's response tokens
        with torch.no_grad():
            metrics = {"policy/pg_loss": (per_token * mask).sum(1) / tokens,
                       "policy/approxkl": (0.5 * log_ratio**2 * mask).sum(1) / tokens,
                       "policy/clipfrac": (((ratio - 1).abs() > self.clip_eps).float() * mask).sum(1) / tokens}
        if self.kl_penalty == "loss":
            kl = ppo_math.kl_estimate(logps, out.ref_logps, "k3")  # (N, T-1)
            per_token = per_token + out.kl_coef * kl
            metrics["policy/kl_loss"] = ((kl * mask).sum(1) / tokens).detach()
        sums = (per_token * mask).sum(1)  # (N,)
        if self.loss_type == "grpo":
            return LossOutput(sums / tokens, metrics)  # each sequence's token mean
        # dapo: every token of the accumulation window weighs the same (the trainer divides by count_tokens')
        return LossOutput(None, metrics, token_loss=sums, num_tokens=mask.sum())

    def count_tokens(self, batch: dict) -> torch.Tensor | None:
        """``loss_type="dapo"``: a rollout micro-batch's response tokens (shifted by one as the log-probs are)."""
        return batch["completion_mask"][:, 1:].sum() if self.loss_type == "dapo" else None
