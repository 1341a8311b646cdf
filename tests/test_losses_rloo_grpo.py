"""Hand-computed tests for RLOO and GRPO (tiny tensors, derivations in the docstrings): their advantages from
per-token rewards, their losses, the gradient's sign, and the declarations the rollout machinery reads."""

import math

import pytest
import torch
from torch.testing import assert_close

from zoo.losses import GRPOLoss, PPOLoss, RLOOLoss, SequenceLogps
from zoo.losses.grpo import group_advantages
from zoo.losses.on_policy import PolicyValueOutput
from zoo.losses.rloo import leave_one_out_advantages

# Four completions, two prompts x k = 2 (a prompt's completions in consecutive rows), T = 2.
# Row 3 has one valid token; its second column is padding with garbage that must not count.
MASK = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
LOGPS = torch.tensor([[-1.0, -1.0], [-2.0, -1.0], [-0.5, -0.5], [-1.0, -9.0]])
# log pi - log pi_ref per token: row 0 (0.2, 0.2), row 1 (0, 0), row 2 (1, 0), row 3 (0, garbage 7)
LOG_RATIO_REF = torch.tensor([[0.2, 0.2], [0.0, 0.0], [1.0, 0.0], [0.0, 7.0]])
SCORES = torch.tensor([2.0, 0.0, 1.0, 1.0])
ENDED = torch.tensor([True, True, True, True])


def rewards(loss_fn, scores=SCORES, ended=ENDED, kl_coef=0.5):
    logps = LOGPS * MASK
    ref = (LOGPS - LOG_RATIO_REF) * MASK
    return loss_fn.shape_rewards(scores, ended, logps, ref, MASK, kl_coef)[0]


def test_leave_one_out_hand_computed():
    """k = 3, rewards (1, 2, 6): baselines (2 + 6) / 2 = 4, (1 + 6) / 2 = 3.5, (1 + 2) / 2 = 1.5 ->
    advantages (-3, -1.5, 4.5); they sum to 0 in every group. k = 2: R_1 - R_2 and R_2 - R_1."""
    assert leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 0.0]), 3).tolist() == \
        [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]
    assert leave_one_out_advantages(torch.tensor([1.0, 4.0]), 2).tolist() == [-3.0, 3.0]


def test_rloo_advantages_from_the_kl_penalised_sequence_reward():
    """kl_coef 0.5, k1: R_i = score - 0.5 * sum_t (log pi - log pi_ref) over valid tokens
    = (2 - 0.5 * 0.4, 0 - 0, 1 - 0.5 * 1, 1 - 0) = (1.8, 0, 0.5, 1) (row 3's padded 7 does not count);
    groups (1.8, 0) and (0.5, 1), k = 2 -> A = (1.8, -1.8, -0.5, 0.5) on every valid token; no returns."""
    loss_fn = RLOOLoss(samples_per_prompt=2, normalize_scores=False)
    advantages, returns = loss_fn.advantages(rewards(loss_fn), None, MASK)
    assert returns is None
    expected = torch.tensor([1.8, -1.8, -0.5, 0.5]).unsqueeze(1) * MASK
    assert_close(advantages, expected)


def test_rloo_missing_eos_scores_the_penalty():
    """Row 0 without EOS scores -1 instead of 2: R = (-1 - 0.2, 0, 0.5, 1) -> group 1 A = (-1.2, 1.2)."""
    loss_fn = RLOOLoss(samples_per_prompt=2)
    ended = torch.tensor([False, True, True, True])
    advantages, _ = loss_fn.advantages(rewards(loss_fn, ended=ended), None, MASK)
    assert_close(advantages[:2, 0], torch.tensor([-1.2, 1.2]))


def rollout_output(logps: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor, mask=MASK,
                   ref: torch.Tensor | None = None, kl_coef: float = 0.5) -> PolicyValueOutput:
    return PolicyValueOutput(policy=SequenceLogps(token_logps=logps, completion_mask=mask), values=None,
                             old_logps=old, old_values=None, ref_logps=old if ref is None else ref,
                             advantages=advantages.unsqueeze(1) * mask, returns=None, kl_coef=kl_coef)


def test_rloo_loss_is_reinforce_on_policy():
    """At ratio 1 (the rollout's own policy): loss_i = -A_i, and d mean_i(loss_i) / d log pi(y_i,t) = -A_i / N on
    every valid token (REINFORCE with the leave-one-out baseline), 0 on padding."""
    advantages = torch.tensor([1.8, -1.8, -0.5, 0.5])
    logps = (LOGPS * MASK).clone().requires_grad_()
    out = RLOOLoss(samples_per_prompt=2)(rollout_output(logps, LOGPS * MASK, advantages))
    assert_close(out.loss, -advantages)
    out.loss.mean().backward()
    assert_close(logps.grad, (-advantages / 4).unsqueeze(1) * MASK)
    assert_close(out.metrics["policy/clipfrac"], torch.zeros(4))


