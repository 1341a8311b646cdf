"""Parity of zoo's RLOO and GRPO with TRL 1.16's ``RLOOTrainer`` and ``GRPOTrainer``, by feeding the same completions.

Sampling is random and the two libraries draw differently, so the completions are not compared: TRL's trainer
samples them, and zoo's rollout (``zoo.rollout.Experience.rollout``, the real batch source) is handed exactly
those completions through a monkeypatched ``zoo.rollout.sample``. Everything downstream of sampling is then
compared on the same rows: zoo's own tokenization of the prompts (checked equal to TRL's), its old and
reference log-probabilities at the sampling temperature, the scores (one reward function of the text on both
sides), the KL-shaped rewards, the advantages, the KL estimate TRL logs, and the loss and its gradient (every
parameter's) on the first step. RLOO's first-step loss is 0 up to rounding on both sides (the ratios are 1 and
each group's leave-one-out advantages sum to 0), so for RLOO the gradient carries the comparison.

Cases: RLOO in the paper's form (KL as a k1 penalty summed into the sequence reward, leave-one-out baseline,
no advantage whitening; k = 4 and k = 2), and GRPO with ``loss_type="grpo"`` (the paper's token mean per
sequence) and ``"dapo"`` (one token mean over the batch), each with group-std scaling and the k3 KL in the loss.

Setup, on the scratch model and tokenizer (``tests/scratch_model.py``): 4 plain-string prompts of different
token lengths (so TRL left-pads some), one generation batch holding every completion as one training batch
(``per_device_train_batch_size`` = prompts x k, one accumulation step, one iteration), temperature 0.9 on
both sides, completions of at most 12 tokens, learning rate 0 and ``max_steps=1``. The reference is the
perturbed scratch model, so the KL terms are far from zero (about 6 nats per token here): the tests check that
dropping the KL, or flipping the advantages' sign, would move the result far outside the tolerance.

TRL options pinned (checked to exist on the installed configs): ``beta`` (RLOO 0.05, GRPO 0.04: nonzero, the
paper's), ``epsilon=0.2`` with ``epsilon_high=None`` (symmetric clipping, as zoo's ``clip_eps``), RLOO
``normalize_advantages=False`` (the paper does not whiten) and ``reward_clip_range=None``; GRPO
``scale_rewards="group"``, ``importance_sampling_level="token"``, ``use_bias_correction_kl=False`` (TRL's
default multiplies the KL by the importance ratio, which leaves its value at 1 but changes its gradient: the
paper's KL has no such factor), ``top_entropy_quantile=1.0``, ``entropy_coef=0.0``, ``delta=None``,
``off_policy_mask_threshold=None``, ``multi_objective_aggregation="sum_then_normalize"`` (one reward function
anyway); both ``mask_truncated_completions=False`` (zoo keeps completions without EOS; its ``missing_eos_penalty``
is off), ``use_vllm=False``, sampling ``top_k=0, top_p=1, repetition_penalty=1``, no gradient checkpointing.

Sampling is nudged towards EOS (``generation_kwargs`` with a ``sequence_bias`` on the EOS token) so that a batch
reliably holds both completions that stop at EOS and completions cut at 12 tokens; this only changes which
completions are drawn, not how either library scores them (the log-probabilities are the model's own).

Layouts, handled explicitly below: TRL keeps left-padded prompt ids and right-padded completion ids with a
completion mask that is 1 up to and including the first EOS (the ids after it are padding); zoo keeps each
completion cut after its first EOS (the EOS included) in one right-padded prompt + completion row, its mask
shifted by one column (column t scores token t+1). TRL draws its prompts in a seeded shuffle and repeats each
prompt k times in consecutive rows, as zoo does; zoo's rollout is given the prompts in TRL's order, so row r
is the same completion on both sides. TRL shuffles the rows again after scoring, before the loss, which
changes neither a mean over rows nor the gradient.

TRL 1.16's trainers take no ``ref_model=``: they load the reference from ``model.config._name_or_path``. The
policy handed to TRL therefore names the reference's directory, and the test checks that TRL's reference holds
the reference's weights.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from datasets import Dataset

import zoo.rollout
from zoo.config import RolloutConfig
from zoo.data.tokenize import tokenize_prompt
from zoo.losses import GRPOLoss, RLOOLoss
from zoo.losses.grpo import group_advantages
from zoo.losses.on_policy import sequence_advantages
from zoo.losses.rloo import leave_one_out_advantages
from zoo.models import ActorCritic, Reference, load_causal_lm, load_tokenizer, policy_value_outputs
from zoo.rollout import Experience, Samples

# Prompts of different token lengths (TRL left-pads the shorter ones in its batch).
PROMPTS = ["The acting was", "I thought the plot", "The soundtrack", "Honestly, the script"]
MAX_NEW_TOKENS = 12
TEMPERATURE = 0.9
SEED = 0
RLOO_BETA, GRPO_BETA, CLIP_EPS = 0.05, 0.04, 0.2
EOS_BIAS = 4.5  # added to the EOS logit while sampling only (about half the completions stop at EOS)
# Tolerances: both sides compute the same float32 arithmetic in matmuls of other shapes (TRL: left-padded rows and
# a fused, chunked LM head; zoo: padding-free packed rows), so a token's log-prob (~-7 nats; the scratch model's
# logits are large) agrees to ~1e-6 relative, ~1e-5 absolute (measured: <= 1e-5), a sum of 12 of them to ~3e-5.
REL, ABS = 1e-5, 1e-6
TOKEN_ABS = 1e-5  # one token's log-prob
SEQ_ABS = 5e-5  # a sum of up to 12 of them
GRAD_REL = 1e-4  # ||g_zoo - g_trl|| / ||g_trl|| (measured: ~5e-6)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the model is tiny, and on a busy 2-core machine two threads wait on each other
    (a step then takes seconds instead of a fraction of one). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reward(prompt: str, completion: str) -> float:
    """A deterministic score of the text: vowels, minus a third of the characters, plus 2 per word shared with
    the prompt. Random completions of one prompt rarely tie on it."""
    shared = set(prompt.lower().split()) & set(completion.lower().split())
    return sum(ch in "aeiou" for ch in completion.lower()) - len(completion) / 3 + 2.0 * len(shared)


class TextScorer:
    """zoo's ``Scorer`` protocol around ``reward``: a float32 tensor, as TRL turns the python floats into."""

    module = torch.nn.Identity()

    def __call__(self, prompts: list, completions: list[str], device) -> torch.Tensor:
        return torch.tensor([reward(p, c) for p, c in zip(prompts, completions)], dtype=torch.float32, device=device)


