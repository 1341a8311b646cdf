"""The tensor arithmetic of PPO-RLHF, as small pure functions.

Sources: Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences",
https://arxiv.org/abs/1909.08593), Ouyang et al. 2022 (InstructGPT, https://arxiv.org/abs/2203.02155),
Huang et al. 2024 ("The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR
Summarization", https://arxiv.org/abs/2403.17031), Schulman et al. 2016 (GAE,
https://arxiv.org/abs/1506.02438) and 2017 (PPO, https://arxiv.org/abs/1707.06347).

Conventions: every per-token tensor is (B, T), and ``mask`` (B, T) is 1.0 on valid response tokens
and 0.0 elsewhere. A row's response is one contiguous run of 1s that may start after the prompt's
columns (zoo's rollouts are whole right-padded prompt + response sequences) or at column 0 (TRL's
response-only tensors); the last valid token is the row's last 1. Outputs are zero outside the mask. Metrics are detached and use TRL's names (``policy/clipfrac``, ``val/clipfrac``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Huang et al. 2024 and TRL whiten with rsqrt(var + 1e-8).
WHITEN_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is 1: sum(x * m) / sum(m), over ``dim`` or all.

    As in TRL, an empty mask (sum(m) = 0) gives nan rather than a silent 0.
    """
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim=dim) / mask.sum(dim=dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over valid entries: mean_m((x - mean_m(x))^2), times n / (n - 1) if unbiased.

    n = sum(mask). With ``unbiased=True`` fewer than 2 valid entries raise a ValueError (TRL does
    the same) instead of returning inf or nan.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 valid entries, got {int(n)}")
        var = var * n / (n - 1)  # Bessel's correction
    return var


def local(total: torch.Tensor) -> torch.Tensor:
    """A sum over the processes of a run of one: the sum itself."""
    return total


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  over_processes: Callable[[torch.Tensor], torch.Tensor] = local) -> torch.Tensor:
    """Whiten over valid entries: (x - mean) / sqrt(var + 1e-8), zero outside the mask.

    Mean and (unbiased) variance are computed over the valid entries only, as TRL's
    ``masked_whiten``. With ``shift_mean=False`` the mean is added back, so only the scale is
    normalised (TRL does this for rewards; advantages use ``shift_mean=True``).
    Choice: padded entries are set to 0 (TRL leaves them at whatever the formula gives).

    ``over_processes`` sums a tensor over the processes that share the batch (each holding its rows of it),
    so that mean and variance are the whole batch's, as on one process (TRL whitens each process's rows
    alone); the identity on one process, where these are ``masked_mean`` and ``masked_var``'s operations.
    """
    n = over_processes(mask.sum())
    if n < 2:
        raise ValueError(f"masked_whiten needs at least 2 valid entries, got {int(n)}")
    mean = over_processes((x * mask).sum()) / n
    var = over_processes(((x - mean) ** 2 * mask).sum()) / n * n / (n - 1)  # unbiased (Bessel's correction)
    whitened = (x - mean) * torch.rsqrt(var + WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ---------------------------------------------------------------------------------------------
# KL penalty and rewards
# ---------------------------------------------------------------------------------------------

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi; (B, T) -> (B, T).

    With the log-ratio r = log pi(y_t) - log pi_ref(y_t) (Schulman 2020, "Approximating KL
    divergence", http://joschu.net/blog/kl-approx.html):

        k1 = r                    unbiased, high variance, can be negative (Ziegler et al. 2019)
        k2 = r^2 / 2              biased, low variance, >= 0
        k3 = exp(-r) - 1 + r      unbiased, low variance, >= 0 (since e^x >= 1 + x)

    No masking here: ``token_rewards`` masks.
    """
    r = logprobs - ref_logprobs  # (B, T)
    if kind == "k1":
        return r
    if kind == "k2":
        return 0.5 * r**2
    if kind == "k3":
        return torch.expm1(-r) + r  # expm1(-r) = exp(-r) - 1, accurate for small r
    raise ValueError(f"kl kind must be one of {KL_KINDS}, got {kind!r}")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of each row's last valid token (the last 1 in the row)."""
    if (mask.sum(dim=1) < 1).any():
        raise ValueError("every response needs at least one valid token (a row of mask is all zero)")
    columns = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # 1..T, so column 0 still beats "no 1"
    return (mask.bool() * columns).argmax(dim=1)


def token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float, kind: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL_t on every valid token, plus the score on the last one.

        R_t = -kl_coef * KL_t + 1[t = last valid token] * score

    (Ziegler et al. 2019 Eq. 2, spread per token as in Ouyang et al. 2022 and Huang et al. 2024.)
    scores: (B,) reward-model scores; the rest (B, T). Returns (rewards, kl), both (B, T), zero
    outside the mask. The score goes on each row's last valid token; a row with no valid token raises
    a ValueError. Call it under ``torch.no_grad()``: rewards are targets.
    """
    kl = kl_estimate(logprobs, ref_logprobs, kind) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    last = torch.nn.functional.one_hot(last_token_index(mask), num_classes=mask.shape[1])  # (B, T)
    rewards = rewards + last.to(rewards.dtype) * scores.unsqueeze(1)
    return rewards, kl


def eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float = -1.0) -> torch.Tensor:
    """Replace the score of responses that did not end with EOS by a constant ``penalty``.

    Huang et al. 2024, detail "penalize responses that miss EOS" (TRL's ``missing_eos_penalty``
    subtracts instead; here the score is replaced, as in Huang et al.'s code).
    scores: (B,); ended: (B,) bool, True where the response ended with EOS. Returns a new tensor.
    """
    return torch.where(ended.bool(), scores, torch.full_like(scores, penalty))


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, Eq. 16), backwards over time.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V

    The episode ends at the response's last valid token: V_{t+1} = 0 and A_{t+1} = 0 there
    (padding is masked out of rewards and values first, so it contributes nothing; prompt columns
    before the response come earlier in time and do not feed back into it). Returns (advantages, returns), both (B, T), zero outside the mask, and detached: they
    are regression and policy-gradient targets. No whitening here; see ``masked_whiten``.
    """
    rewards, values, mask = rewards.detach() * mask, values.detach() * mask, mask.to(values.dtype)
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)  # (B, T)
    next_adv = torch.zeros_like(values[:, 0])  # (B,) A_{t+1}
    next_value = torch.zeros_like(values[:, 0])  # (B,) V_{t+1}, already 0 on padding
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) elementwise, any shape: PPO's clipped surrogate as a
    loss per token (PPO, GRPO) or per sequence (RLOO's sequence-level ratio), before any reduction."""
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps))


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, Eq. 7), as a loss to minimise.

        ratio = exp(logprobs - old_logprobs)
        loss  = mean_m( max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) )

    All inputs (B, T); the mean is over valid tokens of the whole batch (TRL, Huang et al.).
    Metrics (scalars, detached):
      ``policy/approxkl`` = mean_m(0.5 * (logprobs - old_logprobs)^2) (the k2 estimator, as TRL);
      ``policy/clipfrac`` = mean_m(|ratio - 1| > eps), the fraction of tokens outside the trust
      region (cleanrl's definition; TRL's counts only tokens where the clipped term wins the max).
    """
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    loss = masked_mean(clipped_surrogate(ratio, advantages, clip_eps), mask)
    with torch.no_grad():
        metrics = {
            "policy/approxkl": masked_mean(0.5 * log_ratio**2, mask),
            "policy/clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask),
        }
    return loss, metrics


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: OpenAI baselines' ppo2, kept by Ziegler et al. 2019's code, TRL and Huang et al. 2024.

        V_clip = clip(V, V_old - c, V_old + c)
        loss   = 0.5 * mean_m( max((V - R)^2, (V_clip - R)^2) )

    All inputs (B, T). ``val/clipfrac`` (detached) = mean_m((V_clip - R)^2 > (V - R)^2): the
    fraction of tokens where the clipped term wins the max, TRL's definition.
    """
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # (B, T)
    vf_loss1 = (values - returns) ** 2
    vf_loss2 = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)
    with torch.no_grad():
        metrics = {"val/clipfrac": masked_mean((vf_loss2 > vf_loss1).float(), mask)}
    return loss, metrics


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over valid entries; nan when Var[R] = 0.

    1 means perfect value predictions, 0 no better than a constant, < 0 worse. Both variances are
    biased (the n / (n - 1) factors cancel), so a single valid token gives nan, not an error.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return torch.tensor(float("nan"), dtype=returns.dtype, device=returns.device)
    return 1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers
# ---------------------------------------------------------------------------------------------


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2), as in TRL and lm-human-preferences.

        e_t    = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta  *= 1 + e_t * n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move ``value`` towards the coefficient that would keep the KL at ``target``."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon


class FixedKLController:
    """Constant KL coefficient with the adaptive controller's interface."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Do nothing: the coefficient is fixed."""
