"""Hand-computed tests for KTO and ORPO: tiny tensors, derivations in the docstrings.

Notation: s(x) = sigmoid(x). Most KTO tests use one-token sequences, so a row's summed log-prob is
the number given; the ORPO tests use masks of different lengths so the length average matters.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from zoo.losses.base import SequenceLogps
from zoo.losses.kto import KTOLoss, kto_weight_check
from zoo.losses.orpo import ORPOLoss, log1mexp


def s(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def seqs(rows: list[list[float]], mask: list[list[int]], labels: list[bool] | None = None) -> SequenceLogps:
    """SequenceLogps from per-token log-probs and a completion mask (masked entries are zeroed)."""
    m = torch.tensor(mask, dtype=torch.float32)
    lab = None if labels is None else torch.tensor(labels, dtype=torch.bool)
    return SequenceLogps(token_logps=torch.tensor(rows) * m, completion_mask=m, labels=lab)


def unpaired(examples: list[float], kl_rows: list[float], labels: list[bool] | None = None) -> SequenceLogps:
    """One token per row: N examples, then N KL rows (the unpaired collator's layout)."""
    rows = [[x] for x in examples + kl_rows]
    return seqs(rows, [[1]] * len(rows), labels)


# ----------------------------------------------------------------------------------------------- KTO


def test_kto_mixed_batch_hand_computed():
    """beta = 0.5; labels (desirable, undesirable).
    examples: policy (-1, -3), reference (-2, -2) -> r = (1, -1)
    KL rows:  policy (-2, -2), reference (-3, -2) -> log-ratios (1, 0), z0 = max(0, 0.5) = 0.5
    desirable:   1 - s(0.5 * (1 - 0.5))    = 1 - s(0.25) = 0.437823
    undesirable: 1 - s(0.5 * (0.5 - (-1))) = 1 - s(0.75) = 0.320821
    rewards = beta * r: chosen (0.5), rejected (-0.5), margin 1.0; logps are the policy's summed log-probs."""
    policy = unpaired([-1.0, -3.0], [-2.0, -2.0], labels=[True, False])
    reference = unpaired([-2.0, -2.0], [-3.0, -2.0])
    out = KTOLoss(beta=0.5)(policy, reference)
    assert_close(out.loss, torch.tensor([1 - s(0.25), 1 - s(0.75)]))
    assert_close(out.loss, torch.tensor([0.437823, 0.320821]), atol=1e-6, rtol=0)
    m = out.metrics
    assert_close(m["kl"], torch.tensor(0.5))
    assert_close(m["rewards/chosen"], torch.tensor([0.5]))
    assert_close(m["rewards/rejected"], torch.tensor([-0.5]))
    assert_close(m["rewards/margins"], torch.tensor(1.0))
    assert_close(m["logps/chosen"], torch.tensor([-1.0]))
    assert_close(m["logps/rejected"], torch.tensor([-3.0]))


def test_kto_labels_keep_batch_order_and_weights_scale():
    """Same numbers with the labels reversed (undesirable first) and weights lambda_D = 2, lambda_U = 3.
    examples r = (1, -1), z0 = 0.5, beta = 0.5:
    row 0 undesirable: 3 * (1 - s(0.5 * (0.5 - 1)))  = 3 * (1 - s(-0.25)) = 3 * s(0.25)
    row 1 desirable:   2 * (1 - s(0.5 * (-1 - 0.5))) = 2 * (1 - s(-0.75)) = 2 * s(0.75)
    Losses stay in batch order (not regrouped chosen-first as TRL concatenates them)."""
    policy = unpaired([-1.0, -3.0], [-2.0, -2.0], labels=[False, True])
    reference = unpaired([-2.0, -2.0], [-3.0, -2.0])
    base = KTOLoss(beta=0.5)(policy, reference).loss
    assert_close(base, torch.tensor([s(0.25), s(0.75)]))
    out = KTOLoss(beta=0.5, desirable_weight=2.0, undesirable_weight=3.0)(policy, reference)
    assert_close(out.loss, torch.tensor([3 * s(0.25), 2 * s(0.75)]))
    assert_close(out.metrics["rewards/chosen"], torch.tensor([-0.5]))
    assert_close(out.metrics["rewards/rejected"], torch.tensor([0.5]))
    assert_close(out.metrics["rewards/margins"], torch.tensor(-1.0))


def test_kto_reference_point_is_clamped_at_zero():
    """KL rows: policy (-3, -4), reference (-2, -2) -> log-ratios (-1, -2), mean -1.5 -> z0 = 0 (and kl logs 0,
    the clamped value, as TRL does). beta = 1, labels (D, U), examples r = (2, 2):
    desirable 1 - s(2 - 0) = s(-2) = 0.119203; undesirable 1 - s(0 - 2) = s(2) = 0.880797.
    Positive case: KL rows policy (0, 0) vs reference (-1, -3) -> mean 2 = z0, so r - z0 = 0 and both losses
    are 1 - s(0) = 0.5 (a sum instead of a mean over KL rows would give z0 = 4 and different losses)."""
    labels = [True, False]
    reference_examples = [-3.0, -3.0]
    policy = unpaired([-1.0, -1.0], [-3.0, -4.0], labels)
    out = KTOLoss(beta=1.0)(policy, unpaired(reference_examples, [-2.0, -2.0]))
    assert_close(out.metrics["kl"], torch.tensor(0.0))
    assert_close(out.loss, torch.tensor([s(-2.0), s(2.0)]))

    policy = unpaired([-1.0, -1.0], [0.0, 0.0], labels)
    out = KTOLoss(beta=1.0)(policy, unpaired(reference_examples, [-1.0, -3.0]))
    assert_close(out.metrics["kl"], torch.tensor(2.0))
    assert_close(out.loss, torch.tensor([0.5, 0.5]))


def test_kto_all_desirable_batch():
    """labels (D, D), beta = 0.1; r = (-1 - (-2), -4 - (-2)) = (1, -2); KL rows log-ratios (0, 0) -> z0 = 0.
    loss = 1 - s(0.1 * r) = (s(-0.1), s(0.2)) = (0.475021, 0.549834).
    No undesirable example: the rejected keys and the margin are absent (not NaN, not 0)."""
    out = KTOLoss(beta=0.1)(unpaired([-1.0, -4.0], [-2.0, -2.0], [True, True]), unpaired([-2.0, -2.0], [-2.0, -2.0]))
    assert_close(out.loss, torch.tensor([s(-0.1), s(0.2)]))
    assert torch.isfinite(out.loss.mean())
    assert set(out.metrics) == {"kl", "rewards/chosen", "logps/chosen"}
    assert_close(out.metrics["rewards/chosen"], torch.tensor([0.1, -0.2]))
    assert_close(out.metrics["logps/chosen"], torch.tensor([-1.0, -4.0]))
    assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_kto_all_undesirable_batch():
    """labels (U, U), beta = 0.1; r = (1, -2), z0 = 0.
    loss = 1 - s(0.1 * (0 - r)) = s(0.1 * r) = (s(0.1), s(-0.2)) = (0.524979, 0.450166)."""
    out = KTOLoss(beta=0.1)(unpaired([-1.0, -4.0], [-2.0, -2.0], [False, False]), unpaired([-2.0, -2.0], [-2.0, -2.0]))
    assert_close(out.loss, torch.tensor([s(0.1), s(-0.2)]))
    assert set(out.metrics) == {"kl", "rewards/rejected", "logps/rejected"}
    assert_close(out.metrics["rewards/rejected"], torch.tensor([0.1, -0.2]))
    assert all(torch.isfinite(v).all() for v in out.metrics.values())


def test_kto_gradient_signs_and_detached_reference_point():
    """d/dr [lambda (1 - s(beta (r - z0)))] = -lambda beta s'(.) < 0: raising a desirable example's log-prob lowers
    its loss; for an undesirable one the sign flips. At r = z0 (all log-ratios 0 here) s' = 1/4, so the gradients
    are -beta/4 = -0.025 and +0.025. z0 is detached, so the KL rows get exactly zero gradient."""
    token_logps = torch.full((4, 1), -1.0, requires_grad=True)
    policy = SequenceLogps(token_logps, torch.ones(4, 1), labels=torch.tensor([True, False]))
    KTOLoss(beta=0.1)(policy, unpaired([-1.0, -1.0], [-1.0, -1.0])).loss.sum().backward()
    grad = token_logps.grad.squeeze(-1)
    assert grad[0] < 0 < grad[1]
    assert_close(grad, torch.tensor([-0.025, 0.025, 0.0, 0.0]))


def test_kto_needs_labels_and_the_kl_rows():
    reference = unpaired([-1.0, -1.0], [-1.0, -1.0])
    with pytest.raises(ValueError, match="labels"):
        KTOLoss()(unpaired([-1.0, -1.0], [-1.0, -1.0]), reference)
    with pytest.raises(ValueError, match="2 \\* 4 rows"):  # 4 labels for 4 rows: the KL rows are missing
        KTOLoss()(unpaired([-1.0, -1.0], [-1.0, -1.0], [True, False, True, False]), reference)


@pytest.mark.parametrize("bad, arg", [({"beta": 0.0}, "beta"), ({"beta": -1.0}, "beta"),
                                      ({"desirable_weight": 0.0}, "desirable_weight"),
                                      ({"undesirable_weight": -2.0}, "undesirable_weight")])
def test_kto_bad_arguments_fail_clearly(bad, arg):
    with pytest.raises(ValueError, match=f"algo.loss.{arg}"):
        KTOLoss(**bad)


def test_kto_weight_check_inside_the_recommended_range():
    """ratio = lambda_D n_D / (lambda_U n_U): balanced 1*100/(1*100) = 1 (lower edge), 1*4/(1*3) = 4/3 (upper edge),
    and the paper's 1:10 fix: lambda_D = 12 with n_D = 100, n_U = 1000 gives 1200/1000 = 1.2."""
    assert kto_weight_check(1.0, 1.0, 100, 100) is None
    assert kto_weight_check(1.0, 1.0, 4, 3) is None
    assert kto_weight_check(12.0, 1.0, 100, 1000) is None
    assert kto_weight_check(1.0, 1.0, 0, 50) is None  # one class only: nothing to balance


def test_kto_weight_check_outside_the_range_says_what_to_set():
    """1:10 imbalance, default weights: ratio = 100 / 1000 = 0.1 < 1. With lambda_U = 1 the ratio lies in [1, 4/3]
    for lambda_D in [1000/100, (4/3) 1000/100] = [10, 13.33]; with lambda_D = 1, for lambda_U in
    [100 / ((4/3) 1000), 100 / 1000] = [0.075, 0.1].
    Reversed (n_D = 1000, n_U = 100): ratio 10 > 4/3; lambda_D in [0.1, 0.1333] or lambda_U in [7.5, 10].
    Just above the top: 1 * 3 / (1 * 2) = 1.5 > 4/3 -> lambda_D in [0.6667, 0.8889]."""
    msg = kto_weight_check(1.0, 1.0, 100, 1000)
    assert msg is not None and "= 0.1," in msg
    assert "algo.loss.desirable_weight in [10, 13.33]" in msg
    assert "algo.loss.undesirable_weight in [0.075, 0.1]" in msg
    msg = kto_weight_check(1.0, 1.0, 1000, 100)
    assert "= 10," in msg and "desirable_weight in [0.1, 0.1333]" in msg and "undesirable_weight in [7.5, 10]" in msg
    msg = kto_weight_check(1.0, 1.0, 3, 2)
    assert msg is not None and "desirable_weight in [0.6667, 0.8889]" in msg
    # following the advice removes the warning
    assert kto_weight_check(10.0, 1.0, 100, 1000) is None
    assert kto_weight_check(1.0, 7.5, 1000, 100) is None


# ---------------------------------------------------------------------------------------------- ORPO


def orpo_batch() -> SequenceLogps:
    """2 pairs, chosen rows first; the masked entries (99) must be ignored.
    pair 1: chosen (-0.5, -1.0, -1.5) mean -1.0 (3 tokens); rejected (-2.0) mean -2.0 (1 token)
    pair 2: chosen (-0.4, -0.6) mean -0.5 (2 tokens);       rejected (-0.1, -0.2, -0.3) mean -0.2 (3 tokens)"""
    rows = [[-0.5, -1.0, -1.5], [-0.4, -0.6, 99.0], [-2.0, 99.0, 99.0], [-0.1, -0.2, -0.3]]
    mask = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    return seqs(rows, mask)


def test_orpo_hand_computed():
    """log odds(m) = m - log(1 - e^m) = -log(e^-m - 1), m the length-averaged log-prob.
    pair 1: log odds ratio = -log(e - 1) + log(e^2 - 1) = log(e + 1) = 1.313262
    pair 2: log odds ratio = -log(e^0.5 - 1) + log(e^0.2 - 1) = log((e^0.2 - 1)/(e^0.5 - 1)) = -1.075020
    L_OR = -log s(ratio) = (0.238183, 1.368652)
    NLL, TRL's token mean over all chosen tokens: (0.5 + 1.0 + 1.5 + 0.4 + 0.6) / 5 = 4.0 / 5 = 0.8
      (a mean of per-example means would give (1.0 + 0.5) / 2 = 0.75): token_loss = the sums (3.0, 1.0) over
      num_tokens = 5, divided by the window's token count by the trainer
    beta = 0.5: loss (per pair) = 0.5 * L_OR = (0.119092, 0.684326); objective = 0.8 + 0.5 * mean(L_OR) = 1.201709
    rewards = beta * mean log-probs: chosen (-0.5, -0.25), rejected (-1.0, -0.1)."""
    r1, r2 = math.log(math.e + 1), math.log(math.expm1(0.2) / math.expm1(0.5))
    l_or = [math.log1p(math.exp(-r1)), math.log1p(math.exp(-r2))]
    out = ORPOLoss(beta=0.5, nll_on_prompt=False)(orpo_batch(), None)
    assert_close(out.loss, torch.tensor([0.5 * l_or[0], 0.5 * l_or[1]]))
    assert_close(out.loss, torch.tensor([0.119092, 0.684326]), atol=1e-6, rtol=0)
    assert_close(out.token_loss, torch.tensor([3.0, 1.0]))
    assert_close(out.num_tokens, torch.tensor(5.0))
    assert_close(out.objective(), torch.tensor(0.8 + 0.5 * (l_or[0] + l_or[1]) / 2))
    assert_close(out.objective(), torch.tensor(1.201709), atol=1e-6, rtol=0)
    # in a window of 2 micro-batches with 5 + 15 = 20 chosen tokens, this one's share: 0.5 * mean(L_OR) + 2 * 4 / 20
    assert_close(out.objective(window_tokens=20.0, micro_batches=2), torch.tensor(0.5 * (l_or[0] + l_or[1]) / 2 + 0.4))
    m = out.metrics
    assert_close(m["nll_loss"], torch.tensor(0.8))
    assert_close(m["log_odds_chosen"], torch.tensor([r1, r2]))
    assert_close(m["log_odds_ratio"], torch.tensor([-l_or[0], -l_or[1]]))
    assert_close(m["rewards/chosen"], torch.tensor([-0.5, -0.25]))
    assert_close(m["rewards/rejected"], torch.tensor([-1.0, -0.1]))
    assert_close(m["rewards/margins"], torch.tensor([0.5, -0.15]))
    assert_close(m["rewards/accuracies"], torch.tensor([1.0, 0.0]))
    assert_close(m["logps/chosen"], torch.tensor([-1.0, -0.5]))
    assert_close(m["logps/rejected"], torch.tensor([-2.0, -0.2]))


def test_orpo_nll_on_prompt_covers_the_prompt_tokens_too():
    """TRL's ORPO NLL (the default, nll_on_prompt=True) is the token mean over every real token of the chosen
    rows. Give the batch above one prompt token per row with log-prob -2.0 (chosen rows) before the completion:
    chosen real tokens: pair 1 (-2.0, -0.5, -1.0, -1.5), pair 2 (-2.0, -0.4, -0.6) -> NLL = (5.0 + 3.0) / 7
    = 8/7: token_loss (5.0, 3.0) over 7 tokens. The odds-ratio term still reads the completion only, so it is
    unchanged. count_tokens reads the same counts off a collated batch (shifted by one)."""
    batch = orpo_batch()
    prompt = torch.full((4, 1), -2.0)
    all_token_logps = torch.cat([prompt, batch.token_logps * batch.completion_mask], dim=1)  # (4, 4)
    token_mask = torch.cat([torch.ones(4, 1), batch.completion_mask], dim=1)
    completion_mask = torch.cat([torch.zeros(4, 1), batch.completion_mask], dim=1)
    full = SequenceLogps(all_token_logps * completion_mask, completion_mask, all_token_logps=all_token_logps,
                         token_mask=token_mask)
    with_prompt = ORPOLoss(beta=0.5)(full, None)
    without = ORPOLoss(beta=0.5, nll_on_prompt=False)(orpo_batch(), None)
    assert_close(with_prompt.metrics["nll_loss"], torch.tensor(8.0 / 7.0))
    assert_close(with_prompt.token_loss, torch.tensor([5.0, 3.0]))
    assert_close(with_prompt.num_tokens, torch.tensor(7.0))
    assert_close(with_prompt.objective() - without.objective(), torch.tensor(8.0 / 7.0 - 0.8))
    assert_close(with_prompt.loss, without.loss)
    # the collated batch behind `full`: 1 prompt token + the completion, right-padded; position 0 is never predicted
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    completion = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 1]])
    collated = {"attention_mask": attention, "completion_mask": completion}
    assert ORPOLoss(beta=0.5).count_tokens(collated) == 7
    assert ORPOLoss(beta=0.5, nll_on_prompt=False).count_tokens(collated) == 5
    assert_close(with_prompt.metrics["log_odds_ratio"], without.metrics["log_odds_ratio"])
    with pytest.raises(ValueError, match="all_token_logps"):
        ORPOLoss(beta=0.5)(orpo_batch(), None)


