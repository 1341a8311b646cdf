"""Pipeline stages a comparison shares, cached on disk by the content that produced them.

An algorithm's config declares the stages it consumes (``algo.stages``: ``reference``, ``samples``,
``labels``, ``reward_model``); :func:`prepare` builds those and what they depend on, once, and returns
typed results (:class:`Stage`: path, stage.json info, seconds spent). ``zoo train``, ``zoo compare``,
``zoo label`` and best-of-N all start from it, so none builds a stage it does not read, and all compose
the same key for the same inputs. Where the data config has no stage for an input (``data=local``), the
input is the config's own path (``model.name_or_path``, ``data.path``) and nothing is built.

- ``sft_stage``: SFT of the base model on the demonstrations -> the reference policy.
- ``samples_stage``: two samples per prompt from the reference -> unlabelled pairs, shared by every
  feedback source;
- ``label_stage``: those pairs (or any file of pairs, ``zoo label``) labelled by the feedback source
  (raters or a judge) -> a paired preference dataset (``prompt``, ``chosen``, ``rejected``,
  ``confidence`` + gold rewards with task metrics) in JSONL;
- ``reward_stage``: a Bradley-Terry reward model on those pairs (10% held out for its accuracy),
  initialised from the reference -> the frozen RM that PPO and RLAIF score rollouts with.

A stage's cache key is a hash of everything it depends on: the contents of its input files and model
directories (never their paths, so a moved checkout or cache keeps its stages) and its config section.
A sweep of many runs builds each stage once, and changing anything upstream rebuilds it. Stages are
written to a temp directory and renamed into place under a file lock, so parallel runs
(``hydra/launcher=joblib``) never see half a stage or build it twice.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zoo.data.collate import DemonstrationCollator, PairCollator
from zoo.data.load import load_rows, read_rows, tokenize_rows
from zoo.data.prompts import prompts_file
from zoo.data.schema import DataError, validate_rows
from zoo.evaluate import evaluate_reward_model
from zoo.files import files_digest, kill_point, locked
from zoo.losses.reward import BradleyTerryLoss
from zoo.losses.sft import SFTLoss
from zoo.models import apply_lora, load_causal_lm, load_reward_model, model_tokenizer, tokenizer_settings
from zoo.rollout import SAMPLING_VERSION, sample
from zoo.trainer import DatasetBatches, fit, process_state

STAGE_NAMES = ("reference", "samples", "labels", "reward_model")


@dataclass(frozen=True)
class Stage:
    """One prepared input of a run: ``path`` (a model directory or a JSONL file), ``info`` (what the stage
    recorded in its stage.json; empty when the config gave the path and nothing was built) and ``seconds``
    (spent here: building it, or finding it in the cache)."""

    path: Path
    info: dict
    seconds: float

    def feedback_metrics(self) -> dict:
        """What a label stage measured about the feedback a run learned from (agreement with gold, label
        noise, position bias, confidence), as ``feedback_*`` metrics; empty for any other input."""
        if self.info.get("stage") != "labels":
            return {}
        keys = ("agreement_with_gold", "label_noise_rate", "position_bias", "mean_confidence")
        return {"feedback_" + k: self.info[k] for k in keys if k in self.info}


@dataclass(frozen=True)
class Prepared:
    """The stages :func:`prepare` was asked for (and their dependencies); None where not asked."""

    reference: Stage | None = None
    samples: Stage | None = None
    labels: Stage | None = None
    reward_model: Stage | None = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in (self.reference, self.samples, self.labels, self.reward_model) if s)


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (or of every file under a directory, with their names)."""
    path = Path(path)
    return files_digest(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])


def identity(name_or_path: str | Path) -> str:
    """What a model or file is, for a cache key: the digest of its contents when it is on disk, else
    its hub id (a location on this machine is never part of a key)."""
    return file_digest(name_or_path) if Path(name_or_path).exists() else str(name_or_path)


