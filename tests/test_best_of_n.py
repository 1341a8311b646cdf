"""Best-of-N's exact expectations over a pool (zoo/best_of_n.py), computed by hand on tiny pools."""

import itertools
import math

import pytest
import torch

from zoo.best_of_n import keep_probs, kl_bound, kl_estimate, subset_keep_probs, win_probs


def test_keep_probs_by_hand():
    # best of 2 draws with replacement from {1, 2, 3}: the max is 1 only if both draws are 1 (1/9),
    # at most 2 with prob (2/3)^2 = 4/9, so exactly 2 with 4/9 - 1/9 = 3/9, and 3 with 1 - 4/9 = 5/9
    probs = keep_probs(torch.tensor([[1.0, 2.0, 3.0]]), 2)
    assert probs.tolist()[0] == pytest.approx([1 / 9, 3 / 9, 5 / 9])


def test_keep_probs_ignore_pool_order_and_sum_to_one():
    probs = keep_probs(torch.tensor([[3.0, 1.0, 2.0], [0.5, -1.0, 4.0]]), 4)
    assert probs.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert probs[0].tolist() == pytest.approx([1 - (2 / 3) ** 4, (1 / 3) ** 4, (2 / 3) ** 4 - (1 / 3) ** 4])


def test_tied_samples_share_their_level():
    # {1, 2, 2}, N = 2: the max is 1 with (1/3)^2 = 1/9, else 2 (8/9), split over the two tied samples
    assert keep_probs(torch.tensor([[1.0, 2.0, 2.0]]), 2).tolist()[0] == pytest.approx([1 / 9, 4 / 9, 4 / 9])


def test_best_of_one_is_the_reference():
    scores = torch.randn(3, 8)
    assert keep_probs(scores, 1).flatten().tolist() == pytest.approx([1 / 8] * 24)
    assert kl_estimate(scores, 1).tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_kl_bound_values():
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)  # 0.193
    assert kl_bound(64) == pytest.approx(math.log(64) - 63 / 64)  # 3.175
    with pytest.raises(ValueError, match="N >= 1"):
        kl_bound(0)


def test_kl_estimate_by_hand_distinct_and_repeated():
    # M = 4, N = 2. Distinct scores: w = [1, 3, 5, 7] / 16 and KL = sum w log(4 w) = 0.1740.
    # Two identical completions at the top (scores 2, 2): w = [1/16, 3/16, 3/8, 3/8] and KL = 0.1636. Both are
    # below the bound log 2 - 1/2 = 0.1931: the small pool's discreteness, and further where completions repeat.
    distinct = kl_estimate(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), 2).item()
    repeated = kl_estimate(torch.tensor([[0.0, 1.0, 2.0, 2.0]]), 2).item()
    w = [1 / 16, 3 / 16, 5 / 16, 7 / 16]
    assert distinct == pytest.approx(sum(x * math.log(4 * x) for x in w))
    assert distinct == pytest.approx(0.1740, abs=1e-4)
    assert repeated == pytest.approx(1 / 16 * math.log(1 / 4) + 3 / 16 * math.log(3 / 4) + 2 * 3 / 8 * math.log(3 / 2))
    assert repeated == pytest.approx(0.1636, abs=1e-4)
    assert repeated < distinct < kl_bound(2)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_kl_estimate_meets_the_bound_on_a_large_pool_of_distinct_completions(n):
    # continuous scores: KL is exactly log N - (N-1)/N in the limit; a pool of 2048 is within 0.01 of it
    torch.manual_seed(0)
    estimate = kl_estimate(torch.randn(2, 2048), n)
    assert estimate.tolist() == pytest.approx([kl_bound(n)] * 2, abs=0.01)
    assert (estimate <= kl_bound(n) + 1e-9).all()


def test_win_probs_count_ties_half_and_leave_the_sample_itself_out():
    # gold [0, 1, 1]: sample 0 beats neither other (0); samples 1 and 2 beat sample 0 and tie each other (1.5 / 2)
    assert win_probs(torch.tensor([[0.0, 1.0, 1.0]])).tolist()[0] == pytest.approx([0.0, 0.75, 0.75])
    # the reference against itself wins half the time on average
    assert win_probs(torch.randn(4, 16)).mean().item() == pytest.approx(0.5)


def test_subset_keep_probs_by_hand():
    # the 2-subsets of {1, 2, 3} are {1,2}, {1,3}, {2,3}: the best is 2 once and 3 twice
    assert subset_keep_probs(torch.tensor([[1.0, 2.0, 3.0]]), 2).tolist()[0] == pytest.approx([0.0, 1 / 3, 2 / 3])
    # {1, 2, 2}: every 2-subset holds a 2, shared by the two tied samples
    assert subset_keep_probs(torch.tensor([[1.0, 2.0, 2.0]]), 2).tolist()[0] == pytest.approx([0.0, 0.5, 0.5])
    # N = M keeps the pool's best; N = 1 is the pool itself
    assert subset_keep_probs(torch.tensor([[0.3, 0.9, 0.1]]), 3).tolist()[0] == pytest.approx([0.0, 1.0, 0.0])
    assert subset_keep_probs(torch.tensor([[0.3, 0.9, 0.1]]), 1).tolist()[0] == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="1..3"):
        subset_keep_probs(torch.tensor([[0.3, 0.9, 0.1]]), 4)


def test_subset_weights_average_best_of_n_over_every_subset():
    # the weighted gold equals the mean, over all C(8, 3) subsets, of the gold of each subset's top-scored sample
    torch.manual_seed(1)
    scores, gold = torch.randn(1, 8), torch.randn(1, 8)
    subsets = list(itertools.combinations(range(8), 3))
    brute = sum(gold[0, max(s, key=lambda j: scores[0, j])].item() for s in subsets) / len(subsets)
    assert (subset_keep_probs(scores, 3) * gold).sum().item() == pytest.approx(brute)
