"""What a loss's ``model_output`` declaration means to a run: the models to build, how the trainer runs
them, and how the result is evaluated, one entry of :data:`MODEL_KINDS` per kind.

- ``logps``: a causal-LM policy (LoRA-wrapped if asked) and its frozen reference; completion log-probs;
  evaluated by sampling. With ``algo.online_feedback`` the batches are on-policy pairs (``OnlinePairs``).
- ``scores``: a scalar-head reward model; one score per sequence; evaluated on held-out pairs.
- ``policy_values``: PPO's policy + value model (trained together), reference and frozen reward scorer;
  log-probs and values per token; evaluated by sampling. The batches are its rollouts (``Experience``).
- ``rollout_logps``: the same without a value model (RLOO, GRPO): the policy alone is trained on its rollouts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from zoo.chat_templates import HH_TRANSCRIPT
from zoo.config import portable
from zoo.data.batches import BatchSource
from zoo.evaluate import TaskMetrics, evaluate_policy_run, evaluate_reward_run
from zoo.feedback.base import JudgeScorer, RewardScorer
from zoo.losses.base import Loss
from zoo.models import (
    ActorCritic,
    Reference,
    adapter_reward_model,
    add_adapter_from,
    add_fresh_adapter,
    apply_lora,
    is_adapter_dir,
    last_token_scores,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    policy_value_outputs,
    sequence_logps,
    sequence_scores,
    value_model,
)
from zoo.online import OnlinePairs
from zoo.rollout import Experience

if TYPE_CHECKING:  # stages trains with zoo.trainer, which reads MODEL_KINDS from here
    from zoo.stages import Prepared


@dataclass
class Built:
    """The models of a run: what ``fit`` trains, what is saved and evaluated, the frozen reference, and
    for online losses the batch source that samples from the model being trained."""

    model: torch.nn.Module
    policy: torch.nn.Module
    reference: Reference | None
    online_source: Callable[[Loss, list], BatchSource] | None = None  # (loss, prompts) -> batch source
    info: dict = field(default_factory=dict)  # extra metrics for metrics.json


def _policy_and_reference(cfg: DictConfig, init_path: str, reference_path: str) -> tuple[torch.nn.Module, Reference]:
    m = cfg.model
    policy = load_causal_lm(init_path, m.dtype, m.trust_remote_code, cfg.quant.bits, m.get("attn_implementation"))
    if cfg.peft.enabled:
        p = cfg.peft
        policy = apply_lora(policy, p.r, p.alpha, p.dropout, p.target_modules, quantized=cfg.quant.bits is not None)
    if cfg.peft.enabled and init_path == reference_path:
        return policy, Reference(policy, None, reference_path)  # the base with adapters disabled: no second copy
    return policy, Reference(policy, load_causal_lm(reference_path, m.dtype, m.trust_remote_code, cfg.quant.bits,
                                                    m.get("attn_implementation")), reference_path)


def build_policy(cfg: DictConfig, init_path: str, stages: Prepared, tokenizer, task: TaskMetrics | None) -> Built:
    """The trainable policy (LoRA-wrapped if asked) and its frozen reference; with
    ``algo.online_feedback`` also the source of on-policy pairs labelled by ``cfg.feedback``."""
    policy, reference = _policy_and_reference(cfg, init_path, str(stages.reference.path))
    if not cfg.algo.get("online_feedback", False):
        return Built(policy, policy, reference)
    labeler = instantiate(cfg.feedback.source)
    rollout = cfg.rollout  # how the pairs are sampled

    def online_source(loss_fn: Loss, prompts: list) -> OnlinePairs:
        return OnlinePairs(policy, labeler, tokenizer, prompts, cfg.trainer.batch_size, cfg.trainer.grad_accum_steps,
                           cfg.seed, rollout.max_new_tokens, rollout.temperature, cfg.data.max_length,
                           gold_fn=task.gold_reward if task else None)

    return Built(policy, policy, reference, online_source, {"online_feedback": cfg.feedback.name})


def build_reward_model(cfg: DictConfig, init_path: str, stages: Prepared, tokenizer, task: TaskMetrics | None
                       ) -> Built:
    """A scalar-head reward model initialised from ``init_path`` (the SFT policy by default), no reference."""
    m = cfg.model
    model = load_reward_model(init_path, tokenizer.pad_token_id, m.dtype, m.trust_remote_code, cfg.quant.bits,
                              m.get("attn_implementation"))
    if cfg.peft.enabled:
        p = cfg.peft
        model = apply_lora(model, p.r, p.alpha, p.dropout, p.target_modules, quantized=cfg.quant.bits is not None,
                           task_type="SEQ_CLS")  # SEQ_CLS also trains the new head (modules_to_save)
    return Built(model, model, None)


def _check_actor_critic(cfg: DictConfig, reward_path: str | None, critic: bool) -> None:
    """Settings the models of a loss trained on rollouts cannot be built with, named before anything loads;
    ``critic``: with PPO's value model."""
    algo = cfg.algo
    if algo.direct_judge:
        if critic and algo.value_init != "reference":
            raise ValueError("algo.direct_judge=true rewards rollouts with the judge's rating: there is no reward model "
                             "to start the value model from; set algo.value_init=reference")
        if not hasattr(get_object(cfg.feedback.source._target_), "score"):
            raise ValueError(f"algo.direct_judge=true needs a feedback source with a score mode (feedback=judge or "
                             f"feedback=llm_judge), but feedback={cfg.feedback.name} has none")
    elif reward_path is None:
        raise ValueError(f"algo={algo.name} scores rollouts with a reward model: add reward_model to algo.stages")
    if cfg.peft.enabled and cfg.peft.dropout > 0:
        raise ValueError(f"algo={algo.name} needs peft.dropout=0 (got {cfg.peft.dropout}): old log-probs are taken "
                         f"without dropout, so dropout in the update would make the ratio differ from 1 at the first "
                         f"step")
    adapter_rm = reward_path is not None and is_adapter_dir(reward_path)
    if adapter_rm and not cfg.peft.enabled:
        raise ValueError(f"algo.reward_model={reward_path} is a LoRA adapter; it needs peft=lora (one shared base)")
    if not critic:
        return
    if algo.value_init not in ("reward", "reference"):
        raise ValueError(f"algo.value_init must be 'reward' or 'reference', got {algo.value_init!r}")
    if cfg.peft.enabled and algo.value_init == "reward" and not adapter_rm:
        raise ValueError(f"algo.value_init=reward under peft=lora starts the value adapter from a LoRA reward model, "
                         f"but {reward_path} is a full model: set algo.value_init=reference")


