"""Hand-computed tests for the loss objects: tiny tensors, derivations in the docstrings."""

import math

import pytest
import torch
from torch.testing import assert_close

from zoo.losses import DPOLoss, IPOLoss, SFTLoss, SequenceLogps


def seqs(rows: list[list[float]], mask: list[list[int]]) -> SequenceLogps:
    """SequenceLogps from per-token log-probs and a completion mask (masked entries are ignored)."""
    m = torch.tensor(mask, dtype=torch.float32)
    return SequenceLogps(token_logps=torch.tensor(rows) * m, completion_mask=m)


def pairs(chosen: list[float], rejected: list[float]) -> SequenceLogps:
    """One token per sequence, so the sequence log-prob equals the given number; chosen rows first."""
    return seqs([[x] for x in chosen + rejected], [[1]] * (len(chosen) + len(rejected)))


def test_dpo_hand_computed():
    """beta = 0.5; policy chosen (-1, -2), rejected (-3, -1); reference all -2.
    rewards chosen   = 0.5 * ((-1, -2) - (-2, -2)) = (0.5, 0)
    rewards rejected = 0.5 * ((-3, -1) - (-2, -2)) = (-0.5, 0.5)
    h = (1.0, -0.5);  loss = -log sigmoid(h) = (log(1 + e^-1), log(1 + e^0.5)) = (0.313262, 0.974077)."""
    out = DPOLoss(beta=0.5)(pairs([-1, -2], [-3, -1]), pairs([-2, -2], [-2, -2]))
    assert_close(out.loss, torch.tensor([math.log1p(math.exp(-1)), math.log1p(math.exp(0.5))]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([0.5, 0.0]))
    assert_close(out.metrics["rewards/rejected"], torch.tensor([-0.5, 0.5]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([1.0, -0.5]))
    assert_close(out.metrics["rewards/accuracies"], torch.tensor([1.0, 0.0]))
    assert_close(out.metrics["logps/chosen"], torch.tensor([-1.0, -2.0]))
    assert_close(out.metrics["logps/rejected"], torch.tensor([-3.0, -1.0]))


def test_cdpo_label_smoothing_hand_computed():
    """cDPO with eps = 0.2 on the same h = (1.0, -0.5):
    -(1-eps) log s(h) - eps log s(-h) = -log s(h) + eps * h (since log s(h) - log s(-h) = h)
    = (0.313262 + 0.2, 0.974077 - 0.1) = (0.513262, 0.874077)."""
    out = DPOLoss(beta=0.5, label_smoothing=0.2)(pairs([-1, -2], [-3, -1]), pairs([-2, -2], [-2, -2]))
    assert_close(out.loss, torch.tensor([math.log1p(math.exp(-1)) + 0.2, math.log1p(math.exp(0.5)) - 0.1]))


def test_dpo_gradient_signs():
    """Raising the chosen log-prob lowers the loss; raising the rejected log-prob raises it."""
    chosen = torch.tensor([[-1.0]], requires_grad=True)
    rejected = torch.tensor([[-1.0]], requires_grad=True)
    mask = torch.ones(2, 1)
    policy = SequenceLogps(torch.cat([chosen, rejected]), mask)
    DPOLoss(beta=0.1)(policy, pairs([-1.0], [-1.0])).loss.sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()
    # At h = 0 the gradient is -beta * sigmoid(0) = -0.05 for the chosen side.
    assert_close(chosen.grad, torch.tensor([[-0.05]]))


def test_ipo_hand_computed():
    """beta = 0.25 -> target 1 / (2 beta) = 2. Chosen completions have 2 tokens, rejected 1.
    pair 1: chosen log-ratio (-1) - (-3) = 2, per token 1; rejected (-4) - (-2) = -2, per token -2;
            h = 3, loss = (3 - 2)^2 = 1.
    pair 2: chosen log-ratio 0; rejected (-1) - (-2) = 1; h = -1, loss = (-1 - 2)^2 = 9.
    rewards/* are beta * unnormalised log-ratios: chosen (0.5, 0), rejected (-0.5, 0.25)."""
    mask = [[1, 1], [1, 1], [1, 0], [1, 0]]
    policy = seqs([[-0.5, -0.5], [-1.0, -1.0], [-4.0, 0.0], [-1.0, 0.0]], mask)
    reference = seqs([[-1.5, -1.5], [-1.0, -1.0], [-2.0, 0.0], [-2.0, 0.0]], mask)
    out = IPOLoss(beta=0.25)(policy, reference)
    assert_close(out.loss, torch.tensor([1.0, 9.0]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([0.5, 0.0]))
    assert_close(out.metrics["rewards/rejected"], torch.tensor([-0.5, 0.25]))


def test_ipo_is_minimised_at_the_target_gap():
    """The loss is zero exactly when the per-token log-ratio gap equals 1 / (2 beta) = 5 (beta 0.1)."""
    out = IPOLoss(beta=0.1)(pairs([5.0], [0.0]), pairs([0.0], [0.0]))
    assert_close(out.loss, torch.tensor([0.0]))


def test_sft_hand_computed():
    """Row 1: tokens (-1, -3) -> NLL per token 2. Row 2: one completion token -0.5 (the second is padding) -> 0.5."""
    out = SFTLoss()(seqs([[-1.0, -3.0], [-0.5, -7.0]], [[1, 1], [1, 0]]), None)
    assert_close(out.loss, torch.tensor([2.0, 0.5]))


@pytest.mark.parametrize("bad", [{"beta": 0.0}, {"beta": -1.0}, {"beta": 0.1, "label_smoothing": 0.5}])
def test_bad_loss_arguments_fail_clearly(bad):
    with pytest.raises(ValueError, match="algo.loss"):
        DPOLoss(**bad)


def test_declarations():
    """The trainer reads these instead of algorithm names."""
    assert (SFTLoss.batch_kind, SFTLoss.needs_reference) == ("demonstrations", False)
    assert (DPOLoss.batch_kind, DPOLoss.needs_reference) == ("pairs", True)
    assert (IPOLoss.batch_kind, IPOLoss.needs_reference) == ("pairs", True)


def test_bradley_terry_hand_computed():
    """Scores: chosen (2, 0), rejected (1, 1); margin 0, centering c = 0.01.
    pair 1: -log sigmoid(2 - 1) + 0.01 * (2 + 1)^2 = 0.313262 + 0.09 = 0.403262
    pair 2: -log sigmoid(0 - 1) + 0.01 * (0 + 1)^2 = 1.313262 + 0.01 = 1.323262
    With margin 1 and no centering, pair 1 becomes -log sigmoid(0) = log 2."""
    from zoo.losses import BradleyTerryLoss, SequenceScores

    scores = SequenceScores(torch.tensor([2.0, 0.0, 1.0, 1.0]))
    out = BradleyTerryLoss(margin=0.0, center_coef=0.01)(scores)
    assert_close(out.loss, torch.tensor([math.log1p(math.exp(-1)) + 0.09, math.log1p(math.exp(1)) + 0.01]))
    assert_close(out.metrics["rewards/accuracies"], torch.tensor([1.0, 0.0]))
    assert_close(out.metrics["rewards/margins"], torch.tensor([1.0, -1.0]))
    out = BradleyTerryLoss(margin=1.0, center_coef=0.0)(scores)
    assert_close(out.loss[0], torch.tensor(math.log(2.0)))


def test_bradley_terry_gradient_signs():
    """The loss pushes the chosen score up and the rejected score down."""
    from zoo.losses import BradleyTerryLoss, SequenceScores

    scores = torch.tensor([0.5, 0.5], requires_grad=True)
    BradleyTerryLoss(center_coef=0.0)(SequenceScores(scores)).loss.sum().backward()
    assert scores.grad[0] < 0 < scores.grad[1]
