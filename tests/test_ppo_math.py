"""Hand-computed tests for the PPO-RLHF building blocks: tiny tensors, derivations in the docstrings."""

import math
import threading

import pytest
import torch
from torch.testing import assert_close

from zoo.losses.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    eos_penalty,
    explained_variance,
    gae,
    kl_estimate,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    token_rewards,
)

# ---------------------------------------------------------------------------------------------
# Masked statistics and whitening
# ---------------------------------------------------------------------------------------------

# Valid entries 1, 2, 3, 5 (the 99s are padding): mean 2.75, deviations (-1.75, -0.75, 0.25, 2.25),
# sum of squares 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75 -> biased var 8.75 / 4 = 2.1875,
# unbiased var 8.75 / 3 = 35 / 12 = 2.916667, std 1.707825.
X = torch.tensor([[1.0, 2.0, 3.0, 99.0], [5.0, 99.0, 99.0, 99.0]])
X_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])


def test_masked_mean_and_var_ignore_padding():
    """Mean 2.75, biased var 2.1875, unbiased 35/12; per-row means (2, 5)."""
    assert_close(masked_mean(X, X_MASK), torch.tensor(2.75))
    assert_close(masked_mean(X, X_MASK, dim=1), torch.tensor([2.0, 5.0]))
    assert_close(masked_var(X, X_MASK, unbiased=False), torch.tensor(2.1875))
    assert_close(masked_var(X, X_MASK), torch.tensor(35 / 12))


def test_masked_var_unbiased_needs_two_entries():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def test_masked_whiten_hand_computed():
    """(x - 2.75) / sqrt(35/12 + 1e-8): valid entries (-1.024695, -0.439155, 0.146385, 1.317465);
    padding is 0; over the mask the result has mean 0 and unbiased variance 1."""
    std = math.sqrt(35 / 12 + 1e-8)
    out = masked_whiten(X, X_MASK)
    expected = torch.tensor([[-1.75 / std, -0.75 / std, 0.25 / std, 0.0], [2.25 / std, 0.0, 0.0, 0.0]])
    assert_close(out, expected)
    assert_close(masked_mean(out, X_MASK), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(masked_var(out, X_MASK), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_masked_whiten_without_mean_shift_keeps_the_mean():
    """shift_mean=False adds the mean 2.75 back: same scale, masked mean 2.75, unbiased var 1."""
    std = math.sqrt(35 / 12 + 1e-8)
    out = masked_whiten(X, X_MASK, shift_mean=False)
    assert_close(out[0, :3], torch.tensor([-1.75, -0.75, 0.25]) / std + 2.75)
    assert_close(out * (1 - X_MASK), torch.zeros_like(X))
    assert_close(masked_mean(out, X_MASK), torch.tensor(2.75))
    assert_close(masked_var(out, X_MASK), torch.tensor(1.0), atol=1e-6, rtol=0)


def test_masked_whiten_over_two_processes_takes_the_whole_batchs_statistics():
    """Row 0 on one process, row 1 on another: each whitens its row with the mean 2.75 and variance 35/12 of
    all four valid entries (``over_processes`` sums over both, here two threads meeting at a barrier), so
    the halves equal the hand-computed whole-batch result; alone, row 1's single entry could not be whitened."""
    barrier, shares = threading.Barrier(2), [[], []]

    def over_processes(rank):
        def total(value):
            call = len(shares[rank])
            shares[rank].append(value)
            barrier.wait()  # both processes have added their share of this sum
            return shares[0][call] + shares[1][call]
        return total

    out = [None, None]

    def process(rank):
        out[rank] = masked_whiten(X[rank:rank + 1], X_MASK[rank:rank + 1], over_processes=over_processes(rank))

    threads = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert_close(torch.cat(out), masked_whiten(X, X_MASK))


# ---------------------------------------------------------------------------------------------
# KL estimators, rewards, EOS penalty
# ---------------------------------------------------------------------------------------------


def test_kl_estimators_hand_computed():
    """r = logprobs - ref = (0.5, -1, 0).
    k1 = r = (0.5, -1, 0); k2 = r^2 / 2 = (0.125, 0.5, 0);
    k3 = exp(-r) - 1 + r = (e^-0.5 - 0.5, e - 2, 0) = (0.106531, 0.718282, 0)."""
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    assert_close(kl_estimate(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0, 0.0]]))
    assert_close(kl_estimate(logprobs, ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]]))
    assert_close(kl_estimate(logprobs, ref, "k3"), torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2, 0.0]]))