def capturing(base):
    """``base`` (TRL's RLOOTrainer or GRPOTrainer) recording what the first step computes: the scored generation
    batch (before TRL's row shuffle), the reference's per-token log-probs, the loss, and the gradients after
    backward (before clipping and the optimizer step)."""

    class Capturing(base):
        def _generate_and_score_completions(self, inputs):
            out = super()._generate_and_score_completions(inputs)
            self.captured_prompts = [x["prompt"] for x in inputs]
            self.captured_batch = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
            return out

        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            if model is self.ref_model:
                self.captured_ref_logps = out[0].detach().clone()
            return out

        def _compute_loss(self, model, inputs):
            loss = super()._compute_loss(model, inputs)
            self.captured_loss = loss.detach().clone()
            return loss

        def training_step(self, model, inputs, num_items_in_batch):
            out = super().training_step(model, inputs, num_items_in_batch)
            self.captured_grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()
                                   if p.grad is not None}
            return out

    return Capturing


def config_kwargs(config_cls, **kwargs) -> dict:
    """``kwargs``, each checked to be an option of ``config_cls`` (a renamed option must not vanish silently)."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    missing = set(kwargs) - fields
    assert not missing, f"{config_cls.__name__} has no {sorted(missing)}"
    return kwargs


def run_trl(algo: str, k: int, loss_type: str | None, scratch, out):
    """TRL's trainer for ``algo`` trained one step at lr 0 with every completion in one batch; returns it with
    what it captured and the texts its reward function saw."""
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    tokenizer = load_tokenizer(str(scratch["policy"]))
    policy = load_causal_lm(str(scratch["policy"]))
    policy.config.name_or_path = str(scratch["reference"])  # TRL loads its reference from here (no ref_model=)
    seen: list[tuple[list, list]] = []

    def text_reward(prompts, completions, **kwargs):
        seen.append((list(prompts), list(completions)))
        return [reward(p, c) for p, c in zip(prompts, completions)]

    common = {
        "output_dir": str(out), "per_device_train_batch_size": len(PROMPTS) * k, "gradient_accumulation_steps": 1,
        "num_generations": k, "num_iterations": 1, "max_completion_length": MAX_NEW_TOKENS, "temperature": TEMPERATURE,
        "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
        "generation_kwargs": {"sequence_bias": [[[tokenizer.eos_token_id], EOS_BIAS]]}, "learning_rate": 0.0,
        "max_steps": 1, "logging_steps": 1, "report_to": "none", "use_cpu": True, "use_vllm": False, "seed": SEED,
        "save_strategy": "no", "gradient_checkpointing": False, "disable_dropout": True, "bf16": False,
        "epsilon": CLIP_EPS, "epsilon_high": None, "mask_truncated_completions": False}
    if algo == "rloo":
        base = RLOOTrainer
        args = RLOOConfig(**config_kwargs(RLOOConfig, beta=RLOO_BETA, normalize_advantages=False,
                                          reward_clip_range=None, **common))
    else:
        base = GRPOTrainer
        args = GRPOConfig(**config_kwargs(
            GRPOConfig, beta=GRPO_BETA, loss_type=loss_type, scale_rewards="group", importance_sampling_level="token",
            use_bias_correction_kl=False, top_entropy_quantile=1.0, entropy_coef=0.0, use_adaptive_entropy=False,
            delta=None, off_policy_mask_threshold=None, multi_objective_aggregation="sum_then_normalize",
            cast_lm_head_to_fp32=False, **common))
    trainer = capturing(base)(model=policy, reward_funcs=text_reward, args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]))
    trainer.train()
    trainer.seen = seen
    return trainer


def trl_rows(trainer, tokenizer) -> dict:
    """TRL's generation batch unpadded, row by row: prompt ids (left padding dropped), completion ids (the
    mask keeps the tokens up to and including the first EOS; what follows is padding), and the texts."""
    batch = trainer.captured_batch
    prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"])]
    completion_ids = [ids[m.bool()].tolist() for ids, m in zip(batch["completion_ids"], batch["completion_mask"])]
    eos = tokenizer.eos_token_id
    for ids in completion_ids:  # EOS, if any, is the last kept token; without it the completion is cut at the limit
        assert eos not in ids[:-1] and (ids[-1] == eos or len(ids) == MAX_NEW_TOKENS), ids
    (prompts, texts), = trainer.seen  # one call of the reward function: the whole generation batch
    assert prompts == trainer.captured_prompts
    return {"prompts": prompts, "prompt_ids": prompt_ids, "completion_ids": completion_ids, "texts": texts,
            "ended": [ids[-1] == eos for ids in completion_ids]}


def run_zoo(loss_fn, rows: dict, k: int, scratch, monkeypatch) -> dict:
    """zoo's rollout of TRL's completions (``sample`` patched to return them), then the loss and its gradient on
    one micro-batch holding every row."""
    tokenizer = load_tokenizer(str(scratch["policy"]))
    policy = load_causal_lm(str(scratch["policy"]))
    reference = Reference(policy, load_causal_lm(str(scratch["reference"])), str(scratch["reference"]))
    unique = rows["prompts"][::k]  # TRL's group order: each prompt k times in consecutive rows
    assert rows["prompts"] == [p for p in unique for _ in range(k)] and len(set(unique)) == len(PROMPTS)
    prompt_ids = [tokenize_prompt(tokenizer, p) for p in rows["prompts"]]
    assert prompt_ids == rows["prompt_ids"]  # zoo's prompt tokenization is TRL's
    texts = tokenizer.batch_decode(rows["completion_ids"], skip_special_tokens=True)
    assert texts == rows["texts"]  # zoo's decoding (what its scorer reads) is the text TRL's reward function read
    samples = Samples(list(rows["prompts"]), prompt_ids, rows["completion_ids"], texts, rows["ended"])

    def trl_samples(model, tok, prompts, max_new_tokens, temperature=1.0, batch_size=64, seed=0, desc=None):
        assert (prompts, max_new_tokens, temperature) == (samples.prompts, MAX_NEW_TOKENS, TEMPERATURE)
        return samples

    monkeypatch.setattr(zoo.rollout, "sample", trl_samples)
    seen = {}
    shaped = loss_fn.shape_rewards

    def recording_shape_rewards(*args, **kwargs):
        seen["rewards"], seen["kl"] = shaped(*args, **kwargs)
        return seen["rewards"], seen["kl"]

    monkeypatch.setattr(loss_fn, "shape_rewards", recording_shape_rewards)
    n = len(rows["prompts"])
    settings = RolloutConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, num_minibatches=1, ppo_epochs=1,
                             forward_batch_size=n)
    experience = Experience(loss_fn, policy, None, reference, TextScorer(), tokenizer, unique, settings, batch_size=n,
                            grad_accum_steps=1, seed=0)
    rollout, metrics = experience.rollout(unique, 0, "cpu")
    mask = rollout["completion_mask"][:, 1:].float()
    (micro,) = list(experience.minibatches(dict(rollout), 0, metrics["objective/kl_coef"]))  # every row, shuffled

    policy.zero_grad(set_to_none=True)
    out = policy_value_outputs(ActorCritic(policy, None), micro)
    loss = loss_fn(out).objective(loss_fn.count_tokens(micro))  # dapo: the window's token count is this batch's
    loss.backward()
    # the same loss with the KL term dropped (GRPO's KL is a loss term): the test checks it is far from TRL's
    no_kl = loss_fn(type(out)(**{**vars(out), "kl_coef": 0.0})).objective(loss_fn.count_tokens(micro))
    return {"rollout": rollout, "mask": mask, "metrics": metrics, "rewards": seen["rewards"], "loss": loss.detach(),
            "loss_without_kl": no_kl.detach(), "grads": {n: p.grad for n, p in policy.named_parameters()}}


def masked_rows(x: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Each row's values at its mask's 1s, in order: the same per-token values whatever the row's padding."""
    return [row[m.bool()] for row, m in zip(x, mask)]