def test_orpo_gradient_signs():
    """Raising a chosen token's log-prob lowers the loss (NLL and odds-ratio terms agree); raising a rejected
    token's log-prob raises it; masked positions get no gradient."""
    batch = orpo_batch()
    token_logps = batch.token_logps.clone().requires_grad_(True)
    ORPOLoss(beta=0.1, nll_on_prompt=False)(SequenceLogps(token_logps, batch.completion_mask), None).objective().backward()
    grad, mask = token_logps.grad, batch.completion_mask.bool()
    assert (grad[:2][mask[:2]] < 0).all()
    assert (grad[2:][mask[2:]] > 0).all()
    assert (grad[~mask] == 0).all()


def test_orpo_is_finite_when_a_completion_has_probability_one():
    """A peaked model can give every completion token log-prob exactly 0 in float32: log(1 - P) = -inf there.
    The mean log-prob is clamped just below 0 before log1mexp, so loss and gradients stay finite; with both
    completions at probability 1 the odds ratio is 0 and L_OR = log 2."""
    token_logps = torch.zeros(2, 2, requires_grad=True)
    out = ORPOLoss(beta=1.0, nll_on_prompt=False)(SequenceLogps(token_logps, torch.ones(2, 2)), None)
    assert_close(out.objective(), torch.tensor(math.log(2.0)))
    out.objective().backward()
    assert torch.isfinite(token_logps.grad).all()


