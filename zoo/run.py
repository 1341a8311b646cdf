"""One training run, end to end: stages -> data -> models -> fit -> evaluate -> run dir.

The run dir (Hydra's output dir) receives ``config.yaml`` (resolved), ``log.jsonl``, ``metrics.json``,
``samples.jsonl`` and ``model/`` (adapter only under LoRA). A run that fails still writes
``metrics.json`` with ``"status": "failed"`` and the error; checkpoints and finished stages stay.
"""

from __future__ import annotations

import json
import random
import resource
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from zoo import stages
from zoo.data.collate import COLLATORS
from zoo.data.load import (
    load_rows,
    prompt_key,
    read_eval_prompts,
    read_hub,
    read_rows,
    split_by_prompt,
    tokenize_rows,
)
from zoo.data.schema import DataError
from zoo.evaluate import evaluate, evaluate_reward_model
from zoo.losses.base import Loss
from zoo.models import (
    ActorCritic,
    Reference,
    adapter_reward_model,
    add_adapter_from,
    add_fresh_adapter,
    apply_lora,
    is_adapter_dir,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    value_model,
)
from zoo.online import OnlinePairs
from zoo.rollout import Experience, JudgeScorer, RewardScorer
from zoo.trainer import DatasetBatches, fit


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return None


def reset_peak_memory() -> bool:
    """Start this run's peak afresh: the CUDA allocator's peak, and on Linux the process's RSS high-water mark
    (writing 5 to /proc/self/clear_refs resets VmHWM). Without it a run in a reused process (the joblib
    workers of a multirun, the basic launcher's one process) would report the largest peak of any run
    before it. Returns whether the RSS peak could be reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(rss_reset: bool = False) -> tuple[float, str]:
    """Peak memory: the CUDA allocator's peak on a GPU; else the RSS high-water mark since
    ``reset_peak_memory`` (``rss_reset``), else the process's lifetime peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    hwm = _proc_status_mb("VmHWM") if rss_reset else None
    if hwm is not None:
        return hwm, "run_peak_rss"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def current_memory_mb() -> float:
    """Memory in use now, on the same scale as ``peak_memory_mb``: CUDA allocated, else resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    rss = _proc_status_mb("VmRSS")  # not Linux: no cheap RSS reading; the peak alone is still reported
    return float("nan") if rss is None else rss


def _read_source(path: str, split: str, subset: str | None) -> list[dict]:
    """Rows from a local file, or from a hub id / saved dataset directory."""
    p = Path(path)
    return read_rows(p) if p.is_file() or p.suffix in (".json", ".jsonl", ".parquet") else read_hub(path, split, subset)


def resolve_data(cfg: DictConfig, kind: str, reference_path: str, eval_on_rows: bool = False
                 ) -> tuple[list[dict], list, str, int, str]:
    """(training rows, eval items, source name, rows skipped, where the eval items came from) for a loss
    consuming ``kind``.

    Eval items are prompts (policies are evaluated by sampling), or, with ``eval_on_rows``, held-out rows
    (reward models are evaluated on pairs they never saw). The training data is never shrunk silently:
    rows leave it only through ``data.eval_fraction`` (a seeded split by prompt, see :func:`eval_split`)."""
    data = cfg.data
    if kind == "prompts" and data.prompts_path:
        source = data.prompts_path
    elif kind in ("pairs", "unpaired") and data.preference_stage:
        source = str(stages.preference_stage(cfg, Path(reference_path), Path(data.prompts_path)))
    elif kind == "demonstrations" and data.demonstrations_path:
        source = data.demonstrations_path
    elif data.path:
        source = data.path
    else:
        raise DataError(f"data={data.name} gives no {kind} data: set data.path=FILE")
    rows, skipped = load_rows(kind, source, _read_source(source, data.split, data.subset), data.skip_bad_rows)
    rows, eval_items, eval_source = eval_split(cfg, rows, source, eval_on_rows)
    if kind == "unpaired" and data.desirable_fraction < 1.0:
        rows = keep_desirable(rows, data.desirable_fraction, cfg.seed)
    if data.max_rows:
        rows = rows[: data.max_rows]
    return rows, eval_items[: cfg.eval.num_prompts], source, skipped, eval_source


def eval_split(cfg: DictConfig, rows: list[dict], source: str, eval_on_rows: bool) -> tuple[list[dict], list, str]:
    """(training rows, eval items, a description of where they came from).

    - ``data.eval_path``: the prompts of that file (a reward model's run needs pairs there); every row trains.
    - ``data.eval_fraction``: a seeded split by prompt (``data.eval_split_seed``): the held-out prompts'
      rows leave training, and never half a pair or one of a prompt's labelled rows. A reward model's
      run uses it before ``eval_path`` (whose prompts it cannot score), a policy's run only without one.
    - neither: every row trains and the evaluation is skipped, which the run says.
    """
    data = cfg.data
    if data.eval_path and not (eval_on_rows and data.eval_fraction):
        if eval_on_rows:
            pairs, _ = load_rows("pairs", data.eval_path, read_rows(data.eval_path))
            return rows, pairs, f"data.eval_path={data.eval_path} ({len(pairs)} pairs)"
        prompts = read_eval_prompts(data.eval_path)
        return rows, prompts, f"data.eval_path={data.eval_path} ({len(prompts)} prompts)"
    if data.eval_fraction:
        train, held = split_by_prompt(rows, data.eval_fraction, data.eval_split_seed)
        items = held if eval_on_rows else list({prompt_key(r["prompt"]): r["prompt"] for r in held}.values())
        description = (f"data.eval_fraction={data.eval_fraction} (seed {data.eval_split_seed}): {len(held)} of "
                       f"{len(rows)} rows of {source}, {len(items)} {'rows' if eval_on_rows else 'prompts'}")
        print(f"[zoo] evaluation data: {description} held out of training")
        return train, items, description
    if cfg.eval.num_prompts > 0:
        print(f"[zoo] no evaluation data: training on all {len(rows)} rows of {source} and skipping the "
              f"evaluation; set data.eval_path=FILE (prompts or rows) or data.eval_fraction=F (a seeded split "
              f"by prompt) to evaluate")
    return rows, [], "none"


def keep_desirable(rows: list[dict], fraction: float, seed: int) -> list[dict]:
    """All undesirable rows and a seeded ``fraction`` of the desirable ones, in their original order
    (KTO's imbalanced-data setting, e.g. 1:10 from paired data with fraction 0.1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.desirable_fraction must be in (0, 1], got {fraction}")
    desirable = [i for i, r in enumerate(rows) if r["label"]]
    kept = set(random.Random(seed).sample(desirable, max(1, round(fraction * len(desirable))))) if desirable else set()
    return [r for i, r in enumerate(rows) if not r["label"] or i in kept]


@dataclass
class Built:
    """The models of a run: what ``fit`` trains, what is saved and evaluated, the frozen reference, and
    for online losses the batch source that samples from the model being trained."""

    model: torch.nn.Module
    policy: torch.nn.Module
    reference: Reference | None
    online_source: Callable[[Loss, list], object] | None = None  # (loss, prompts) -> batch source
    info: dict = field(default_factory=dict)  # extra metrics for metrics.json (+ "stage_seconds" the builder spent)


def _policy_and_reference(cfg: DictConfig, init_path: str, reference_path: str) -> tuple[torch.nn.Module, Reference]:
    m = cfg.model
    policy = load_causal_lm(init_path, m.dtype, m.trust_remote_code, cfg.quant.bits)
    if cfg.peft.enabled:
        p = cfg.peft
        policy = apply_lora(policy, p.r, p.alpha, p.dropout, p.target_modules, quantized=cfg.quant.bits is not None)
    if cfg.peft.enabled and init_path == reference_path:
        return policy, Reference(policy, None)  # the base with adapters disabled: no second copy
    return policy, Reference(policy, load_causal_lm(reference_path, m.dtype, m.trust_remote_code, cfg.quant.bits))


def build_policy(cfg: DictConfig, init_path: str, reference_path: str, tokenizer) -> Built:
    """The trainable policy (LoRA-wrapped if asked) and its frozen reference; with
    ``algo.online_feedback`` also the source of on-policy pairs labelled by ``cfg.feedback``."""
    policy, reference = _policy_and_reference(cfg, init_path, reference_path)
    if not cfg.algo.online_feedback:
        return Built(policy, policy, reference)
    labeler = instantiate(cfg.feedback.source)
    rollout = cfg.algo.rollout

    def online_source(loss_fn: Loss, prompts: list) -> OnlinePairs:
        return OnlinePairs(policy, labeler, tokenizer, prompts, cfg.trainer.batch_size, cfg.trainer.grad_accum_steps,
                           cfg.seed, rollout.max_new_tokens, rollout.temperature, cfg.data.max_length)

    return Built(policy, policy, reference, online_source, {"online_feedback": cfg.feedback.name})


def build_reward_model(cfg: DictConfig, init_path: str, reference_path: str, tokenizer) -> Built:
    """A scalar-head reward model initialised from ``init_path`` (the SFT policy by default), no reference."""
    m = cfg.model
    model = load_reward_model(init_path, tokenizer.pad_token_id, m.dtype, m.trust_remote_code, cfg.quant.bits)
    if cfg.peft.enabled:
        p = cfg.peft
        model = apply_lora(model, p.r, p.alpha, p.dropout, p.target_modules, quantized=cfg.quant.bits is not None,
                           task_type="SEQ_CLS")  # SEQ_CLS also trains the new head (modules_to_save)
    return Built(model, model, None)


def build_actor_critic(cfg: DictConfig, init_path: str, reference_path: str, tokenizer) -> Built:
    """PPO's models: policy + value (trained together), the frozen reference and the frozen reward model.

    Without LoRA these are four models. With ``peft=lora`` there is one frozen base: the policy is
    adapter ``default``, the value model adapter ``value`` (+ head), the reference the base with
    adapters disabled, and a LoRA reward model (the reward stage trains one under ``peft=lora``)
    adapter ``reward`` (+ head); a full reward model stays a separate frozen model.
    """
    m, algo = cfg.model, cfg.algo
    stage_started = time.perf_counter()
    feedback, reward_path = {}, None
    if algo.direct_judge:
        if algo.value_init != "reference":
            raise ValueError("algo.direct_judge=true rewards rollouts with the judge's rating: there is no reward model "
                             "to start the value model from; set algo.value_init=reference")
        if not hasattr(get_object(cfg.feedback.source._target_), "score"):
            raise ValueError(f"algo.direct_judge=true needs a feedback source with a score mode (feedback=judge or "
                             f"feedback=llm_judge), but feedback={cfg.feedback.name} has none")
    elif algo.reward_model:
        reward_path = algo.reward_model
    elif cfg.data.preference_stage and cfg.data.prompts_path:
        pairs = stages.preference_stage(cfg, Path(reference_path), Path(cfg.data.prompts_path))
        feedback = feedback_info(str(pairs))  # the labels the reward model learned from (RLAIF: the judge's)
        reward_path = str(stages.reward_stage(cfg, Path(reference_path), Path(pairs)))
    else:
        raise DataError(f"algo={algo.name} needs a reward model: set algo.reward_model=DIR (a trained reward model, "
                        f"e.g. the model/ dir of an algo=reward run), or use data with a preference stage (data=world)")
    if algo.value_init not in ("reward", "reference"):
        raise ValueError(f"algo.value_init must be 'reward' or 'reference', got {algo.value_init!r}")
    if cfg.peft.enabled and cfg.peft.dropout > 0:
        raise ValueError(f"PPO needs peft.dropout=0 (got {cfg.peft.dropout}): old log-probs are taken without "
                         f"dropout, so dropout in the update would make the ratio differ from 1 at the first step")
    adapter_rm = reward_path is not None and is_adapter_dir(reward_path)
    if adapter_rm and not cfg.peft.enabled:
        raise ValueError(f"algo.reward_model={reward_path} is a LoRA adapter; it needs peft=lora (one shared base)")
    if cfg.peft.enabled and algo.value_init == "reward" and not adapter_rm:
        raise ValueError(f"algo.value_init=reward under peft=lora starts the value adapter from a LoRA reward model, "
                         f"but {reward_path} is a full model: set algo.value_init=reference")
    stage_seconds = time.perf_counter() - stage_started  # the reward stage, when not cached yet
    policy, reference = _policy_and_reference(cfg, init_path, reference_path)
    hidden = policy.config.hidden_size
    shared = policy if cfg.peft.enabled else None
    if reward_path is None:  # d-RLAIF: the judge's expected rating is the reward, no reward model
        scorer = JudgeScorer(instantiate(cfg.feedback.source))
    else:
        scorer = reward_model_scorer(cfg, policy, reward_path, tokenizer)
    if shared is not None and algo.value_init == "reward":
        add_adapter_from(policy, reward_path, "value", trainable=True)  # a copy of the RM's adapter; new zero head
    elif shared is not None:
        p = cfg.peft
        add_fresh_adapter(policy, "value", p.r, p.alpha, p.dropout, p.target_modules)
    value = value_model(reward_path if algo.value_init == "reward" else reference_path, hidden, m.dtype,
                        m.trust_remote_code, shared=shared)
    model = ActorCritic(policy, value, checkpoint_value=algo.value_checkpointing)
    gold_fn = None
    if cfg.data.world_metrics:
        from zoo.world.gold import gold_reward as gold_fn

    def online_source(loss_fn: Loss, prompts: list) -> Experience:
        return Experience(loss_fn, policy, value, reference, scorer, tokenizer, prompts, algo.rollout,
                          cfg.trainer.batch_size, cfg.trainer.grad_accum_steps, cfg.seed, cfg.data.max_length, gold_fn)

    info = {**feedback, "reward_model": reward_path or f"judge rating ({cfg.feedback.name})", "value_init": algo.value_init,
            "stage_seconds": stage_seconds, "reward_model_shares_base": shared is not None and adapter_rm}
    stage_info = Path(reward_path).parent / "stage.json" if reward_path else None
    if stage_info is not None and stage_info.exists():
        info["reward_model_stage"] = {k: v for k, v in json.loads(stage_info.read_text()).items() if k.startswith("rm_")}
    return Built(model, policy, reference, online_source, info)


def reward_model_scorer(cfg: DictConfig, policy, reward_path: str, tokenizer) -> RewardScorer:
    """The frozen reward model at ``reward_path`` as a rollout scorer: an adapter (+ head) on the policy's
    own base when it is a LoRA reward model, else a separate model."""
    m = cfg.model
    if is_adapter_dir(reward_path):
        reward = adapter_reward_model(policy, reward_path, policy.config.hidden_size)
        score_fn = reward.scores
    else:
        reward = load_reward_model(reward_path, tokenizer.pad_token_id, m.dtype, m.trust_remote_code)
        reward.eval().requires_grad_(False)
        score_fn = lambda ids, mask: reward(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    scorer_tokenizer = load_tokenizer(reward_path, m.trust_remote_code)
    return RewardScorer(score_fn, reward, scorer_tokenizer, cfg.data.max_length, cfg.algo.rollout.forward_batch_size)


def shared_stages(cfg: DictConfig) -> dict[str, Path]:
    """Build (or find in the cache) the stages every world run of ``cfg``'s feedback starts from, without
    training anything else: the SFT reference, its labelled pairs and the reward model trained on them.
    ``zoo compare`` calls this once per feedback source before it launches the runs, so parallel runs
    find their stages ready instead of queueing on the cache's locks. Returns the paths built."""
    if not (cfg.data.sft_stage and cfg.data.preference_stage and cfg.data.prompts_path):
        raise DataError(f"data={cfg.data.name} has no SFT and preference stages to share (data=world has)")
    reference = stages.sft_stage(cfg, Path(cfg.data.demonstrations_path))
    pairs = stages.preference_stage(cfg, reference, Path(cfg.data.prompts_path))
    return {"reference": reference, "pairs": pairs, "reward_model": stages.reward_stage(cfg, reference, pairs)}


def evaluate_policy_run(cfg: DictConfig, policy, reference, tokenizer, prompts: list) -> tuple[dict, list]:
    """Sample the policy and its reference on held-out prompts; world runs also get gold reward and fluency."""
    reward_fn = fluency_fn = judge = None
    if cfg.data.world_metrics:
        from zoo.world.gold import gold_reward
        from zoo.world.grammar import is_grammatical
        from zoo.world.judge_train import world_judge

        reward_fn, fluency_fn = gold_reward, (lambda texts: [is_grammatical(t) for t in texts])
        judge = world_judge(cache_dir=str(Path(cfg.stages.cache_dir) / "judge"))  # every world run: judge win rate
    elif cfg.eval.judge_with_feedback and hasattr(get_object(cfg.feedback.source._target_), "judge"):
        judge = instantiate(cfg.feedback.source)  # an LM judge as feedback also measures the win rate
    return evaluate(policy, reference, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.temperature,
                    cfg.eval.batch_size, seed=10_000 + cfg.seed, reward_fn=reward_fn, fluency_fn=fluency_fn,
                    judge=judge)


def evaluate_reward_run(cfg: DictConfig, model, reference, tokenizer, pairs: list) -> tuple[dict, list]:
    """Held-out pairwise accuracy (vs labels and gold) and rank correlation with gold of a reward model."""
    return evaluate_reward_model(model, tokenizer, pairs, cfg.data.max_length, cfg.eval.batch_size)


# Keyed by the loss's ``model_output`` declaration: how to build the trained model, whether evaluation
# uses held-out training rows, and how to evaluate it.
BUILDERS = {"logps": build_policy, "scores": build_reward_model, "policy_values": build_actor_critic}
EVAL_ON_ROWS = {"logps": False, "scores": True, "policy_values": False}
EVALUATORS = {"logps": evaluate_policy_run, "scores": evaluate_reward_run, "policy_values": evaluate_policy_run}


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run ``cfg`` in ``run_dir``; returns the metrics written to metrics.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    metrics: dict = {"algo": cfg.algo.name, "feedback": cfg.feedback.name, "model": cfg.model.name,
                     "data": cfg.data.name, "seed": cfg.seed, "tag": cfg.tag, "status": "running"}
    try:
        metrics.update(_train(cfg, run_dir))
        metrics["status"] = "finished"
        return metrics
    except BaseException as err:
        metrics.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def data_kind_of(cfg: DictConfig, loss_fn: Loss) -> str:
    """What the run reads from disk: the loss's batch kind, or prompts when its pairs come online."""
    if not cfg.algo.online_feedback:
        return loss_fn.batch_kind
    if loss_fn.batch_kind != "pairs":
        raise ValueError(f"algo.online_feedback=true samples and labels pairs each step, so it needs a paired loss "
                         f"(DPO, IPO); {type(loss_fn).__name__} consumes {loss_fn.batch_kind}")
    return "prompts"


def feedback_info(source: str) -> dict:
    """What the label stage measured about the feedback a run learned from (agreement with gold, position
    bias), when the run's data came from it."""
    stage_file = Path(source).parent / "stage.json"
    if not stage_file.exists():
        return {}
    stage = json.loads(stage_file.read_text())
    keys = ("agreement_with_gold", "label_noise_rate", "position_bias", "mean_confidence")
    return {"feedback_" + k: stage[k] for k in keys if k in stage} if stage.get("stage") == "labels" else {}


def _train(cfg: DictConfig, run_dir: Path) -> dict:
    rss_reset = reset_peak_memory()  # this run's peak, not the process's (multirun workers are reused)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    loss_fn = instantiate(cfg.algo.loss)
    started = time.perf_counter()

    # --- stages: the reference policy and, for paired losses on the world, the preference data ---
    demos = cfg.data.demonstrations_path
    if cfg.model.reference_path and cfg.data.sft_stage:
        raise ValueError(f"model.reference_path={cfg.model.reference_path} and data={cfg.data.name}'s SFT stage both "
                         f"give the reference; set one")
    reference_path = str(stages.sft_stage(cfg, Path(demos))) if cfg.data.sft_stage else \
        cfg.model.reference_path or cfg.model.name_or_path
    # a reference of its own (TRL's ref_model=) leaves the policy where model.name_or_path puts it
    starts_from_reference = cfg.algo.init == "reference" and not cfg.model.reference_path
    init_path = reference_path if starts_from_reference else cfg.model.name_or_path
    kind = loss_fn.model_output
    data_kind = data_kind_of(cfg, loss_fn)
    rows, eval_items, source, skipped, eval_source = resolve_data(cfg, data_kind, reference_path, EVAL_ON_ROWS[kind])
    stage_seconds = time.perf_counter() - started

    # --- models and tokenized data ---
    memory_before_models = current_memory_mb()  # so a benchmark can subtract the interpreter and libraries
    tokenizer = load_tokenizer(reference_path, cfg.model.trust_remote_code)
    built = BUILDERS[kind](cfg, init_path, reference_path, tokenizer)
    policy, reference = built.policy, built.reference
    stage_seconds += built.info.pop("stage_seconds", 0.0)  # stages a builder needed (PPO's reward model)
    tokens, too_long = tokenize_rows(rows, data_kind, tokenizer, source, cfg.data.max_length, cfg.data.skip_bad_rows,
                                     loss_fn.prepend_bos)
    warnings = loss_fn.data_warnings(tokens)
    for warning in warnings:
        print(f"[zoo] warning: {warning}")
    if built.online_source is not None:  # the loss learns from samples of the model being trained
        batches = built.online_source(loss_fn, [rows[t["row"]]["prompt"] for t in tokens])
    else:
        collator = COLLATORS[loss_fn.batch_kind](tokenizer.pad_token_id, cfg.data.max_length)
        batches = DatasetBatches(tokens, collator, cfg.trainer.batch_size, seed=cfg.seed)

    # --- train ---
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # on a GPU the peak is training's alone, as before
    result = fit(built.model, loss_fn, batches, cfg.trainer, run_dir, seed=cfg.seed,
                 reference=reference if loss_fn.needs_reference else None, desc=f"train {cfg.algo.name}")
    peak, peak_source = peak_memory_mb(rss_reset)
    save_kwargs = {"selected_adapters": ["default"]} if hasattr(policy, "peft_config") and len(policy.peft_config) > 1 \
        else {}  # PPO under LoRA: the policy's adapter only (value / reward adapters live on the same model)
    policy.save_pretrained(run_dir / "model", safe_serialization=True, **save_kwargs)
    tokenizer.save_pretrained(run_dir / "model")
    out = {
        "train_seconds": result.train_seconds, "stage_seconds": stage_seconds, "steps": result.steps,
        "samples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        "peak_memory_mb": peak, "peak_memory_source": peak_source, "memory_before_models_mb": memory_before_models,
        "train_rows": len(tokens), "skipped_rows": skipped + too_long, "data_source": source,
        "eval_source": eval_source,
        "reference": reference_path, "policy_init": init_path, "final_log": result.last_log, "warnings": warnings,
        **feedback_info(source), **built.info,
    }

    # --- evaluate on held-out data (prompts for a policy, pairs for a reward model) ---
    if cfg.eval.num_prompts > 0 and eval_items:
        policy.eval()
        eval_metrics, samples = EVALUATORS[kind](cfg, policy, reference, tokenizer, eval_items)
        out.update(eval_metrics)
        with open(run_dir / "samples.jsonl", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in samples)
    return out
