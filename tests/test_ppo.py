"""PPO-RLHF: the PPOLoss object (reward shaping, advantages, the minibatch loss) on hand-computed tiny tensors,
and the value model / LoRA adapter sharing on the world model (no training)."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from zoo.losses import SequenceLogps
from zoo.losses.ppo import PolicyValueOutput, PPOLoss
from zoo.losses.ppo_math import masked_mean, masked_var
from zoo.models import (
    ActorCritic,
    ScalarHead,
    active_adapter,
    adapter_reward_model,
    add_fresh_adapter,
    apply_lora,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    value_model,
)
from zoo.world import paths

MODEL = str(paths.MODEL)

# ---------------------------------------------------------------------------------------------
# Reward shaping and advantages (once per rollout batch)
# ---------------------------------------------------------------------------------------------

# Row 0: one prompt column, then a 2-token response that ended with EOS; row 1: a 2-token response then
# padding, cut at max_new_tokens (no EOS). Log-ratios r = logps - ref = [[-5, 0.5, -1], [1, -1, -3]].
SHAPE_MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
SHAPE_LOGPS = torch.tensor([[-5.0, -1.0, -2.0], [-1.0, -2.0, -3.0]])
SHAPE_REF = torch.tensor([[0.0, -1.5, -1.0], [-2.0, -1.0, 0.0]])
SHAPE_KL = torch.tensor([[0.0, 0.5, -1.0], [1.0, -1.0, 0.0]])  # k1 = r on valid tokens, 0 elsewhere


def shape(loss_fn: PPOLoss, kl_coef: float = 0.2):
    """shape_rewards on the rows above, RM scores (2, 3), ended (yes, no)."""
    return loss_fn.shape_rewards(torch.tensor([2.0, 3.0]), torch.tensor([True, False]), SHAPE_LOGPS, SHAPE_REF,
                                 SHAPE_MASK, kl_coef)


def test_shape_rewards_kl_in_the_reward():
    """kl_penalty="reward", k1, kl_coef 0.2 passed in (the controller's value, not the constructor's 0.05).
    EOS penalty -1 replaces row 1's score 3 (not 3 - 1): scores (2, -1), on the last valid tokens (2, 1).
    -0.2 * kl = [[0, -0.1, 0.2], [-0.2, 0.2, 0]]  ->  rewards = [[0, -0.1, 2.2], [-0.2, -0.8, 0]]."""
    rewards, kl = shape(PPOLoss(kl_coef=0.05, kl_penalty="reward", missing_eos_penalty=-1.0))
    assert_close(kl, SHAPE_KL)
    assert_close(rewards, torch.tensor([[0.0, -0.1, 2.2], [-0.2, -0.8, 0.0]]))


def test_shape_rewards_kl_in_the_loss_leaves_the_score_only():
    """kl_penalty="loss": no per-token penalty, rewards = score on the last token = [[0, 0, 2], [0, -1, 0]];
    the k1 estimate is still returned (for logging). Without an EOS penalty row 1 keeps its score 3."""
    rewards, kl = shape(PPOLoss(kl_penalty="loss", missing_eos_penalty=-1.0))
    assert_close(kl, SHAPE_KL)
    assert_close(rewards, torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))
    rewards, _ = shape(PPOLoss(kl_penalty="loss", missing_eos_penalty=None))
    assert_close(rewards, torch.tensor([[0.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))


# Valid rewards (1, 5 | 1, 1); the 99s sit on prompt / padding columns and must be ignored.
ADV_MASK = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
ADV_REWARDS = torch.tensor([[1.0, 5.0, 99.0], [99.0, 1.0, 1.0]])
ADV_VALUES = torch.tensor([[2.0, 2.5, 99.0], [99.0, 2.0, 0.5]])


def test_advantages_whitened_rewards_and_advantages_hand_computed():
    """gamma = lam = 1, so A_t = (rewards-to-go G_t) - V_t and returns = G_t.
    Reward whitening (scale only): valid (1, 5, 1, 1) have mean 2, deviations (-1, 3, -1, -1), unbiased var
    12 / 3 = 4, std 2 -> (x - 2) / 2 + 2 = (1.5, 3.5 | 1.5, 1.5).
    G = (5, 3.5 | 3, 1.5) = returns; raw A = G - V = (5 - 2, 3.5 - 2.5 | 3 - 2, 1.5 - 0.5) = (3, 1 | 1, 1).
    Advantage whitening: mean 1.5, deviations (1.5, -0.5, -0.5, -0.5), unbiased var 3 / 3 = 1
    -> advantages = (1.5, -0.5 | -0.5, -0.5), 0 off the mask; returns use the raw A: G, not 1.5 + 2 = 3.5."""
    loss_fn = PPOLoss(gamma=1.0, lam=1.0, whiten_rewards=True, whiten_advantages=True)
    advantages, returns = loss_fn.advantages(ADV_REWARDS, ADV_VALUES, ADV_MASK)
    assert_close(advantages, torch.tensor([[1.5, -0.5, 0.0], [0.0, -0.5, -0.5]]))
    assert_close(masked_mean(advantages, ADV_MASK), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(masked_var(advantages, ADV_MASK), torch.tensor(1.0), atol=1e-6, rtol=0)
    assert_close(returns, torch.tensor([[5.0, 3.5, 0.0], [0.0, 3.0, 1.5]]))


def test_advantages_without_whitening_are_plain_gae():
    """Both flags off: G = (6, 5 | 2, 1) = returns, A = G - V = (4, 2.5 | 0, 0.5)."""
    loss_fn = PPOLoss(gamma=1.0, lam=1.0, whiten_rewards=False, whiten_advantages=False)
    advantages, returns = loss_fn.advantages(ADV_REWARDS, ADV_VALUES, ADV_MASK)
    assert_close(advantages, torch.tensor([[4.0, 2.5, 0.0], [0.0, 0.0, 0.5]]))
    assert_close(returns, torch.tensor([[6.0, 5.0, 0.0], [0.0, 2.0, 1.0]]))


# ---------------------------------------------------------------------------------------------
# The minibatch loss
# ---------------------------------------------------------------------------------------------

# N = 2, T = 3, four valid tokens a, b (row 0) and c, d (row 1); the fifth and sixth entries are padding
# carrying garbage (ratio e, advantage 100, return -50) that must not count.
LOSS_MASK = [[1, 1, 0], [0, 1, 1]]
RATIOS = [[1.5, 0.5, math.e], [math.e, 1.0, 1.1]]
ADVANTAGES = [[1.0, -1.0, 100.0], [100.0, 2.0, -0.5]]
VALUES = [[1.0, 0.6, 50.0], [50.0, 0.0, 2.0]]
OLD_VALUES = [[0.5, 0.5, 0.0], [0.0, 0.5, 1.0]]
RETURNS = [[1.0, 1.0, -50.0], [-50.0, 1.0, 0.0]]
# log pi - log pi_ref on a, b, c, d: k3(ln 2) = ln 2 - 0.5, k3(-ln 2) = 1 - ln 2, k3(0) = 0; padding r = 50.
LOG_RATIO_REF = [[math.log(2), -math.log(2), 50.0], [50.0, 0.0, 0.0]]


def ppo_output(ratios=RATIOS, advantages=ADVANTAGES, mask=LOSS_MASK, kl_coef: float = 0.5) -> PolicyValueOutput:
    """A hand-built minibatch: old log-probs -1, new ones -1 + log(ratio) and values as leaves (for gradients);
    values, returns and reference log-ratios from the tables above, cut to the shape of ``mask``."""
    m = torch.tensor(mask, dtype=torch.float32)
    n, t = m.shape

    def table(rows):  # the top-left (n, t) corner of one of the tables above
        return torch.tensor([row[:t] for row in rows[:n]])

    old = torch.full_like(m, -1.0)
    logps = (old + torch.log(torch.tensor(ratios))).requires_grad_()
    values = table(VALUES).requires_grad_()
    ref = logps.detach() - table(LOG_RATIO_REF)
    return PolicyValueOutput(policy=SequenceLogps(token_logps=logps, completion_mask=m), values=values,
                             old_logps=old, old_values=table(OLD_VALUES), ref_logps=ref,
                             advantages=torch.tensor(advantages), returns=table(RETURNS), kl_coef=kl_coef)


def test_forward_hand_computed():
    """eps = 0.2, value clip 0.2, vf_coef 0.1, over the 4 valid tokens.
    Policy, max(-A rho, -A clip(rho, 0.8, 1.2)):
      a: rho 1.5, A  1:   max(-1.5, -1.2) = -1.2   clipped (positive advantage), no gradient
      b: rho 0.5, A -1:   max(0.5, 0.8)   = 0.8    clipped (negative advantage), no gradient
      c: rho 1,   A  2:   -2
      d: rho 1.1, A -0.5: 0.55
      pg_loss = (-1.2 + 0.8 - 2 + 0.55) / 4 = -0.4625; clipfrac (|rho - 1| > 0.2) = 2 / 4 = 0.5;
      approxkl = mean(0.5 * log(rho)^2) = (ln 1.5^2 + ln 0.5^2 + ln 1.1^2) / 8.
      d pg / d logp = -A rho / 4 where unclipped: (0, 0 | -0.5, 0.1375).
    Value, R = (1, 1 | 1, 0), V_old = (0.5, 0.5 | 0.5, 1), V = (1, 0.6 | 0, 2) -> V_clip = (0.7, 0.6 | 0.3, 1.2):
      (V - R)^2 = (0, 0.16 | 1, 4), (V_clip - R)^2 = (0.09, 0.16 | 0.49, 1.44); the clipped term wins on a only
      vf_loss = 0.5 * (0.09 + 0.16 + 1 + 4) / 4 = 0.65625; val/clipfrac = 1 / 4.
      d (0.1 vf) / d V = 0.1 * (V - R) / 4 where the unclipped term wins, 0 on a: (0, -0.01 | -0.025, 0.05).
    loss = -0.4625 + 0.1 * 0.65625 = -0.396875 for the minibatch (a token mean over both rows).
    explained variance: Var[R] = 0.1875, R - V = (0, 0.4, 1, -2) has mean -0.15 and Var 5.07 / 4 = 1.2675,
      so EV = 1 - 1.2675 / 0.1875 = -5.76."""
    out = ppo_output()
    result = PPOLoss(clip_eps=0.2, value_clip=0.2, vf_coef=0.1, kl_penalty="reward")(out)
    assert result.loss is None and result.batch_loss.shape == ()  # reduced over the minibatch, not per row
    assert_close(result.objective(), torch.tensor(-0.396875))
    m = result.metrics
    assert {"policy/approxkl", "policy/clipfrac", "val/vf_loss", "val/clipfrac", "val/explained_variance"} <= set(m)
    assert "policy/kl_loss" not in m
    assert_close(m["policy/pg_loss"], torch.tensor(-0.4625))
    assert_close(m["val/vf_loss"], torch.tensor(0.65625))
    assert_close(m["policy/clipfrac"], torch.tensor(0.5))
    assert_close(m["val/clipfrac"], torch.tensor(0.25))
    assert_close(m["policy/approxkl"], torch.tensor((math.log(1.5) ** 2 + math.log(0.5) ** 2 + math.log(1.1) ** 2) / 8))
    assert_close(m["val/explained_variance"], torch.tensor(-5.76))
    result.objective().backward()  # the trainer's reduction
    assert_close(out.policy.token_logps.grad, torch.tensor([[0.0, 0.0, 0.0], [0.0, -0.5, 0.1375]]))
    assert_close(out.values.grad, torch.tensor([[0.0, -0.01, 0.0], [0.0, -0.025, 0.05]]))


def test_forward_kl_in_the_loss():
    """kl_penalty="loss" adds kl_coef * mean_m k3(logp, ref), with kl_coef the rollout's (0.5 in the output),
    not the constructor's 0.05. k3 on a, b, c, d = (ln 2 - 0.5, 1 - ln 2, 0, 0): mean 0.5 / 4 = 0.125
    -> loss = -0.396875 + 0.5 * 0.125 = -0.334375.
    Gradient of the KL term alone (the difference from kl_penalty="reward"):
    kl_coef * (1 - exp(ref - logp)) / 4 = 0.5 * (1 - 0.5, 1 - 2, 0, 0) / 4 = (0.0625, -0.125 | 0, 0):
    down on the token pi over-weights relative to pi_ref, up on the one it under-weights."""
    grads = {}
    for penalty in ("reward", "loss"):
        out = ppo_output(kl_coef=0.5)
        result = PPOLoss(vf_coef=0.1, kl_coef=0.05, kl_penalty=penalty)(out)
        result.objective().backward()
        grads[penalty] = out.policy.token_logps.grad
    assert_close(result.objective(), torch.tensor(-0.334375))
    assert_close(result.metrics["policy/kl_loss"], torch.tensor(0.125))
    assert_close(grads["loss"] - grads["reward"], torch.tensor([[0.0625, -0.125, 0.0], [0.0, 0.0, 0.0]]))


def test_policy_gradient_sign_at_ratio_one():
    """At rho = 1 nothing is clipped and d L / d logp_t = -A_t / (number of valid tokens): with A = (2, -1 | 0.5)
    on 3 valid tokens, (-2/3, 1/3 | 0.5 / -3 = -1/6), 0 on padding. Gradient descent therefore raises the
    log-prob of positive-advantage tokens and lowers it for negative ones."""
    mask = [[1, 1], [1, 0]]
    out = ppo_output(ratios=[[1.0, 1.0], [1.0, 1.0]], advantages=[[2.0, -1.0], [0.5, 100.0]], mask=mask)
    PPOLoss()(out).objective().backward()
    assert_close(out.policy.token_logps.grad, torch.tensor([[-2 / 3, 1 / 3], [-1 / 6, 0.0]]))


@pytest.mark.parametrize("bad, match", [
    ({"kl_estimator": "k4"}, "kl_estimator"),
    ({"kl_penalty": "both"}, "kl_penalty"),
    ({"clip_eps": 0.0}, "clip_eps > 0"),
    ({"clip_eps": -0.2}, "clip_eps > 0"),
])
def test_bad_constructor_arguments_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        PPOLoss(**bad)


# ---------------------------------------------------------------------------------------------
# Value model and LoRA adapter sharing on the world model
# ---------------------------------------------------------------------------------------------


def right_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``texts``, right-padded with the PAD token, as the collators do."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(row) for row in ids)
    input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
    attention_mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return input_ids, attention_mask


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of different lengths, so one is padded."""
    return right_padded(load_tokenizer(MODEL), ["The plot was great and the acting was fine.", "A film."])


