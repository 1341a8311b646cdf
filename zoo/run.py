"""One training run, end to end: compose -> stages -> data -> models -> fit -> evaluate -> run dir.

The run dir (Hydra's output dir) receives ``config.yaml`` (resolved, paths portable), ``log.jsonl``,
``metrics.json``, ``samples.jsonl`` and ``model/`` (adapter only under LoRA). A run that fails still writes
``metrics.json`` with ``"status": "failed"`` and the error; checkpoints and finished stages stay.
"""

from __future__ import annotations

import json
import random
import time
import traceback
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig

from zoo.builders import MODEL_KINDS
from zoo.card import model_card
from zoo.config import portable, portable_config
from zoo.data.batches import DatasetBatches
from zoo.data.collate import BATCH_KINDS
from zoo.data.load import tokenize_rows
from zoo.data.split import resolve_data
from zoo.files import write_atomically
from zoo.losses.base import Loss
from zoo.memory import current_memory_mb, peak_memory_mb, reset_peak_memory
from zoo.models import model_tokenizer
from zoo.refcache import ReferenceCache, reference_setting
from zoo.stages import prepare_in_processes
from zoo.trainer import Tracking, fit, is_main_process


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run ``cfg`` in ``run_dir``; returns the metrics written to metrics.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = finished_run(cfg, run_dir)
    if finished is not None:  # a rerun (of a sweep, of zoo compare) keeps what is done
        print(f"[zoo] {portable(run_dir)} holds this run, finished: kept")
        return finished
    main = is_main_process()  # of several processes (torchrun), only the first writes the run's files
    if main:
        write_atomically(run_dir / "config.yaml", portable_config(cfg))
    metrics: dict = {"algo": cfg.algo.name, "feedback": cfg.feedback.name, "model": cfg.model.name,
                     "data": cfg.data.name, "seed": cfg.seed, "tag": cfg.tag, "status": "running"}
    try:
        metrics.update(_train(cfg, run_dir, main))
        metrics["status"] = "finished"
        return metrics
    except BaseException as err:
        metrics.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        if main:
            write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2), kill_name="metrics")


class RunDirTaken(ValueError):
    """A run directory that holds a finished run of another config."""