def test_kl_estimators_zero_for_equal_logprobs_and_k3_nonnegative():
    """All estimators vanish at r = 0; k2 and k3 are >= 0 for any r, while k1 goes negative."""
    logprobs = torch.linspace(-6.0, 0.0, 24).reshape(2, 12)
    for kind in ("k1", "k2", "k3"):
        assert_close(kl_estimate(logprobs, logprobs.clone(), kind), torch.zeros(2, 12))
    gen = torch.Generator().manual_seed(0)
    ref = logprobs + 3 * torch.randn(2, 12, generator=gen)
    assert (kl_estimate(logprobs, ref, "k3") >= 0).all()
    assert (kl_estimate(logprobs, ref, "k2") >= 0).all()
    assert (kl_estimate(logprobs, ref, "k1") < 0).any()


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k1"):
        kl_estimate(torch.zeros(1, 2), torch.zeros(1, 2), "k4")


def test_token_rewards_hand_computed():
    """kl_coef 0.1, k1. Row 0 has 3 valid tokens, row 1 has 2 (index 2 is padding with r = 3).
    kl = r * mask = [[0.5, 0, -0.5], [-1, 0, 0]];  -0.1 * kl = [[-0.05, 0, 0.05], [0.1, 0, 0]].
    Scores (1, -2) land on the last valid tokens (indices 2 and 1):
    rewards = [[-0.05, 0, 1.05], [0.1, -2, 0]]."""
    scores = torch.tensor([1.0, -2.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-1.0, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert_close(kl, torch.tensor([[0.5, 0.0, -0.5], [-1.0, 0.0, 0.0]]))
    assert_close(rewards, torch.tensor([[-0.05, 0.0, 1.05], [0.1, -2.0, 0.0]]))
    # k2 is passed through: kl = r^2 / 2 = [[0.125, 0, 0.125], [0.5, 0, 0]].
    rewards, kl = token_rewards(scores, logprobs, ref, mask, kl_coef=0.1, kind="k2")
    assert_close(kl, torch.tensor([[0.125, 0.0, 0.125], [0.5, 0.0, 0.0]]))
    assert_close(rewards, torch.tensor([[-0.0125, 0.0, 0.9875], [-0.05, -2.0, 0.0]]))


def test_token_rewards_rejects_empty_rows():
    """mask.sum(1) - 1 = -1 would silently put the score on the last (padding) column."""
    with pytest.raises(ValueError, match="valid token"):
        token_rewards(torch.ones(2), torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 0, 0]]), 0.1)


def test_eos_penalty_replaces_scores_of_unfinished_responses():
    """Scores (0.5, 2.0, -0.3), ended (yes, no, yes), penalty -1 -> (0.5, -1, -0.3); input untouched."""
    scores = torch.tensor([0.5, 2.0, -0.3])
    out = eos_penalty(scores, torch.tensor([True, False, True]), penalty=-1.0)
    assert_close(out, torch.tensor([0.5, -1.0, -0.3]))
    assert_close(scores, torch.tensor([0.5, 2.0, -0.3]))


# ---------------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------------


