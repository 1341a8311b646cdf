"""PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT), with a separate value model.

Each rollout batch is sampled from the current policy and turned into targets (``zoo.rollout.Experience``
calls :meth:`PPOLoss.shape_rewards` and :meth:`PPOLoss.advantages`); then several epochs of
minibatches minimise, per minibatch,

    L = L_clip(theta) + vf_coef * L_V(phi) [+ kl_coef * KL_k3(pi_theta || pi_ref)   if kl_penalty="loss"]

    L_clip = mean_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps)),  rho_t = pi_theta(y_t) / pi_old(y_t)
    L_V    = 0.5 mean_t max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2)

(Schulman et al. 2017, Eq. 7; OpenAI baselines' value clipping), means over the minibatch's valid
response tokens. Rewards are the RM score on the last token minus a per-token KL penalty
(Ziegler et al. 2019, Eq. 2), advantages come from GAE (Schulman et al. 2016, Eq. 16).

The implementation details of Huang et al. 2024 ("The N+ Implementation Details of RLHF with PPO",
https://arxiv.org/abs/2403.17031) and where each one lives:

1. reward = RM score at the last token + per-token KL penalty, k1 by default (``token_rewards``);
   k2 / k3 via ``kl_estimator``; KL as a loss term instead (``kl_penalty: loss``, GRPO-style, k3).
2. adaptive KL coefficient (Ziegler et al. sec. 2.2) next to a fixed one (``adaptive_kl_target``).
3. GAE with gamma = 1, lambda = 0.95 (``advantages``).
4. advantage whitening over the rollout batch (``whiten_advantages``).
5. optional reward whitening (``whiten_rewards``) and RM-score normalisation to mean 0, std 1 on
   the initial policy's (= the SFT reference's) samples (``normalize_scores``; Huang et al. sec. 4.2).
6. clipped policy loss, eps 0.2 (``clip_eps``), clipped value loss (``value_clip``).
7. several PPO epochs over shuffled minibatches of each rollout batch (``rollout``).
8. a fixed score for responses that miss EOS (``missing_eos_penalty``, replacing the RM score).
9. log-probs at the sampling temperature, for old, new and reference policies (``zoo.rollout``).
10. a value model separate from the policy, initialised from the RM or the SFT model, with a
    zero-initialised head (``zoo.models.value_model``); dropout off everywhere (``disable_dropout``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.losses import ppo_math
from zoo.losses.base import LossOutput
from zoo.losses.on_policy import OnPolicyLoss, PolicyValueOutput

__all__ = ["PPOLoss", "PolicyValueOutput"]


class PPOLoss(OnPolicyLoss):
    """Clipped PPO policy loss + clipped value loss; also holds the reward shaping and GAE settings."""

    model_output = "policy_values"  # a value model is built and trained beside the policy

    def __init__(self, clip_eps: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.1, kl_coef: float = 0.05,
                 kl_estimator: str = "k1", kl_penalty: str = "reward", adaptive_kl_target: float | None = None,
                 adaptive_kl_horizon: float = 10_000, gamma: float = 1.0, lam: float = 0.95,
                 whiten_advantages: bool = True, whiten_rewards: bool = False, normalize_scores: bool = True,
                 missing_eos_penalty: float | None = -1.0):
        super().__init__(kl_coef, kl_estimator, kl_penalty, adaptive_kl_target, adaptive_kl_horizon, normalize_scores,
                         missing_eos_penalty)
        if clip_eps <= 0 or value_clip <= 0 or not 0 <= lam <= 1 or not 0 < gamma <= 1:
            raise ValueError("PPO needs clip_eps > 0, value_clip > 0, kl_coef >= 0, 0 <= lam <= 1, 0 < gamma <= 1")
        self.clip_eps, self.value_clip, self.vf_coef = clip_eps, value_clip, vf_coef
        self.gamma, self.lam = gamma, lam
        self.whiten_advantages, self.whiten_rewards = whiten_advantages, whiten_rewards

    # --- targets, computed once per rollout batch (no grad); shape_rewards is OnPolicyLoss's ---

    @torch.no_grad()
    def advantages(self, rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                   over_processes: Callable[[torch.Tensor], torch.Tensor] = ppo_math.local
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """GAE advantages (whitened if asked) and returns, both (B, T); rewards whitened first if asked
        (scale only, TRL's ``shift_mean=False``). ``over_processes`` sums over the processes holding the
        rest of the rollout batch, whose statistics the whitening takes (``ppo_math.masked_whiten``)."""
        if self.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, mask, shift_mean=False, over_processes=over_processes)
        advantages, returns = ppo_math.gae(rewards, values, mask, self.gamma, self.lam)
        if self.whiten_advantages:
            advantages = ppo_math.masked_whiten(advantages, mask, over_processes=over_processes)
        return advantages, returns

    # --- the minibatch loss (with grad) ---

    def forward(self, policy: PolicyValueOutput, reference=None) -> LossOutput:
        out = policy
        mask = out.policy.completion_mask  # (N, T-1)
        logps = out.policy.token_logps
        pg_loss, pg_metrics = ppo_math.clipped_policy_loss(logps, out.old_logps, out.advantages, mask, self.clip_eps)
        vf_loss, vf_metrics = ppo_math.clipped_value_loss(out.values, out.old_values, out.returns, mask,
                                                          self.value_clip)
        loss = pg_loss + self.vf_coef * vf_loss
        metrics = {"policy/pg_loss": pg_loss.detach(), "val/vf_loss": vf_loss.detach(), **pg_metrics, **vf_metrics,
                   "val/explained_variance": ppo_math.explained_variance(out.values.detach(), out.returns, mask)}
        if self.kl_penalty == "loss":
            # KL as a loss (k3 whatever the estimator, as GRPO): unbiased, >= 0, gradient 1 - pi_ref / pi.
            kl = ppo_math.masked_mean(ppo_math.kl_estimate(logps, out.ref_logps, "k3"), mask)
            loss = loss + out.kl_coef * kl
            metrics["policy/kl_loss"] = kl.detach()
        # PPO's losses are token means over the whole minibatch (Huang et al.; TRL), not per-example means:
        # a term already reduced over this micro-batch, which the trainer averages over the window's
        return LossOutput(loss=None, metrics=metrics, batch_loss=loss)