def _check_same_vocabulary(policy_tokenizer, reward_tokenizer, reward_path: str) -> None:
    """The value model reads the policy's token ids with the reward model's trunk (value_init=reward), so every
    policy token must have the same id in the reward model's vocabulary; a hub RM of another family has not."""
    reward_vocab = reward_tokenizer.get_vocab()
    differ = [t for t, i in policy_tokenizer.get_vocab().items() if reward_vocab.get(t) != i]
    if differ:
        raise ValueError(f"algo.value_init=reward starts the value model from the reward model's trunk, which reads the "
                         f"policy's token ids, but {len(differ)} of the policy's tokens (e.g. {differ[0]!r}) have another "
                         f"id or none in {reward_path}'s vocabulary: set algo.value_init=reference")


def build_actor_critic(cfg: DictConfig, init_path: str, stages: Prepared, tokenizer, task: TaskMetrics | None,
                       critic: bool = True) -> Built:
    """PPO's models: policy + value (trained together), the frozen reference and the frozen reward model;
    without the value model when ``critic`` is false (RLOO, GRPO).

    Without LoRA these are four models. With ``peft=lora`` there is one frozen base: the policy is
    adapter ``default``, the value model adapter ``value`` (+ head), the reference the base with
    adapters disabled, and a LoRA reward model (the reward stage trains one under ``peft=lora``)
    adapter ``reward`` (+ head); a full reward model stays a separate frozen model.
    """
    m, algo = cfg.model, cfg.algo
    reward_path = None if algo.direct_judge or stages.reward_model is None else str(stages.reward_model.path)
    _check_actor_critic(cfg, reward_path, critic)
    if critic and algo.value_init == "reward" and reward_path is not None and not is_adapter_dir(reward_path):
        _check_same_vocabulary(tokenizer, load_tokenizer(reward_path, m.trust_remote_code), reward_path)  # before loading
    reference_path = str(stages.reference.path)
    policy, reference = _policy_and_reference(cfg, init_path, reference_path)
    shared = policy if cfg.peft.enabled else None
    if reward_path is None:  # d-RLAIF: the judge's expected rating is the reward, no reward model
        scorer = JudgeScorer(instantiate(cfg.feedback.source))
    else:
        scorer = reward_model_scorer(cfg, policy, reward_path, tokenizer)
    value = None
    if critic:
        if shared is not None and algo.value_init == "reward":
            add_adapter_from(policy, reward_path, "value", trainable=True)  # a copy of the RM's adapter; new zero head
        elif shared is not None:
            p = cfg.peft
            add_fresh_adapter(policy, "value", p.r, p.alpha, p.dropout, p.target_modules)
        value = value_model(reward_path if algo.value_init == "reward" else reference_path, policy.config.hidden_size,
                            m.dtype, m.trust_remote_code, shared=shared)
    model = ActorCritic(policy, value, checkpoint_value=algo.get("value_checkpointing", False))
    gold_fn = task.gold_reward if task else None

    def online_source(loss_fn: Loss, prompts: list) -> Experience:
        return Experience(loss_fn, policy, value, reference, scorer, tokenizer, prompts, cfg.rollout,
                          cfg.trainer.batch_size, cfg.trainer.grad_accum_steps, cfg.seed, cfg.data.max_length, gold_fn)

    info = {"reward_model": portable(reward_path, cfg.stages.cache_dir) if reward_path
            else f"judge rating ({cfg.feedback.name})",
            "reward_model_shares_base": shared is not None and reward_path is not None and is_adapter_dir(reward_path)}
    if critic:
        info["value_init"] = algo.value_init
    if reward_path and stages.reward_model.info:
        info["reward_model_stage"] = {k: v for k, v in stages.reward_model.info.items() if k.startswith("rm_")}
    return Built(model, policy, reference, online_source, info)