def test_gae_four_steps_hand_computed():
    """gamma = 1, lam = 0.95; r = (0.1, -0.2, 0, 1), V = (0.5, 0.4, 0.6, 0.8), V_4 = 0 (episode ends).
    t=3: delta = 1 + 0 - 0.8 = 0.2;        A_3 = 0.2
    t=2: delta = 0 + 0.8 - 0.6 = 0.2;      A_2 = 0.2 + 0.95 * 0.2 = 0.39
    t=1: delta = -0.2 + 0.6 - 0.4 = 0;     A_1 = 0 + 0.95 * 0.39 = 0.3705
    t=0: delta = 0.1 + 0.4 - 0.5 = 0;      A_0 = 0 + 0.95 * 0.3705 = 0.351975
    returns = A + V = (0.851975, 0.7705, 0.99, 1.0)."""
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.8]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=0.95)
    assert_close(adv, torch.tensor([[0.351975, 0.3705, 0.39, 0.2]]))
    assert_close(ret, torch.tensor([[0.851975, 0.7705, 0.99, 1.0]]))


def test_gae_padded_row_ends_at_last_valid_token():
    """Row 0 as above; row 1 has mask (1, 1, 0, 0) with garbage rewards (5, 7) and values (9, 9) on
    padding, which must be ignored: V after the last valid token is 0.
    t=1: delta = 2 + 0 - 0.5 = 1.5;        A_1 = 1.5
    t=0: delta = 0 + 0.5 - 1 = -0.5;       A_0 = -0.5 + 0.95 * 1.5 = 0.925
    returns = (1.925, 2.0, 0, 0); advantages and returns are 0 on padding."""
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.0, 2.0, 5.0, 7.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.8], [1.0, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(adv, torch.tensor([[0.351975, 0.3705, 0.39, 0.2], [0.925, 1.5, 0.0, 0.0]]))
    assert_close(ret, torch.tensor([[0.851975, 0.7705, 0.99, 1.0], [1.925, 2.0, 0.0, 0.0]]))


def test_responses_after_prompt_columns_hand_computed():
    """zoo's rollouts are whole prompt + response rows: mask (0, 1, 1, 1, 0) has a prompt column before the
    response and a padding column after it; (0, 0, 0, 1, 1) has three prompt columns and none after.
    The garbage on the zero columns (log-probs -9, values 7 and 9) must not leak in.
    last_token_index = (3, 4): the last 1 of each row, not sum(mask) - 1 = (2, 1).
    token_rewards, k1, kl_coef 0.1, scores (1, -0.5):
      row 0: r = lp - ref = (-9, 0.5, -0.5, 0, -7) -> kl = (0, 0.5, -0.5, 0, 0),
             rewards = -0.1 * kl + score at col 3 = (0, -0.05, 0.05, 1, 0)
      row 1: r = (-9, -9, -9, 1, -0.5)            -> kl = (0, 0, 0, 1, -0.5),
             rewards = (0, 0, 0, -0.1, 0.05 - 0.5) = (0, 0, 0, -0.1, -0.45)
    gae, gamma = 1, lam = 0.95, V = (7, 0.5, 0.4, 0.2, 9) and (7, 7, 7, 0.4, 0.3); V after the last token is 0:
      row 0: t=3: delta = 1 + 0 - 0.2 = 0.8;         A_3 = 0.8
             t=2: delta = 0.05 + 0.2 - 0.4 = -0.15;  A_2 = -0.15 + 0.95 * 0.8 = 0.61
             t=1: delta = -0.05 + 0.4 - 0.5 = -0.15; A_1 = -0.15 + 0.95 * 0.61 = 0.4295
             returns = A + V = (0, 0.9295, 1.01, 1.0, 0)
      row 1: t=4: delta = -0.45 + 0 - 0.3 = -0.75;   A_4 = -0.75
             t=3: delta = -0.1 + 0.3 - 0.4 = -0.2;   A_3 = -0.2 + 0.95 * -0.75 = -0.9125
             returns = (0, 0, 0, -0.5125, -0.45)
    Advantages and returns are 0 on the prompt and padding columns."""
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0]])
    assert last_token_index(mask).tolist() == [3, 4]
    logprobs = torch.tensor([[-9.0, -1.0, -2.0, -1.0, -7.0], [-9.0, -9.0, -9.0, -1.0, -1.0]])
    ref = torch.tensor([[0.0, -1.5, -1.5, -1.0, 0.0], [0.0, 0.0, 0.0, -2.0, -0.5]])
    rewards, kl = token_rewards(torch.tensor([1.0, -0.5]), logprobs, ref, mask, kl_coef=0.1)
    assert_close(kl, torch.tensor([[0.0, 0.5, -0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, -0.5]]))
    assert_close(rewards, torch.tensor([[0.0, -0.05, 0.05, 1.0, 0.0], [0.0, 0.0, 0.0, -0.1, -0.45]]))
    values = torch.tensor([[7.0, 0.5, 0.4, 0.2, 9.0], [7.0, 7.0, 7.0, 0.4, 0.3]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(adv, torch.tensor([[0.0, 0.4295, 0.61, 0.8, 0.0], [0.0, 0.0, 0.0, -0.9125, -0.75]]))
    assert_close(ret, torch.tensor([[0.0, 0.9295, 1.01, 1.0, 0.0], [0.0, 0.0, 0.0, -0.5125, -0.45]]))


def test_gae_discount_hand_computed():
    """gamma = 0.5, lam = 0.5; r = (0, 1), V = (0, 0.4).
    t=1: delta = 1 - 0.4 = 0.6;             A_1 = 0.6
    t=0: delta = 0 + 0.5 * 0.4 - 0 = 0.2;   A_0 = 0.2 + 0.25 * 0.6 = 0.35;  returns = (0.35, 1.0)."""
    values = torch.tensor([[0.0, 0.4]], requires_grad=True)
    adv, ret = gae(torch.tensor([[0.0, 1.0]]), values, torch.ones(1, 2), gamma=0.5, lam=0.5)
    assert_close(adv, torch.tensor([[0.35, 0.6]]))
    assert_close(ret, torch.tensor([[0.35, 1.0]]))
    assert not adv.requires_grad and not ret.requires_grad  # targets, never differentiated through


# ---------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------


def test_clipped_policy_loss_inside_the_trust_region():
    """eps = 0.2; ratios (1.1, 0.9) both inside [0.8, 1.2], so no clipping; A = (2, -1).
    terms -A * ratio = (-2.2, 0.9) -> loss = mean = -0.65; clipfrac 0;
    approxkl = mean(0.5 * log(ratio)^2) = 0.25 * (log(1.1)^2 + log(0.9)^2)."""
    old = torch.tensor([[-1.0, -2.0]])
    logprobs = old + torch.log(torch.tensor([[1.1, 0.9]]))
    loss, metrics = clipped_policy_loss(logprobs, old, torch.tensor([[2.0, -1.0]]), torch.ones(1, 2))
    assert_close(loss, torch.tensor(-0.65))
    assert_close(metrics["policy/clipfrac"], torch.tensor(0.0))
    assert_close(metrics["policy/approxkl"], torch.tensor(0.25 * (math.log(1.1) ** 2 + math.log(0.9) ** 2)))


def test_clipped_policy_loss_with_clipping_active():
    """eps = 0.2; ratios (1.5, 0.5, 1.5, 1.0), A = (1, -1, -1, 3); a 5th padded token (ratio e, A 100) is ignored.
    token 0: max(-1.5, -1.2) = -1.2  (clipped, zero gradient)
    token 1: max(0.5, 0.8)   = 0.8   (clipped, zero gradient)
    token 2: max(1.5, 1.2)   = 1.5   (outside the region but pessimistic term is unclipped: gradient flows)
    token 3: max(-3, -3)     = -3
    loss = (-1.2 + 0.8 + 1.5 - 3) / 4 = -0.475; clipfrac = |ratio - 1| > 0.2 on 3 of 4 tokens = 0.75.
    d loss / d logprob_t = -A_t * ratio_t / 4 where unclipped: (0, 0, 0.375, -0.75, 0)."""
    ratios = torch.tensor([[1.5, 0.5, 1.5, 1.0, math.e]])
    old = torch.full((1, 5), -1.0)
    logprobs = (old + torch.log(ratios)).requires_grad_()
    advantages = torch.tensor([[1.0, -1.0, -1.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, metrics = clipped_policy_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    assert_close(loss, torch.tensor(-0.475))
    assert_close(metrics["policy/clipfrac"], torch.tensor(0.75))
    log_r = math.log(1.5), math.log(0.5), math.log(1.5)
    assert_close(metrics["policy/approxkl"], torch.tensor(sum(0.5 * x**2 for x in log_r) / 4))
    assert not any(m.requires_grad for m in metrics.values())
    loss.backward()
    assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, 0.375, -0.75, 0.0]]))


def test_clipped_value_loss_hand_computed():
    """c = 0.2; R = (1, 1, 1, 0); V_old = (0.5, 0.5, 0.5, 1); V = (1, 0.6, 0, 2); a 5th padded token ignored.
    V_clip = clip(V, V_old - 0.2, V_old + 0.2) = (0.7, 0.6, 0.3, 1.2)
    (V - R)^2      = (0,    0.16, 1,    4)
    (V_clip - R)^2 = (0.09, 0.16, 0.49, 1.44)
    max            = (0.09, 0.16, 1,    4)  -> mean 5.25 / 4 = 1.3125, loss = 0.5 * 1.3125 = 0.65625
    val/clipfrac: the clipped term is strictly larger only on token 0 -> 1 / 4 = 0.25."""
    values = torch.tensor([[1.0, 0.6, 0.0, 2.0, 50.0]])
    old_values = torch.tensor([[0.5, 0.5, 0.5, 1.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0, 0.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, metrics = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert_close(loss, torch.tensor(0.65625))
    assert_close(metrics["val/clipfrac"], torch.tensor(0.25))


def test_explained_variance():
    """Perfect values -> 1. R = (1, 2, 3, 4), V = (1, 2, 3, 5) (a padded 5th entry ignored):
    R - V = (0, 0, 0, -1), Var = 0.25 - 0.0625 = 0.1875; Var[R] = 1.25; EV = 1 - 0.15 = 0.85.
    Constant returns -> nan."""
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    assert_close(explained_variance(returns.clone(), returns, mask), torch.tensor(1.0))
    values = torch.tensor([[1.0, 2.0, 3.0, 5.0, -100.0]])
    assert_close(explained_variance(values, returns, mask), torch.tensor(0.85))
    assert torch.isnan(explained_variance(values, torch.ones(1, 5), mask))


# ---------------------------------------------------------------------------------------------
# KL controllers
# ---------------------------------------------------------------------------------------------


def test_adaptive_kl_controller_hand_computed():
    """init 0.1, target 6, horizon 10000, n_steps 256 (so n_steps / horizon = 0.0256).
    KL 12:  error 12/6 - 1 = 1, clipped to 0.2   -> 0.1 * (1 + 0.2 * 0.0256) = 0.100512
    KL 3:   error -0.5, clipped to -0.2          -> 0.1 * (1 - 0.2 * 0.0256) = 0.099488
    KL 6.6: error 0.1, not clipped               -> 0.1 * (1 + 0.1 * 0.0256) = 0.100256."""
    for kl, expected in [(12.0, 0.100512), (3.0, 0.099488), (6.6, 0.100256)]:
        ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
        ctl.update(kl, n_steps=256)
        assert ctl.value == pytest.approx(expected, rel=1e-9)


def test_fixed_kl_controller_never_changes():
    ctl = FixedKLController(0.05)
    for kl in (0.0, 6.0, 1e3):
        ctl.update(kl, n_steps=256)
    assert ctl.value == 0.05