def test_rloo_clips_the_sequence_ratio():
    """eps 0.2, one sequence per row, the ratio is the sequence's: exp(sum_t (log pi - log pi_old)).
    Row 0: ratio 1.5 (log 1.5 on its first token), A = 1: max(-1.5, -1.2) = -1.2, clipped: no gradient.
    Row 1: ratio 1.5, A = -1: max(1.5, 1.2) = 1.5, unclipped: gradient -A * ratio / N = 1.5 / 2 per token."""
    mask = torch.ones(2, 2)
    old = torch.full((2, 2), -1.0)
    logps = (old + torch.tensor([[math.log(1.5), 0.0], [0.0, math.log(1.5)]])).requires_grad_()
    out = RLOOLoss(samples_per_prompt=2)(rollout_output(logps, old, torch.tensor([1.0, -1.0]), mask))
    assert_close(out.loss, torch.tensor([-1.2, 1.5]))
    out.loss.mean().backward()
    assert_close(logps.grad, torch.tensor([[0.0, 0.0], [0.75, 0.75]]))
    assert_close(out.metrics["policy/clipfrac"], torch.tensor([1.0, 1.0]))


def test_group_advantages_hand_computed():
    """Groups (1, 3) and (5, 5). group: means 2 and 5, unbiased stds sqrt(2) and 0 ->
    (-1 / (sqrt 2 + 1e-4), 1 / (sqrt 2 + 1e-4), 0, 0); a tied group gives 0, not nan.
    batch: the std of all four, mean 3.5, squares 6.25 + 0.25 + 2.25 + 2.25 = 11, sqrt(11 / 3);
    over two processes holding the same rows, sqrt(22 / 7). none (Dr. GRPO): (-1, 1, 0, 0)."""
    r = torch.tensor([1.0, 3.0, 5.0, 5.0])
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0])
    assert_close(group_advantages(r, 2, "group"), centred / torch.tensor([2**0.5 + 1e-4] * 2 + [1e-4] * 2))
    assert_close(group_advantages(r, 2, "batch"), centred / ((11 / 3) ** 0.5 + 1e-4))
    assert_close(group_advantages(r, 2, "batch", over_processes=lambda total: 2 * total),
                 centred / ((22 / 7) ** 0.5 + 1e-4))
    assert_close(group_advantages(r, 2, "none"), centred)


def test_grpo_advantages_leave_the_kl_out_of_the_score():
    """kl_penalty="loss" (the paper): the rewards are the scores alone, (2, 0 | 1, 1). Group 1: mean 1, unbiased
    std sqrt 2 -> A = +-1 / (sqrt 2 + 1e-4); the tied group 2: A = 0."""
    loss_fn = GRPOLoss(samples_per_prompt=2, normalize_scores=False)
    advantages, returns = loss_fn.advantages(rewards(loss_fn), None, MASK)
    assert returns is None
    a = 1.0 / (2**0.5 + 1e-4)
    assert_close(advantages, torch.tensor([a, -a, 0.0, 0.0]).unsqueeze(1) * MASK)


def grpo_batch():
    """Two rows, eps 0.2, kl_coef 0.5. Row 0: 2 tokens, A = 1, ratios (1.5, 1); row 1: 1 valid token (+ padding
    with garbage), A = -1, ratio 1. log pi - log pi_ref: row 0 (log 2, 0), row 1 (-log 2)."""
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    old = torch.full((2, 2), -1.0)
    logps = (old + torch.tensor([[math.log(1.5), 0.0], [0.0, 5.0]])).requires_grad_()
    ref = logps.detach() - torch.tensor([[math.log(2), 0.0], [-math.log(2), 3.0]])
    return rollout_output(logps, old, torch.tensor([1.0, -1.0]), mask, ref), logps


def test_grpo_loss_hand_computed():
    """Per token, max(-A rho, -A clip(rho, 0.8, 1.2)) + 0.5 * k3, k3(r) = e^-r - 1 + r:
      row 0: token 1 rho 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped); k3(log 2) = 0.5 - 1 + log 2 = log 2 - 0.5
             token 2 rho 1:           -1;                      k3(0) = 0
      row 1: token 1 rho 1, A -1: 1;                           k3(-log 2) = 2 - 1 - log 2 = 1 - log 2
    grpo: each row's token mean: row 0 ((-1.2 - 1) + 0.5 (log 2 - 0.5)) / 2, row 1 1 + 0.5 (1 - log 2).
    Gradients of the mean over rows: d/dlogp of the pg term -A rho (unclipped), of the KL term
    0.5 (1 - e^-r): row 0 token 1: (0 + 0.5 * 0.5) / 2 / 2 = 0.0625; token 2: (-1 + 0) / 2 / 2 = -0.25;
    row 1 token 1: (1 + 0.5 * (1 - 2)) / 1 / 2 = 0.25; padding 0."""
    output, logps = grpo_batch()
    out = GRPOLoss(samples_per_prompt=2, kl_coef=0.5)(output)
    ln2 = math.log(2)
    assert_close(out.loss, torch.tensor([(-2.2 + 0.5 * (ln2 - 0.5)) / 2, 1 + 0.5 * (1 - ln2)]))
    assert_close(out.metrics["policy/kl_loss"], torch.tensor([(ln2 - 0.5) / 2, 1 - ln2]))
    assert_close(out.metrics["policy/clipfrac"], torch.tensor([0.5, 0.0]))
    out.loss.mean().backward()
    assert_close(logps.grad, torch.tensor([[0.0625, -0.25], [0.25, 0.0]]))


