"""Hand-computed tests for SimPO and CPO (tiny tensors, derivations in the docstrings)."""

import math

import pytest
import torch
from torch.testing import assert_close

from zoo.losses import CPOLoss, SequenceLogps, SimPOLoss
from zoo.losses.base import LossOutput


def seqs(rows, mask):
    m = torch.tensor(mask, dtype=torch.float32)
    return SequenceLogps(token_logps=torch.tensor(rows) * m, completion_mask=m)


# chosen rows first. chosen 1: tokens (-1, -3) -> sum -4, mean -2; chosen 2: (-2) -> sum -2, mean -2
# rejected 1: (-6) -> sum -6, mean -6; rejected 2: (-0.5, -1.5) -> sum -2, mean -1
POLICY = seqs([[-1.0, -3.0], [-2.0, 0.0], [-6.0, 0.0], [-0.5, -1.5]], [[1, 1], [1, 0], [1, 0], [1, 1]])


def softplus(x):
    return math.log1p(math.exp(x))  # -log sigmoid(-x)


def test_simpo_hand_computed():
    """beta = 2, gamma = 1: h = beta * (mean_w - mean_l) - gamma
    pair 1: 2 * (-2 - (-6)) - 1 = 7;  pair 2: 2 * (-2 - (-1)) - 1 = -3
    loss = -log sigmoid(h) = softplus(-h) = (log(1 + e^-7), log(1 + e^3)) = (0.000911, 3.048587);
    rewards = beta * mean: chosen (-4, -4), rejected (-12, -2); logps are the means."""
    out = SimPOLoss(beta=2.0, gamma=1.0)(POLICY)
    assert_close(out.loss, torch.tensor([softplus(-7), softplus(3)]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([-4.0, -4.0]))
    assert_close(out.metrics["rewards/rejected"], torch.tensor([-12.0, -2.0]))
    assert_close(out.metrics["logps/chosen"], torch.tensor([-2.0, -2.0]))
    assert_close(out.metrics["logps/rejected"], torch.tensor([-6.0, -1.0]))


def test_simpo_length_normalises_and_wants_a_margin_of_gamma():
    """Doubling a response's length at the same per-token log-prob leaves SimPO unchanged (DPO's summed
    log-probs would move); at mean_w - mean_l = gamma / beta the margin is exactly zero: loss log 2."""
    short = seqs([[-1.0, 0.0], [-2.0, 0.0]], [[1, 0], [1, 0]])
    long = seqs([[-1.0, -1.0], [-2.0, 0.0]], [[1, 1], [1, 0]])
    loss = SimPOLoss(beta=2.0, gamma=1.0)
    assert_close(loss(short).loss, loss(long).loss)
    at_target = seqs([[-1.0], [-1.5]], [[1], [1]])  # 2 * 0.5 - 1 = 0
    assert_close(loss(at_target).loss, torch.tensor([math.log(2.0)]))


def test_simpo_gradient_signs():
    tokens = torch.tensor([[-1.0], [-1.0]], requires_grad=True)
    SimPOLoss()(SequenceLogps(tokens, torch.ones(2, 1))).loss.sum().backward()
    assert tokens.grad[0].item() < 0 < tokens.grad[1].item()  # chosen up lowers the loss, rejected up raises it


def test_cpo_hand_computed():
    """beta = 0.5, alpha = 1: h = beta * (sum_w - sum_l)
    pair 1: 0.5 * (-4 - (-6)) = 1;  pair 2: 0.5 * (-2 - (-2)) = 0
    preference loss = (softplus(-1), softplus(0)) = (0.313262, 0.693147)
    NLL of the chosen completions: tokens 1, 3, 2 -> sums (4, 2), 3 tokens: token mean 6 / 3 = 2
    objective = mean(preference) + alpha * 2 = 0.503204 + 2 = 2.503204."""
    out = CPOLoss(beta=0.5, alpha=1.0)(POLICY)
    assert_close(out.loss, torch.tensor([softplus(-1), softplus(0)]))
    assert_close(out.token_loss, torch.tensor([4.0, 2.0]))
    assert_close(out.num_tokens, torch.tensor(3.0))
    assert_close(out.metrics["nll_loss"], torch.tensor(2.0))
    assert_close(out.objective(), torch.tensor((softplus(-1) + softplus(0)) / 2 + 2.0))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([-2.0, -1.0]))  # beta * summed log-prob
    assert_close(CPOLoss(beta=0.5, alpha=0.25)(POLICY).objective(),
                 torch.tensor((softplus(-1) + softplus(0)) / 2 + 0.5))


def test_cpo_counts_the_chosen_completion_tokens_of_a_batch():
    batch = {"completion_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 1, 1]])}
    assert CPOLoss().count_tokens(batch).item() == 4  # the chosen rows, shifted by one: (0, 1, 1) and (1, 1, 0)


@pytest.mark.parametrize("make", [lambda: SimPOLoss(beta=0), lambda: SimPOLoss(label_smoothing=0.5),
                                  lambda: CPOLoss(beta=-1), lambda: CPOLoss(alpha=-0.1)])
def test_bad_arguments_fail_clearly(make):
    with pytest.raises(ValueError, match="algo.loss"):
        make()


def test_declarations():
    for loss in (SimPOLoss(), CPOLoss()):
        assert loss.batch_kind == "pairs" and not loss.needs_reference and loss.prepend_bos
    assert isinstance(SimPOLoss()(POLICY), LossOutput)