def cache_key(*parts) -> str:
    """A short stable hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def config_identity(node) -> dict | None:
    """A config section as a key part: resolved, without the ``cache_dir`` settings (where results are
    cached does not change them), with the digest of any local ``model`` directory it names (a judge
    retrained in place is new feedback)."""
    if node is None:
        return None
    container = OmegaConf.to_container(node, resolve=True)

    def strip(value):
        if isinstance(value, dict):
            out = {k: strip(v) for k, v in value.items() if not k.endswith("cache_dir")}
            if isinstance(out.get("model"), str) and Path(out["model"]).is_dir():
                out["model"] = file_digest(out["model"])
            return out
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip(container)


def cached_stage(cache_dir: str, name: str, key: str, build, output: str) -> Stage:
    """The stage ``cache_dir/name-key``, calling ``build(tmp_dir) -> info`` first if it does not exist yet;
    its ``output`` (a file or directory in it) is the stage's path, its ``stage.json`` its info."""
    started = time.perf_counter()
    final = Path(cache_dir) / f"{name}-{key}"
    with locked(final):
        if not (final / "stage.json").exists():
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            build_started = time.perf_counter()
            info = build(tmp) or {}
            info.update(stage=name, key=key, build_seconds=round(time.perf_counter() - build_started, 2))
            kill_point("stage")  # built, not yet in place
            (tmp / "stage.json").write_text(json.dumps(info, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            print(f"[zoo] built stage {name} in {info['build_seconds']} s -> {final}")
        info = json.loads((final / "stage.json").read_text())
    return Stage(final / output, info, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------------ prepare


def prepare(cfg: DictConfig, needs: Iterable[str], unlabelled: Path | None = None) -> Prepared:
    """The stages named in ``needs`` (see ``STAGE_NAMES``) and those they depend on, each built once (or
    found in the cache): reference <- samples <- labels <- reward_model.

    - ``reference``: the SFT stage when ``data.sft_stage``, else ``model.reference_path`` or
      ``model.name_or_path`` as given.
    - ``samples``: two reference samples per prompt of ``data.prompts_path``.
    - ``labels``: ``unlabelled`` (any file of pairs, ``zoo label --input``) or the samples, labelled by
      ``cfg.feedback``. A data config without a preference stage has none (a run reads its pairs from
      ``data.path``), unless ``samples`` is asked for too.
    - ``reward_model``: ``algo.reward_model`` as given, else the reward stage on the labels.
    """
    needs = set(needs)
    unknown = needs - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}: algo.stages takes {', '.join(STAGE_NAMES)}")
    data, given_rm = cfg.data, cfg.algo.get("reward_model")
    if "reward_model" in needs and not given_rm:
        needs |= {"reference", "labels"}
    if "labels" in needs and unlabelled is None and "samples" not in needs:
        needs |= {"samples"} if data.preference_stage else set()
    if "samples" in needs:
        needs.add("reference")
    reference = _reference(cfg) if "reference" in needs else None
    samples = labels = reward_model = None
    if "samples" in needs:
        if not data.prompts_path:
            raise DataError(f"data={data.name} has no prompts to sample pairs for (data.prompts_path)")
        samples = samples_stage(cfg, reference.path, prompts_file(cfg))  # a hub dataset's: the prompts stage
    if "labels" in needs and (unlabelled is not None or samples is not None):
        labels = label_stage(cfg, unlabelled if unlabelled is not None else samples.path)
    if "reward_model" in needs:
        if given_rm:
            reward_model = Stage(Path(given_rm), {}, 0.0)  # given, not built
        elif labels is None:
            raise DataError(f"algo={cfg.algo.name} needs a reward model and data={data.name} names none "
                            f"(data.reward_model) and labels no pairs in a stage: set algo.reward_model=ID_OR_DIR (a hub "
                            f"reward model, or the model/ dir of an algo=reward run on this data's pairs), or use "
                            f"data with a preference stage (data=world, data=reviews, data=hub/imdb)")
        else:
            reward_model = reward_stage(cfg, reference.path, labels.path)
    return Prepared(reference, samples, labels, reward_model)


# the environment that makes a process one of several (torchrun's, and accelerate launch's choice of engine)
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_FSDP",
                "ACCELERATE_USE_DEEPSPEED")
STAGE_WAIT = timedelta(hours=48)  # how long the other processes wait for a machine's stages to be built


def prepare_in_processes(cfg: DictConfig, needs: Iterable[str]) -> Prepared:
    """:func:`prepare` in each process of a run of several (torchrun, accelerate launch); ``prepare`` itself
    in a run of one.

    A stage's builder trains with ``fit`` (the SFT reference, the reward model); inside one of several
    processes that ``fit`` would join the run's process group and wait forever for collectives the other
    processes never call. So the first process on each machine builds the missing stages in a child process
    of its own (a plain single-process run: the launcher's environment removed), the others wait for it,
    and then every process finds the stages in the cache. The wait is a barrier on a gloo group of its own,
    with a timeout of days rather than the run's (30 minutes by default): building a stage can take longer.
    A failed build fails every process, with the builder's error.
    """
    state = process_state()
    if state.num_processes == 1:
        return prepare(cfg, needs)
    error = _prepare_in_child(cfg, list(needs)) if state.is_local_main_process else None
    waiting = torch.distributed.new_group(backend="gloo", timeout=STAGE_WAIT)
    errors = [None] * state.num_processes
    torch.distributed.all_gather_object(errors, error, group=waiting)  # also the barrier
    failed = [e for e in errors if e]
    if failed:
        raise RuntimeError(f"building the run's stages failed: {failed[0]}")
    return prepare(cfg, needs)


def _prepare_in_child(cfg: DictConfig, needs: list[str]) -> str | None:
    """``prepare(cfg, needs)`` in a spawned process without the launcher's environment; its error, or None."""
    context = multiprocessing.get_context("spawn")  # not fork: a forked torch thread pool can deadlock
    errors = context.Queue()
    child = context.Process(target=_prepare_child, args=(OmegaConf.to_container(cfg, resolve=True), needs, errors))
    saved = {name: os.environ.pop(name) for name in LAUNCHER_ENV if name in os.environ}
    try:
        child.start()  # a spawned child takes the environment as it is now
    finally:
        os.environ.update(saved)
    child.join()
    if child.exitcode == 0:
        return None
    try:
        return errors.get(timeout=5)
    except queue.Empty:  # killed before it could say why
        return f"the stage builder exited with code {child.exitcode}"


def _prepare_child(cfg: dict, needs: list[str], errors) -> None:
    try:
        prepare(OmegaConf.create(cfg), needs)
    except BaseException as err:  # reported to the run's processes, which fail with it
        errors.put(f"{type(err).__name__}: {err}")
        raise


def _reference(cfg: DictConfig) -> Stage:
    """The reference policy's weights: the SFT stage, or the model config's path (not built)."""
    m = cfg.model
    if not cfg.data.sft_stage:
        return Stage(Path(m.reference_path or m.name_or_path), {}, 0.0)
    if m.reference_path:
        raise ValueError(f"model.reference_path={m.reference_path} and data={cfg.data.name}'s SFT stage both give the "
                         f"reference; set one")
    return sft_stage(cfg, Path(cfg.data.demonstrations_path))


# ------------------------------------------------------------------------------------------------- stages


def _model_part(cfg: DictConfig) -> list:
    """What of the model config, besides its weights, changes what a stage builds (tokenizer settings, a
    dtype other than float32, an attention implementation) as a cache-key part; empty when it sets none of
    them, so the keys of stages built before these settings existed still hold."""
    m = cfg.model
    settings = tokenizer_settings(m)
    if m.dtype != "float32":
        settings["dtype"] = m.dtype
    if m.get("attn_implementation"):
        settings["attn_implementation"] = m.get("attn_implementation")
    return [settings] if settings else []


def _fit_and_save(cfg: DictConfig, stage: DictConfig, model, tokenizer, loss_fn, tokens: list[dict], collator,
                  out: Path, desc: str) -> dict:
    """Train a stage's model with the stage's step count, lr and batch size; save it to ``out/model``."""
    trainer_cfg = OmegaConf.merge(cfg.trainer, {
        "max_steps": stage.max_steps, "learning_rate": stage.learning_rate, "batch_size": stage.batch_size,
        "grad_accum_steps": 1, "save_every": 0, "warmup_steps": 20,
        "report_to": []})  # a stage serves many runs: the trackers follow the runs, not the stage's own training
    batches = DatasetBatches(tokens, collator, stage.batch_size, seed=0)
    result = fit(model, loss_fn, batches, trainer_cfg, out / "train", seed=0, desc=desc)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    return {"steps": result.steps, "train_seconds": round(result.train_seconds, 2), "final": result.last_log}


def sft_key(cfg: DictConfig, demonstrations: Path) -> str:
    return cache_key("sft", identity(cfg.model.name_or_path), file_digest(demonstrations),
                     OmegaConf.to_container(cfg.stages.sft), cfg.data.max_length, *_model_part(cfg))


def sft_stage(cfg: DictConfig, demonstrations: Path) -> Stage:
    """The cached SFT model (the reference policy) trained on ``demonstrations``."""
    stage = cfg.stages.sft

    def build(out: Path) -> dict:
        m = cfg.model
        tokenizer = model_tokenizer(m)
        model = load_causal_lm(m.name_or_path, m.dtype, m.trust_remote_code,
                               attn_implementation=m.get("attn_implementation"))
        rows, _ = load_rows("demonstrations", str(demonstrations), read_rows(demonstrations))
        if stage.num_rows:
            rows = rows[: stage.num_rows]
        tokens, _ = tokenize_rows(rows, "demonstrations", tokenizer, str(demonstrations), cfg.data.max_length)
        collator = DemonstrationCollator(tokenizer.pad_token_id, cfg.data.max_length)
        return _fit_and_save(cfg, stage, model, tokenizer, SFTLoss(), tokens, collator, out, "stage: sft")

    return cached_stage(cfg.stages.cache_dir, "sft", sft_key(cfg, demonstrations), build, "model")


def samples_stage(cfg: DictConfig, reference_path: Path, prompts_file: Path) -> Stage:
    """The cached unlabelled pairs: two samples per prompt from the reference (``prompt``, ``first``,
    ``second``). Every feedback source labels the same pairs, so raters and judge are compared on equal terms."""
    stage = cfg.stages.preferences
    key = cache_key("samples", identity(reference_path), file_digest(prompts_file), OmegaConf.to_container(stage),
                    *_model_part(cfg), {"sampling": SAMPLING_VERSION})

    def build(out: Path) -> dict:
        m = cfg.model
        tokenizer = model_tokenizer(m, reference_path)
        model = load_causal_lm(str(reference_path), m.dtype, m.trust_remote_code,
                               attn_implementation=m.get("attn_implementation"))
        prompts = [r["prompt"] for r in read_rows(prompts_file)][: stage.num_prompts]
        first = sample(model, tokenizer, prompts, stage.max_new_tokens, stage.temperature, 128, seed=1,
                       desc="stage: preference samples (a)")
        second = sample(model, tokenizer, prompts, stage.max_new_tokens, stage.temperature, 128, seed=2,
                        desc="stage: preference samples (b)")
        _write_jsonl(out / "pairs.jsonl", [{"prompt": p, "first": a, "second": b}
                                           for p, a, b in zip(prompts, first.texts, second.texts)])
        return {"pairs": len(prompts)}

    return cached_stage(cfg.stages.cache_dir, "samples", key, build, "pairs.jsonl")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def read_unlabelled(path: Path) -> list[dict]:
    """Pairs to label: rows with ``prompt`` and two responses, as ``first``/``second`` (the samples stage)
    or ``chosen``/``rejected`` (an existing preference dataset, relabelled; its labels are ignored)."""
    rows = read_rows(path)
    if rows and isinstance(rows[0], dict) and "first" in rows[0]:
        checked, _ = validate_rows([{"prompt": r.get("prompt"), "chosen": r.get("first"), "rejected": r.get("second")}
                                    if isinstance(r, dict) else r for r in rows], "pairs", str(path))
    else:
        checked, _ = load_rows("pairs", str(path), rows)
    return [{"prompt": r["prompt"], "first": r["chosen"], "second": r["rejected"]} for r in checked]


def label_stage(cfg: DictConfig, pairs_path: Path) -> Stage:
    """The cached paired preference dataset: ``pairs_path`` labelled by ``cfg.feedback``.

    Rows: ``prompt``, ``chosen``, ``rejected``, ``confidence`` (the feedback source's P(chosen > rejected))
    and, on the world, ``chosen_gold`` / ``rejected_gold``. Pairs with two identical responses carry no
    preference and are dropped, and so are pairs labelled with a confidence below
    ``feedback.min_confidence`` (the source abstains where it is unsure, as AI labelers are often run).
    With task metrics (``data.metrics``: the world's gold reward), rows carry ``chosen_gold`` /
    ``rejected_gold`` and ``stage.json`` records how often the labels agree with gold (the label-noise rate
    is its complement); for a judge, its position bias.
    """
    key = cache_key("labels", file_digest(pairs_path), config_identity(cfg.feedback), config_identity(cfg.data.metrics))

    min_confidence = cfg.feedback.min_confidence
    if not 0.0 <= min_confidence < 1.0:
        raise ValueError(f"feedback.min_confidence must be in [0, 1), got {min_confidence}")

    def build(out: Path) -> dict:
        pairs = read_unlabelled(pairs_path)
        labeler = instantiate(cfg.feedback.source)
        task = instantiate(cfg.data.metrics) if cfg.data.metrics is not None else None
        prompts, first, second = [r["prompt"] for r in pairs], [r["first"] for r in pairs], [r["second"] for r in pairs]
        labels = labeler.label(prompts, first, second)
        gold_first, gold_second = (task.gold_reward(first), task.gold_reward(second)) if task else (None, None)
        rows, disagree, decided, identical, abstained = [], 0, 0, 0, 0
        for i, pair in enumerate(pairs):
            if pair["first"] == pair["second"]:
                identical += 1  # no preference to learn from two identical completions
                continue
            a, b = pair["first"], pair["second"]
            ra, rb = (gold_first[i], gold_second[i]) if task else (None, None)
            p = labels.probability[i]
            if not labels.first_wins[i]:
                a, b, ra, rb, p = b, a, rb, ra, 1.0 - p
            if p < min_confidence:
                abstained += 1
                continue
            row = {"prompt": pair["prompt"], "chosen": a, "rejected": b, "confidence": p}
            if task:
                row.update(chosen_gold=ra, rejected_gold=rb)
                if ra != rb:
                    decided += 1
                    disagree += ra < rb
            rows.append(row)
        _write_jsonl(out / "pairs.jsonl", rows)
        if not rows:
            raise ValueError(f"feedback {cfg.feedback.name} kept no pair of {pairs_path} (min_confidence "
                             f"{min_confidence}, {abstained} abstentions, {identical} identical pairs)")
        info = {"pairs": len(rows), "feedback": cfg.feedback.name, "identical_dropped": identical,
                "abstained": abstained, "min_confidence": min_confidence,
                "mean_confidence": sum(r["confidence"] for r in rows) / max(1, len(rows))}
        if labels.position_bias is not None:
            info["position_bias"] = labels.position_bias
        message = (f"[zoo] label stage ({cfg.feedback.name}): {len(rows)} pairs kept, {identical} identical and "
                   f"{abstained} below confidence {min_confidence} dropped")
        if task:
            noise = disagree / decided if decided else float("nan")
            info.update(label_noise_rate=noise, agreement_with_gold=1.0 - noise, gold_ties=len(rows) - decided)
            message += f", agreement with gold {1 - noise:.3f} ({decided - disagree}/{decided} decided pairs)"
        if labels.position_bias is not None:
            message += f", position bias {labels.position_bias:+.3f}"
        print(message)
        return info

    return cached_stage(cfg.stages.cache_dir, "labels", key, build, "pairs.jsonl")


def reward_stage(cfg: DictConfig, reference_path: Path, pairs_path: Path) -> Stage:
    """The cached Bradley-Terry reward model trained on ``pairs_path``, initialised from the reference.

    Under ``peft=lora`` it is a LoRA adapter + head on the reference (saved as an adapter), so PPO can
    hold it as one more adapter on its single frozen base instead of a second copy of the model.
    """
    stage = cfg.stages.reward
    lora = OmegaConf.to_container(cfg.peft, resolve=True) if cfg.peft.enabled else None
    # "seeded head": reward models built before the head's initialisation was seeded depended on what the
    # building process had run before (the same key, different weights); they are not reused
    key = cache_key("reward", identity(reference_path), file_digest(pairs_path), OmegaConf.to_container(stage),
                    cfg.data.max_length, *([lora] if lora else []), "seeded head", *_model_part(cfg))

    def build(out: Path) -> dict:
        m = cfg.model
        tokenizer = model_tokenizer(m, reference_path)
        torch.manual_seed(0)  # the new scalar head (and LoRA) start from the stage's seed, not the process's state
        model = load_reward_model(str(reference_path), tokenizer.pad_token_id, m.dtype, m.trust_remote_code,
                                  attn_implementation=m.get("attn_implementation"))
        if lora:
            p = cfg.peft
            model = apply_lora(model, p.r, p.alpha, p.dropout, p.target_modules, task_type="SEQ_CLS")
        rows, _ = load_rows("pairs", str(pairs_path), read_rows(pairs_path))
        held = max(1, len(rows) // 10)  # the last 10% of pairs measure the RM, never train it
        train_rows, eval_rows = rows[:-held], rows[-held:]
        # a hub dataset's prompt can fill data.max_length (the run skips and counts such rows when asked; so does this)
        tokens, too_long = tokenize_rows(train_rows, "pairs", tokenizer, str(pairs_path), cfg.data.max_length,
                                         cfg.data.skip_bad_rows)
        collator = PairCollator(tokenizer.pad_token_id, cfg.data.max_length)
        info = _fit_and_save(cfg, stage, model, tokenizer, BradleyTerryLoss(center_coef=stage.center_coef), tokens,
                             collator, out, "stage: reward model")
        metrics, _ = evaluate_reward_model(model, tokenizer, eval_rows, cfg.data.max_length, 64, str(pairs_path))
        print(f"[zoo] reward stage: held-out accuracy vs labels {metrics['rm_accuracy_vs_labels']:.3f}"
              + (f", vs gold {metrics['rm_accuracy_vs_gold']:.3f}" if "rm_accuracy_vs_gold" in metrics else ""))
        return {**info, **metrics, "skipped_too_long": too_long}

    return cached_stage(cfg.stages.cache_dir, "lora-reward" if lora else "reward", key, build, "model")
