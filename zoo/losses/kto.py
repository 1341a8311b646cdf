"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, https://arxiv.org/abs/2402.01306, Eq. 7).

KTO learns from unpaired binary feedback: each example is one completion y for a prompt x, labelled
desirable or undesirable. With the implicit log-ratio r(x, y) = log pi_theta(y|x) - log pi_ref(y|x)
and a reference point z0 (an estimate of KL(pi_theta || pi_ref)):

    L(x, y) = lambda_D * (1 - sigmoid(beta * (r(x, y) - z0)))   if y is desirable
              lambda_U * (1 - sigmoid(beta * (z0 - r(x, y))))   if y is undesirable

z0 is estimated as the paper (Sec. 4.1) and TRL do: the mean log-ratio of mismatched pairs
(x_i, y_j), j != i, over the micro-batch, averaged across processes, clamped at 0 and never
back-propagated through. lambda_D / lambda_U are ``desirable_weight`` / ``undesirable_weight``; the
paper (Eq. 8) recommends lambda_D * n_D / (lambda_U * n_U) in [1, 4/3], see :func:`kto_weight_check`.

Gradient accumulation: z0 and its mismatched pairs are formed per micro-batch, as in TRL (which also
averages z0 across processes only). ``trainer.grad_accum_steps=2`` at batch B is therefore the mean of
two batches of B, each with its own z0 and KL pairs, not one batch of 2B; the logged ``kl`` is the mean
of the micro-batches' z0. The per-example part of the loss is exact, as for DPO.

Batch layout (the unpaired collator guarantees it): ``policy`` and ``reference`` hold 2N rows, the
first N are the examples (x_i, y_i), the last N the KL rows (x_i, y_j) used only for z0;
``policy.labels`` is the (N,) bool tensor, True = desirable.

Metrics, with TRL's names and meanings (``KTOTrainer._compute_loss``):

- ``kl``: z0 *after* the clamp at 0, as TRL logs it (so it never goes negative);
- ``rewards/chosen``, ``logps/chosen``: beta * r and the summed policy log-prob of the desirable
  examples, ``rewards/rejected``, ``logps/rejected``: the same for the undesirable ones;
- ``rewards/margins``: mean chosen reward minus mean rejected reward.

A batch without desirable examples has no chosen mean (and symmetrically), so those keys are left
out of the batch's metrics instead of reported as NaN or 0: ``zoo.trainer._mean_metrics`` averages
each key over the steps where it appears, which is what TRL does as well (it only appends a value
when the count is non-zero). ``rewards/margins`` appears only when the batch has both kinds.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.distributed as dist

from zoo.losses.base import Loss, LossOutput, SequenceLogps

# Eq. 8 of the paper: lambda_D * n_D / (lambda_U * n_U) should lie in [1, 4/3].
WEIGHT_RATIO_RANGE = (1.0, 4.0 / 3.0)


def kto_weight_check(desirable_weight: float, undesirable_weight: float, n_desirable: int,
                     n_undesirable: int) -> str | None:
    """A warning when desirable_weight * n_D / (undesirable_weight * n_U) lies outside [1, 4/3] (Eq. 8), else None.

    The message gives the ``desirable_weight`` range that would bring the ratio inside with the
    current ``undesirable_weight`` (and the ``undesirable_weight`` range with the current
    ``desirable_weight``; change one, not both). With no desirable or no undesirable examples there
    is nothing to balance and None is returned.
    """
    if desirable_weight <= 0 or undesirable_weight <= 0:
        raise ValueError(f"KTO weights must be > 0, got desirable_weight={desirable_weight}, "
                         f"undesirable_weight={undesirable_weight}")
    if n_desirable < 0 or n_undesirable < 0:
        raise ValueError(f"example counts must be >= 0, got n_desirable={n_desirable}, n_undesirable={n_undesirable}")
    if n_desirable == 0 or n_undesirable == 0:
        return None
    lo, hi = WEIGHT_RATIO_RANGE
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    if lo * (1 - 1e-9) <= ratio <= hi * (1 + 1e-9):  # tolerance: 4/3 itself must count as inside
        return None
    d_lo = lo * undesirable_weight * n_undesirable / n_desirable  # desirable_weight bounds, undesirable_weight fixed
    d_hi = hi * undesirable_weight * n_undesirable / n_desirable
    u_lo = desirable_weight * n_desirable / (hi * n_undesirable)  # undesirable_weight bounds, desirable_weight fixed
    u_hi = desirable_weight * n_desirable / (lo * n_undesirable)
    return (f"KTO weight balance: desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = "
            f"{desirable_weight:g} * {n_desirable} / ({undesirable_weight:g} * {n_undesirable}) = {ratio:.4g}, "
            f"outside the range [1, 4/3] recommended by the KTO paper (Eq. 8). Set algo.loss.desirable_weight "
            f"in [{d_lo:.4g}, {d_hi:.4g}] (keeping undesirable_weight = {undesirable_weight:g}), or "
            f"algo.loss.undesirable_weight in [{u_lo:.4g}, {u_hi:.4g}] (keeping desirable_weight = "
            f"{desirable_weight:g}), not both.")