def test_log1mexp_matches_float64_reference():
    """log(1 - e^x) in float32 against float64 math: near 0 (x = -1e-8, where the naive log1p(-exp(x)) is
    log1p(-1) = -inf in float32), around the branch point -ln 2, and far out (x = -50, where the naive
    log(-expm1(x)) rounds to log(1) = 0 instead of -1.93e-22)."""
    xs = [-1e-8, -1e-4, -0.1, -0.69314, -math.log(2.0), -0.69316, -1.0, -5.0, -20.0, -50.0]

    def reference(x: float) -> float:
        return math.log(-math.expm1(x)) if x > -math.log(2.0) else math.log1p(-math.exp(x))

    got = log1mexp(torch.tensor(xs, dtype=torch.float32)).double()
    want = torch.tensor([reference(float(torch.tensor(x, dtype=torch.float32))) for x in xs], dtype=torch.float64)
    assert_close(got, want, rtol=1e-6, atol=0)
    assert_close(got[0].item(), -18.420680748952364, rtol=1e-6, atol=0)
    assert_close(got[-1].item(), -1.9287498479639178e-22, rtol=1e-6, atol=0)
    # the naive forms fail exactly there, so the test can tell a wrong branch
    assert torch.log1p(-torch.exp(torch.tensor(-1e-8))).item() == -math.inf
    assert torch.log(-torch.expm1(torch.tensor(-50.0))).item() == 0.0
    # float64 in, float64 accuracy out; and at 0, -inf
    assert_close(log1mexp(torch.tensor([-1e-12], dtype=torch.float64)).item(), math.log(-math.expm1(-1e-12)))
    assert log1mexp(torch.tensor(0.0)).item() == -math.inf


def test_log1mexp_gradient_is_finite_on_both_branches():
    """d/dx log(1 - e^x) = -1 / (e^-x - 1): -1e8 at x = -1e-8 (approximately), -e^-50 at x = -50; neither branch
    may leak a NaN or inf from the other one into the gradient."""
    x = torch.tensor([-1e-8, -50.0], dtype=torch.float64, requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert_close(x.grad, torch.tensor([-1.0 / math.expm1(1e-8), -1.0 / math.expm1(50.0)], dtype=torch.float64))


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_orpo_bad_beta_fails_clearly(beta):
    with pytest.raises(ValueError, match="algo.loss.beta"):
        ORPOLoss(beta=beta)


def test_declarations():
    """The trainer reads these instead of algorithm names."""
    assert (KTOLoss.batch_kind, KTOLoss.needs_reference, KTOLoss.model_output) == ("unpaired", True, "logps")
    assert (ORPOLoss.batch_kind, ORPOLoss.needs_reference, ORPOLoss.model_output) == ("pairs", False, "logps")