@torch.no_grad()
def perturb(model: torch.nn.Module, keys: tuple[str, ...], seed: int = 0) -> None:
    """Overwrite the parameters whose names contain one of ``keys`` with small seeded noise (LoRA B starts
    at zero, so fresh adapters are no-ops until moved)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if any(k in name for k in keys):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def lora_policy() -> torch.nn.Module:
    return apply_lora(load_causal_lm(MODEL), 4, 8, 0.0, "all-linear")


def actor_critic():
    """As ``zoo.run.build_actor_critic`` under peft=lora: adapter "default" the policy, "value" the value trunk."""
    policy = lora_policy()
    add_fresh_adapter(policy, "value", 4, 8, 0.0, "all-linear")
    value = value_model(MODEL, policy.config.hidden_size, shared=policy)
    return policy, value, ActorCritic(policy, value)


def flags(model: torch.nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters()}


def test_value_model_starts_at_zero_and_scores_read_the_last_real_token():
    """A separate value model: zero head -> V = 0 exactly at every position, shape (N, T). With a random head,
    scores(row) = forward()[row, length - 1]: column 10 for the 11-token row, column 2 for the 3-token one
    (not the padded last column)."""
    input_ids, attention_mask = batch()
    value = value_model(MODEL, load_causal_lm(MODEL).config.hidden_size, shared=None)
    with torch.no_grad():
        values = value(input_ids, attention_mask)
    assert values.shape == input_ids.shape
    assert torch.equal(values, torch.zeros_like(values))
    perturb(value, ("head.",))
    with torch.no_grad():
        per_position = value(input_ids, attention_mask)
        scores = value.scores(input_ids, attention_mask)
    lengths = attention_mask.sum(1)
    assert lengths[0] > lengths[1]
    assert_close(scores, per_position[torch.arange(2), lengths - 1])
    assert not torch.allclose(scores[1], per_position[1, -1])  # the padded column would give another number
    with pytest.raises(ValueError, match="exactly one"):
        ScalarHead(None, 8)


def test_active_adapter_restores_adapter_and_requires_grad():
    """peft's set_adapter freezes every adapter but the active one; the context puts both the active adapter
    and the requires_grad flags back, also when the block raises."""
    policy, _, _ = actor_critic()
    before = flags(policy)
    assert policy.active_adapter == "default"
    assert all(before[n] for n in before if ".default." in n or ".value." in n)
    with active_adapter(policy, "value"):
        assert policy.active_adapter == "value"
        assert not any(p.requires_grad for n, p in policy.named_parameters() if ".default." in n)
    assert policy.active_adapter == "default" and flags(policy) == before
    with pytest.raises(RuntimeError, match="inside"), active_adapter(policy, "value"):
        raise RuntimeError("inside")
    assert policy.active_adapter == "default" and flags(policy) == before


def test_one_backward_trains_both_adapters_and_no_base_weight():
    """logps come from adapter "default", values from adapter "value" + head (moved off zero, or no gradient
    reaches the value adapter): one backward of their sum gives every LoRA matrix of both adapters a nonzero
    gradient, the value head one too, and no base weight a gradient."""
    policy, value, ac = actor_critic()
    perturb(policy, ("lora_B",))
    perturb(value, ("head.",), seed=1)
    input_ids, attention_mask = batch()
    logps, values = ac(input_ids, attention_mask)
    assert logps.shape == values.shape == (2, input_ids.shape[1] - 1)
    assert policy.active_adapter == "default"
    (logps.sum() + values.sum()).backward()
    for adapter in ("default", "value"):
        lora = {n: p for n, p in policy.named_parameters() if f".{adapter}." in n}
        assert len(lora) == 4 * 7 * 2  # 4 layers x 7 linear modules x (A, B)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values()), adapter
    assert value.head.weight.grad.abs().sum() > 0
    base = [n for n, p in policy.named_parameters() if "lora_" not in n]
    assert base and all(policy.get_parameter(n).grad is None for n in base)


def test_value_checkpointing_gives_the_same_gradients():
    """algo.value_checkpointing recomputes the value trunk during backward (switching to the "value"
    adapter and back while the policy's gradients are being accumulated); it must change memory only:
    outputs and every gradient equal the plain run's."""
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)  # the same LoRA A matrices both times
        policy, value, ac = actor_critic()
        perturb(policy, ("lora_B",))
        perturb(value, ("head.",), seed=1)
        value.checkpoint = checkpoint
        input_ids, attention_mask = batch()
        logps, values = ac(input_ids, attention_mask)
        (logps.sum() + values.pow(2).sum()).backward()
        grads = {n: p.grad.clone() for n, p in ac.named_parameters() if p.grad is not None}
        results.append((logps.detach(), values.detach(), grads, flags(policy)))
    (logps0, values0, grads0, flags0), (logps1, values1, grads1, flags1) = results
    assert_close(logps1, logps0)
    assert_close(values1, values0)
    assert grads1.keys() == grads0.keys() and any(".value." in n for n in grads0)
    for name in grads0:
        assert_close(grads1[name], grads0[name], rtol=1e-4, atol=1e-6, msg=name)
    assert flags1 == flags0  # the adapter switch inside backward put every requires_grad flag back