def _mean_across_processes(x: torch.Tensor) -> torch.Tensor:
    """Scalar mean over processes when torch.distributed is running (TRL: gather then mean); x itself otherwise."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)  # AVG is not supported by every backend (gloo)
        x = x / dist.get_world_size()
    return x


class KTOLoss(Loss):
    """KTO with the mismatched-pair KL estimate of the reference point z0 (TRL's ``loss_type="kto"``)."""

    batch_kind: ClassVar[str] = "unpaired"
    needs_reference: ClassVar[bool] = True
    model_output: ClassVar[str] = "logps"
    detached_second_half: ClassVar[bool] = True  # z0 is detached: the KL rows need no backward

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"algo.loss.beta must be > 0, got {beta}")
        if desirable_weight <= 0:
            raise ValueError(f"algo.loss.desirable_weight must be > 0, got {desirable_weight}")
        if undesirable_weight <= 0:
            raise ValueError(f"algo.loss.undesirable_weight must be > 0, got {undesirable_weight}")
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def data_warnings(self, rows: list[dict]) -> list[str]:
        """The paper's Eq. 8 balance check on the training rows' labels (see :func:`kto_weight_check`)."""
        n_desirable = sum(1 for r in rows if r["label"])
        message = kto_weight_check(self.desirable_weight, self.undesirable_weight, n_desirable, len(rows) - n_desirable)
        return [message] if message else []

    def forward(self, policy: SequenceLogps, reference: SequenceLogps | None) -> LossOutput:
        if reference is None:
            raise ValueError("KTOLoss needs reference log-probs (needs_reference = True)")
        labels = policy.labels
        if labels is None:
            raise ValueError("KTOLoss needs policy.labels: an (N,) bool tensor, True = desirable (unpaired batch)")
        policy_logps, reference_logps = policy.logps, reference.logps  # (2N,), (2N,)
        n = labels.shape[0]
        if policy_logps.shape[0] != 2 * n or reference_logps.shape[0] != 2 * n:
            raise ValueError(f"an unpaired batch with {n} labels needs 2 * {n} rows (examples, then KL rows); got "
                             f"{policy_logps.shape[0]} policy and {reference_logps.shape[0]} reference rows")
        desirable = labels.to(device=policy_logps.device, dtype=torch.bool)  # (N,)

        logratios = policy_logps[:n] - reference_logps[:n]  # (N,) r(x_i, y_i)
        kl_logratios = policy_logps[n:] - reference_logps[n:]  # (N,) r(x_i, y_j), j != i
        z0 = _mean_across_processes(kl_logratios.detach().mean()).clamp(min=0)  # scalar, no gradient

        desirable_loss = self.desirable_weight * (1 - torch.sigmoid(self.beta * (logratios - z0)))
        undesirable_loss = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - logratios)))
        loss = torch.where(desirable, desirable_loss, undesirable_loss)  # (N,), in batch order

        rewards = self.beta * logratios.detach()  # (N,)
        logps = policy_logps[:n].detach()
        metrics: dict[str, torch.Tensor] = {"kl": z0}
        if desirable.any():
            metrics["rewards/chosen"] = rewards[desirable]  # (n_D,)
            metrics["logps/chosen"] = logps[desirable]
        if (~desirable).any():
            metrics["rewards/rejected"] = rewards[~desirable]  # (n_U,)
            metrics["logps/rejected"] = logps[~desirable]
        if desirable.any() and (~desirable).any():
            metrics["rewards/margins"] = rewards[desirable].mean() - rewards[~desirable].mean()
        return LossOutput(loss, metrics)