def test_grpo_dapo_is_one_token_mean_over_the_window():
    """loss_type dapo: the same per-token terms summed per row (token_loss) over the window's 3 tokens:
    (-2.2 + 0.5 (log 2 - 0.5) + 1 + 0.5 (1 - log 2)) / 3 = (-1.2 + 0.25) / 3; count_tokens of a batch with
    this mask (its completion_mask is shifted by one) is 3."""
    output, _ = grpo_batch()
    loss_fn = GRPOLoss(samples_per_prompt=2, kl_coef=0.5, loss_type="dapo")
    out = loss_fn(output)
    assert out.loss is None
    assert_close(out.objective(), torch.tensor((-1.2 + 0.25) / 3))
    batch = {"completion_mask": torch.tensor([[0, 1, 1], [0, 1, 0]])}
    assert loss_fn.count_tokens(batch).item() == 3
    assert GRPOLoss(samples_per_prompt=2).count_tokens(batch) is None


def test_policy_gradient_raises_the_better_sample():
    """One gradient step of either loss on a group of two, rewards (1, 0), at ratio 1: the better
    completion's log-prob goes up, the worse one's down (a flipped sign fails here)."""
    for loss_fn in (RLOOLoss(samples_per_prompt=2, normalize_scores=False),
                    GRPOLoss(samples_per_prompt=2, kl_coef=0.0, normalize_scores=False)):
        mask = torch.ones(2, 1)
        token_rewards = torch.tensor([[1.0], [0.0]])
        advantages, _ = loss_fn.advantages(token_rewards, None, mask)
        logps = torch.full((2, 1), -1.0, requires_grad=True)
        output = PolicyValueOutput(SequenceLogps(logps, mask), None, logps.detach(), None, logps.detach(),
                                   advantages, None, 0.0)
        loss_fn(output).objective().backward()
        assert logps.grad[0].item() < 0 < logps.grad[1].item(), type(loss_fn).__name__


def test_declarations_the_rollout_machinery_reads():
    """k samples per prompt and no value model for RLOO and GRPO; PPO keeps one sample and its value model."""
    assert (RLOOLoss().samples_per_prompt, RLOOLoss().model_output) == (4, "rollout_logps")
    assert (GRPOLoss(samples_per_prompt=8).samples_per_prompt, GRPOLoss().model_output) == (8, "rollout_logps")
    assert (PPOLoss().samples_per_prompt, PPOLoss().model_output) == (1, "policy_values")
    assert RLOOLoss.batch_kind == GRPOLoss.batch_kind == "prompts"


@pytest.mark.parametrize("make, match", [
    (lambda: RLOOLoss(samples_per_prompt=1), "samples_per_prompt must be >= 2"),
    (lambda: GRPOLoss(samples_per_prompt=1), "samples_per_prompt must be >= 2"),
    (lambda: RLOOLoss(clip_eps=0), "clip_eps must be > 0"),
    (lambda: GRPOLoss(loss_type="bnpo"), "loss_type must be one of"),
    (lambda: GRPOLoss(scale_rewards="yes"), "scale_rewards must be one of"),
    (lambda: GRPOLoss(kl_penalty="both"), "kl_penalty must be"),
    (lambda: RLOOLoss(kl_estimator="k4"), "kl_estimator must be one of"),
    (lambda: RLOOLoss(kl_coef=-1), "kl_coef must be >= 0"),
])
def test_bad_constructor_arguments_fail_clearly(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_rollout_batch_holds_whole_groups_of_k():
    """``Experience`` samples k completions for each of rollout_size / k prompts (rollout_size = batch_size x
    grad_accum_steps x num_minibatches sequences) and refuses sizes that split a group or want more prompts
    than the data has, naming the keys."""
    from zoo.config import RolloutConfig
    from zoo.rollout import Experience

    def experience(k, prompts, batch_size):
        return Experience(RLOOLoss(samples_per_prompt=k), None, None, None, None, None, ["a prompt"] * prompts,
                          RolloutConfig(num_minibatches=2), batch_size=batch_size, grad_accum_steps=1, seed=0)

    assert (experience(4, 4, 8).rollout_size, experience(4, 4, 8).prompts_per_rollout) == (16, 4)
    with pytest.raises(ValueError, match="not a whole number of groups of algo.loss.samples_per_prompt=3"):
        experience(3, 100, 8)
    with pytest.raises(ValueError, match="needs 8 prompts .* the data has 7"):
        experience(2, 7, 8)