def assert_close(ours, theirs, rel=REL, abs=ABS, what=""):
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=rel, atol=abs, msg=lambda m: f"{what}: {m}")


def grad_relative_difference(ours: dict, theirs: dict) -> tuple[float, float]:
    """(||g_zoo - g_trl|| / ||g_trl||, ||g_trl||) over every parameter."""
    assert set(ours) == set(theirs)
    diff = sum(((ours[n] - theirs[n]).double() ** 2).sum() for n in theirs).sqrt().item()
    norm = sum((theirs[n].double() ** 2).sum() for n in theirs).sqrt().item()
    return diff / norm, norm


CASES = [("rloo", 4, None), ("rloo", 2, None), ("grpo", 4, "grpo"), ("grpo", 4, "dapo")]


@pytest.mark.parametrize(("algo", "k", "loss_type"), CASES, ids=["rloo-k4", "rloo-k2", "grpo", "dapo"])
def test_same_completions_give_trl_advantages_loss_and_gradient(algo, k, loss_type, scratch, tmp_path, monkeypatch):
    tokenizer = load_tokenizer(str(scratch["policy"]))
    trainer = run_trl(algo, k, loss_type, scratch, tmp_path / "trl")
    reference = load_causal_lm(str(scratch["reference"]))
    ref_weight = dict(reference.named_parameters())["lm_head.weight"]
    assert torch.equal(dict(trainer.ref_model.named_parameters())["lm_head.weight"], ref_weight)  # TRL's reference

    rows = trl_rows(trainer, tokenizer)
    assert any(rows["ended"]) and not all(rows["ended"])  # completions that stop at EOS and ones cut at the limit
    if algo == "rloo":
        loss_fn = RLOOLoss(samples_per_prompt=k, clip_eps=CLIP_EPS, kl_coef=RLOO_BETA, normalize_scores=False,
                           missing_eos_penalty=None)
    else:
        loss_fn = GRPOLoss(samples_per_prompt=k, clip_eps=CLIP_EPS, kl_coef=GRPO_BETA, loss_type=loss_type,
                           scale_rewards="group", normalize_scores=False, missing_eos_penalty=None)
    ours = run_zoo(loss_fn, rows, k, scratch, monkeypatch)
    batch, mask = trainer.captured_batch, ours["mask"]

    # the same tokens are scored: each row's completion mask counts the same tokens (the EOS included)
    assert mask.sum(1).tolist() == batch["completion_mask"].sum(1).tolist()
    trl_mask = batch["completion_mask"]
    # reference log-probs at the sampling temperature, token by token
    for i, (a, b) in enumerate(zip(masked_rows(ours["rollout"]["ref_logps"], mask),
                                   masked_rows(trainer.captured_ref_logps, trl_mask))):
        assert_close(a, b, abs=TOKEN_ABS, what=f"reference log-probs, row {i}")

    scores = torch.tensor([reward(p, t) for p, t in zip(rows["prompts"], rows["texts"])], dtype=torch.float32)
    assert (scores.view(-1, k).std(1) > 0.1).any()  # a group whose rewards differ: its advantages are not all 0
    theirs_adv = batch["advantages"]  # (N,), TRL's rows in generation order (before its shuffle)
    ours_adv = sequence_advantages(ours["rollout"]["advantages"], mask)  # (N,) zoo's, broadcast on valid tokens
    # RLOO's rewards carry beta times two sums of log-probs (old, reference), each good to SEQ_ABS, and an advantage
    # is a reward minus its siblings' mean; GRPO's rewards are the scores alone (its KL is in the loss)
    assert_close(ours_adv, theirs_adv, abs=4 * RLOO_BETA * SEQ_ABS if algo == "rloo" else ABS, what="advantages")
    # zoo's per-token advantages are that one value on every valid token and 0 elsewhere
    assert_close(ours["rollout"]["advantages"], ours_adv[:, None] * mask, what="advantages per token")

    if algo == "rloo":
        # sequence rewards R_i = score - beta * sum_t (log pi_old - log pi_ref), TRL's from its own pieces
        assert_close(ours["rollout"]["old_logps"].sum(1), batch["old_logps"], abs=SEQ_ABS,
                     what="old sequence log-probs")
        trl_ref_sums = (trainer.captured_ref_logps * trl_mask).sum(1)
        trl_rewards = scores - RLOO_BETA * (batch["old_logps"] - trl_ref_sums)
        assert_close(ours["rewards"].sum(1), trl_rewards, abs=2 * RLOO_BETA * SEQ_ABS,
                     what="KL-penalised sequence rewards")
        # the KL is not negligible: without it the advantages would be far off
        without_kl = leave_one_out_advantages(scores, k)
        assert (without_kl - theirs_adv).abs().max() > 1e3 * ABS
    else:
        assert_close(ours["rewards"].sum(1), scores, what="sequence rewards (the scores: GRPO's KL is in the loss)")
        assert_close(group_advantages(scores, k, "group"), theirs_adv, what="group-normalised scores")
    # TRL logs the KL estimate it used: k1 (RLOO, old vs ref) or k3 (GRPO, policy vs ref) per token, over all tokens
    old, ref = ours["rollout"]["old_logps"], ours["rollout"]["ref_logps"]
    r = old - ref
    token_kl = r if algo == "rloo" else torch.expm1(-r) + r
    assert (token_kl * mask).sum().item() / mask.sum().item() == pytest.approx(trainer.state.log_history[0]["kl"],
                                                                              rel=1e-5)

    # the first step's loss and its gradient
    if algo == "rloo":
        # At the first step every ratio is 1 and each group's leave-one-out advantages sum to 0, so RLOO's loss is
        # 0 up to rounding on both sides (each side's sequence ratio is 1 to about SEQ_ABS, times advantages of a
        # few units): the value says little, the gradient below is the comparison that counts.
        bound = SEQ_ABS * theirs_adv.abs().max().item()
        assert abs(trainer.captured_loss.item()) < bound and abs(ours["loss"].item()) < bound
    else:
        assert_close(ours["loss"], trainer.captured_loss, what="loss")
    grad_diff, grad_norm = grad_relative_difference(ours["grads"], trainer.captured_grads)
    assert grad_diff < GRAD_REL, grad_diff
    assert grad_norm > 1.0  # a real gradient: a wrong sign (g -> -g) would give a relative difference of 2
    if algo == "grpo":  # the KL is in the loss: without it the loss would be far off
        assert (ours["loss_without_kl"] - trainer.captured_loss).abs() > 1e3 * ABS