def test_disabled_adapters_give_the_base_model():
    """With both adapters moved, the policy's logits differ from the base model's; inside disable_adapter()
    (the reference under LoRA) they are the base model's."""
    policy, _, _ = actor_critic()
    perturb(policy, ("lora_B",))
    input_ids, attention_mask = batch()
    with torch.no_grad():
        base = load_causal_lm(MODEL)(input_ids=input_ids, attention_mask=attention_mask).logits
        adapted = policy(input_ids=input_ids, attention_mask=attention_mask).logits
        with policy.disable_adapter():
            disabled = policy(input_ids=input_ids, attention_mask=attention_mask).logits
    assert not torch.allclose(adapted, base)
    assert_close(disabled, base)


def test_actor_critic_registers_the_shared_trunk_once(tmp_path):
    """The value model's trunk is the policy's: ActorCritic's parameters and state dict are the policy's plus
    the value head's (weight, bias), with no tensor under two names, so safetensors (which refuses shared
    tensors) saves the state dict as is and loads it back."""
    policy, _, ac = actor_critic()
    named = list(ac.named_parameters(remove_duplicate=False))
    assert len({id(p) for _, p in named}) == len(named)
    assert len(named) == len(list(policy.parameters())) + 2
    state = ac.state_dict()
    assert set(state) == {f"policy.{k}" for k in policy.state_dict()} | {"value.head.weight", "value.head.bias"}
    assert len({t.data_ptr() for t in state.values()}) == len(state)
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_file(tmp_path / "model.safetensors")
    assert set(loaded) == set(state)
    assert_close(loaded["value.head.weight"], state["value.head.weight"])