def finished_run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The metrics of the finished run of ``cfg`` in ``run_dir``, or None when it holds none (nothing yet, a
    run that failed or was killed: those resume from their last checkpoint). A finished run of another config
    is refused: its results would be mistaken for this one's. Where the stage cache lives is not part of a
    run's identity."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") != "finished":
        return None

    def identity(config: dict) -> dict:
        config.get("stages", {}).pop("cache_dir", None)
        return config

    current = identity(yaml.safe_load(portable_config(cfg)))
    try:
        recorded = identity(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    except (OSError, yaml.YAMLError):
        recorded = None
    if recorded != current:
        changed = sorted(k for k in set(current) | set(recorded or {}) if (recorded or {}).get(k) != current.get(k))
        raise RunDirTaken(f"{portable(run_dir)} holds a finished run of another config (differing: "
                         f"{', '.join(changed) or 'config.yaml unreadable'}); give this run a directory of its own")
    return metrics


def tracking_of(cfg: DictConfig, run_dir: Path) -> Tracking:
    """The run as the trackers name it: its directory's name, grouped with its sweep (a ``zoo compare``'s
    sweeps, ``OUT/runs/sweepN``, by the comparison's directory), with the resolved config."""
    group = None
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            sweep = Path(hydra.sweep.dir)
            group = sweep.parent.parent.name if sweep.parent.name == "runs" else sweep.name
    except ValueError:  # not inside a Hydra run
        pass
    return Tracking(run_dir.name, group, yaml.safe_load(portable_config(cfg)))


def data_kind_of(cfg: DictConfig, loss_fn: Loss) -> str:
    """What the run reads from disk: the loss's batch kind, or prompts when its pairs come online."""
    if not cfg.algo.get("online_feedback", False):
        return loss_fn.batch_kind
    if loss_fn.batch_kind != "pairs":
        raise ValueError(f"algo.online_feedback=true samples and labels pairs each step, so it needs a paired loss "
                         f"(DPO, IPO); {type(loss_fn).__name__} consumes {loss_fn.batch_kind}")
    return "prompts"


def _train(cfg: DictConfig, run_dir: Path, main: bool) -> dict:
    rss_reset = reset_peak_memory()  # this run's peak, not the process's (multirun workers are reused)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    loss_fn = instantiate(cfg.algo.loss)
    kind, data_kind = MODEL_KINDS[loss_fn.model_output], data_kind_of(cfg, loss_fn)
    task = instantiate(cfg.data.metrics) if cfg.data.metrics is not None else None  # gold reward, fluency, judge

    # --- stages the algorithm declares, and its data ---
    stages = prepare_in_processes(cfg, cfg.algo.stages)  # several processes: built once per machine
    reference_path = str(stages.reference.path)
    # a reference of its own (TRL's ref_model=) leaves the policy where model.name_or_path puts it
    starts_from_reference = cfg.algo.init == "reference" and not cfg.model.reference_path
    init_path = reference_path if starts_from_reference else cfg.model.name_or_path
    started = time.perf_counter()
    data = resolve_data(cfg, data_kind, stages, kind.eval_on_rows)
    data_seconds = time.perf_counter() - started

    # --- models and batches ---
    torch.manual_seed(cfg.seed)  # new weights (LoRA, heads) start alike whether the stages were built now or cached
    memory_before_models = current_memory_mb()  # so a benchmark can subtract the interpreter and libraries
    tokenizer = model_tokenizer(cfg.model, reference_path)
    built = kind.build(cfg, init_path, stages, tokenizer, task)
    tokens, too_long = tokenize_rows(data.rows, data_kind, tokenizer, data.source, cfg.data.max_length,
                                     cfg.data.skip_bad_rows, loss_fn.prepend_bos)
    warnings = loss_fn.data_warnings(tokens)
    for warning in warnings:
        print(f"[zoo] warning: {warning}")
    if built.online_source is not None:  # the loss learns from samples of the model being trained
        batches = built.online_source(loss_fn, [data.rows[t["row"]]["prompt"] for t in tokens])
    else:
        collator = BATCH_KINDS[loss_fn.batch_kind].collator(tokenizer.pad_token_id, cfg.data.max_length)
        batches = DatasetBatches(tokens, collator, cfg.trainer.batch_size, seed=cfg.seed)

    # --- train and save ---
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # on a GPU the peak is training's alone
    reference_cache = None
    if loss_fn.needs_reference and built.online_source is None and cfg.trainer.get("reference_cache", True):
        reference_cache = ReferenceCache(Path(cfg.stages.cache_dir), {  # all the batch's log-probs depend on but it
            **reference_setting(cfg, built.reference), "all_tokens": loss_fn.needs_all_token_logps,
            "mixed_precision": cfg.trainer.mixed_precision})
    tracking = tracking_of(cfg, run_dir) if cfg.trainer.report_to else None  # its config only when a tracker reads it
    result = fit(built.model, loss_fn, batches, cfg.trainer, run_dir, seed=cfg.seed,
                 reference=built.reference if loss_fn.needs_reference else None, desc=f"train {cfg.algo.name}",
                 reference_cache=reference_cache, tracking=tracking)
    peak, peak_source = peak_memory_mb(rss_reset)
    policy = built.policy
    save_kwargs = {"selected_adapters": ["default"]} if hasattr(policy, "peft_config") and len(policy.peft_config) > 1 \
        else {}  # PPO under LoRA: the policy's adapter only (value / reward adapters live on the same model)
    if main:  # the process that writes the run's files
        policy.save_pretrained(run_dir / "model", safe_serialization=True, **save_kwargs)
        tokenizer.save_pretrained(run_dir / "model")
    cache = cfg.stages.cache_dir
    out = {
        "train_seconds": result.train_seconds, "stage_seconds": stages.seconds + data_seconds, "steps": result.steps,
        "samples_per_second": result.examples_seen / max(result.train_seconds, 1e-9),
        "peak_memory_mb": peak, "peak_memory_source": peak_source, "memory_before_models_mb": memory_before_models,
        "train_rows": len(tokens), "skipped_rows": data.skipped + too_long,
        "data_source": portable(data.source, cache), "eval_source": data.eval_source,
        "reference": portable(reference_path, cache), "policy_init": portable(init_path, cache),
        "final_log": result.last_log, "warnings": warnings, "nonfinite_skipped_steps": result.nonfinite_skipped,
        **({"reference_cache": reference_cache.stats()} if reference_cache is not None else {}),
        **(stages.labels.feedback_metrics() if stages.labels else {}), **built.info,
    }

    # --- evaluate on held-out data (prompts for a policy, pairs for a reward model): once, by the main process ---
    if main and cfg.eval.num_prompts > 0 and data.eval_items:
        policy.eval()
        eval_metrics, samples = kind.evaluate(cfg, policy, built.reference, tokenizer, data.eval_items, task)
        out.update(eval_metrics)
        write_atomically(run_dir / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in samples))
    if main:  # the model card, with the held-out metrics
        write_atomically(run_dir / "model" / "README.md", model_card(cfg, out, adapter=hasattr(policy, "peft_config")))
    return out
