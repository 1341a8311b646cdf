"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs", https://arxiv.org/abs/2402.14740, Eq. 7).

Each prompt x gets k completions y_1..y_k from the policy. Each is one action with a sequence-level reward,
the RM score minus a KL penalty summed over its tokens (k1 estimator, as the paper):

    R_i = r(x, y_i) - kl_coef * sum_t (log pi_old(y_i,t) - log pi_ref(y_i,t))

and the baseline of sample i is the mean reward of the other k - 1 samples of the same prompt:

    A_i = R_i - 1 / (k - 1) * sum_{j != i} R_j

No value model and no per-token credit assignment: the gradient is REINFORCE's, (1/k) sum_i A_i grad log pi(y_i|x).
As TRL's ``RLOOTrainer``, the loss is written with a sequence-level importance ratio clipped as PPO's,

    L = mean_i max(-A_i rho_i, -A_i clip(rho_i, 1 - eps, 1 + eps)),  rho_i = pi_theta(y_i|x) / pi_old(y_i|x),

which is exactly REINFORCE with the leave-one-out baseline when each rollout trains one update (the paper's
on-policy form, ``rollout.ppo_epochs=1``, ``rollout.num_minibatches=1``: rho = 1) and a trust region when a
rollout is reused. The mean is over sequences (each completion one action); the rewards, the score
normalisation and the EOS penalty are ``OnPolicyLoss``'s. ``kl_penalty="loss"`` moves the KL out of the reward
into a k3 loss term (each sequence's token mean, as GRPO's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.losses import ppo_math
from zoo.losses.base import LossOutput
from zoo.losses.on_policy import OnPolicyLoss, PolicyValueOutput, check_group_settings, sequence_advantages


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) sequence rewards, each prompt's k in consecutive rows -> (N,) R_i minus the mean of its k - 1
    siblings' rewards; for k = 2, R_1 - R_2 and R_2 - R_1.

    >>> leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 0.0]), 3).tolist()
    [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]
    """
    grouped = rewards.view(-1, k)  # (N / k, k)
    baselines = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)  # the siblings' mean
    return (grouped - baselines).view(-1)


class RLOOLoss(OnPolicyLoss):
    """REINFORCE with a leave-one-out baseline over k samples per prompt; no value model."""

    model_output = "rollout_logps"  # the policy alone: no value model

    def __init__(self, samples_per_prompt: int = 4, clip_eps: float = 0.2, kl_coef: float = 0.05,
                 kl_estimator: str = "k1", kl_penalty: str = "reward", adaptive_kl_target: float | None = None,
                 adaptive_kl_horizon: float = 10_000, normalize_scores: bool = True,
                 missing_eos_penalty: float | None = -1.0):
        super().__init__(kl_coef, kl_estimator, kl_penalty, adaptive_kl_target, adaptive_kl_horizon, normalize_scores,
                         missing_eos_penalty)
        check_group_settings(samples_per_prompt, clip_eps)
        self.samples_per_prompt, self.clip_eps = samples_per_prompt, clip_eps

    @torch.no_grad()
    def advantages(self, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                   over_processes: Callable[[torch.Tensor], torch.Tensor] = ppo_math.local
                   ) -> tuple[torch.Tensor, None]:
        """Per-token rewards (B, T) -> the leave-one-out advantage of each sequence's summed reward, put on
        every one of its valid tokens (B, T); no returns (no value model). A group lives on one process."""
        sequence_rewards = (rewards * mask).sum(1)  # (B,) R_i: score - kl_coef * sum_t KL_t
        advantages = leave_one_out_advantages(sequence_rewards, self.samples_per_prompt)  # (B,)
        return advantages.unsqueeze(1) * mask, None

    def forward(self, policy: PolicyValueOutput, reference=None) -> LossOutput:
        out = policy
        mask = out.policy.completion_mask  # (N, T-1)
        log_ratio = ((out.policy.token_logps - out.old_logps) * mask).sum(1)  # (N,) log rho_i, a sequence's
        ratio = torch.exp(log_ratio)
        advantages = sequence_advantages(out.advantages, mask)  # (N,)
        loss = ppo_math.clipped_surrogate(ratio, advantages, self.clip_eps)  # (N,)
        metrics = {"policy/pg_loss": loss.detach(), "policy/approxkl": 0.5 * log_ratio.detach() ** 2,
                   "policy/clipfrac": ((ratio.detach() - 1).abs() > self.clip_eps).float()}
        if self.kl_penalty == "loss":
            kl = ppo_math.masked_mean(ppo_math.kl_estimate(out.policy.token_logps, out.ref_logps, "k3"), mask, dim=1)
            loss = loss + out.kl_coef * kl  # (N,)
            metrics["policy/kl_loss"] = kl.detach()
        return LossOutput(loss, metrics)  # (N,) one per sequence: the trainer averages over the window's