def build_policy_on_rollouts(cfg: DictConfig, init_path: str, stages: Prepared, tokenizer, task: TaskMetrics | None
                             ) -> Built:
    """RLOO's and GRPO's models: PPO's (``build_actor_critic``) without the value model."""
    return build_actor_critic(cfg, init_path, stages, tokenizer, task, critic=False)


def reward_model_scorer(cfg: DictConfig, policy, reward_path: str, tokenizer) -> RewardScorer:
    """The frozen reward model at ``reward_path`` as a rollout scorer: an adapter (+ head) on the policy's
    own base when it is a LoRA reward model, else a separate model."""
    m = cfg.model
    scorer_tokenizer = load_tokenizer(reward_path, m.trust_remote_code)  # the RM reads text through its own
    if scorer_tokenizer.chat_template is None:
        # a hub RM without a template (GPT-2 RMs trained on HH-RLHF) reads conversations as the raw HH text it was
        # trained on, the last reply unterminated, so its score is read at the reply's last token
        scorer_tokenizer.chat_template = HH_TRANSCRIPT
    if is_adapter_dir(reward_path) and hasattr(policy, "peft_config"):
        reward = adapter_reward_model(policy, reward_path, policy.config.hidden_size)
        score_fn = reward.scores
    else:
        if is_adapter_dir(reward_path):  # a LoRA RM beside a plain model (best-of-N's reference): on its own base
            from peft import PeftModel

            base = load_reward_model(policy.config.name_or_path, tokenizer.pad_token_id, m.dtype, m.trust_remote_code)
            # SEQ_CLS restores the trained head too; merged, a forward costs what the plain model's does
            reward = PeftModel.from_pretrained(base, reward_path).merge_and_unload()
        else:  # a reward model of its own, perhaps another family's (a hub RM): its own tokenizer's PAD
            reward = load_reward_model(reward_path, scorer_tokenizer.pad_token_id, m.dtype, m.trust_remote_code)
        reward.eval().requires_grad_(False)
        score_fn = functools.partial(last_token_scores, reward)  # (ids, mask) -> (N,), as it was trained
    return RewardScorer(score_fn, reward, scorer_tokenizer, cfg.data.max_length, cfg.rollout.forward_batch_size)


@dataclass(frozen=True)
class ModelKind:
    """One ``model_output`` declaration: ``forward(model, batch)`` -> the loss's input (the trainer's),
    ``build(cfg, init_path, stages, tokenizer, task) -> Built`` (the run's), ``evaluate(cfg, policy, reference,
    tokenizer, items, task) -> (metrics, sample rows)``, and whether the evaluation items are held-out
    training rows (``eval_on_rows``: a reward model is scored on pairs) rather than prompts."""

    forward: Callable
    build: Callable[..., Built]
    evaluate: Callable
    eval_on_rows: bool = False


MODEL_KINDS = {
    "logps": ModelKind(sequence_logps, build_policy, evaluate_policy_run),
    "scores": ModelKind(sequence_scores, build_reward_model, evaluate_reward_run, eval_on_rows=True),
    "policy_values": ModelKind(policy_value_outputs, build_actor_critic, evaluate_policy_run),
    "rollout_logps": ModelKind(policy_value_outputs, build_policy_on_rollouts, evaluate_policy_run),
}