def test_lora_reward_model_as_an_adapter_scores_like_the_seq_cls_model(tmp_path):
    """A SEQ_CLS LoRA reward model (adapters and score head moved off their init), saved, then loaded as
    adapter "reward" of a CAUSAL_LM LoRA policy: reward.scores equals the SEQ_CLS model's logits on the same
    right-padded batch; the reward adapter and head stay frozen (also after scoring, which switches adapters),
    and the policy's own adapter stays active and trainable."""
    tokenizer = load_tokenizer(MODEL)
    rm = apply_lora(load_reward_model(MODEL, tokenizer.pad_token_id), 4, 8, 0.0, "all-linear", task_type="SEQ_CLS")
    perturb(rm, ("lora_B", "score."))
    rm.save_pretrained(tmp_path / "rm")
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = rm.eval()(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        base = load_reward_model(MODEL, tokenizer.pad_token_id)
        base.score.weight.copy_(rm.base_model.model.score.modules_to_save["default"].weight)
        without_adapter = base(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
    assert not torch.allclose(without_adapter, expected, atol=1e-3)  # the adapter matters

    policy = lora_policy()
    perturb(policy, ("lora_B",), seed=1)  # scoring through "default" instead of "reward" would show
    policy_flags = flags(policy)
    reward = adapter_reward_model(policy, tmp_path / "rm", policy.config.hidden_size)
    with torch.no_grad():
        scores = reward.scores(input_ids, attention_mask)
    assert_close(scores, expected, atol=1e-5, rtol=0)
    reward_params = [p for n, p in policy.named_parameters() if ".reward." in n]
    assert len(reward_params) == 4 * 7 * 2
    assert not any(p.requires_grad for p in reward_params)
    assert not any(p.requires_grad for p in reward.parameters())
    assert policy.active_adapter == "default"
    assert {n: f for n, f in flags(policy).items() if ".reward." not in n} == policy_flags
