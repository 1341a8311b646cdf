"""Which rows a run trains on and which it is evaluated on.

The training rows come from the source the loss's batch kind reads (:func:`resolve_data`); they are never
shrunk silently: rows leave them only for a held-out evaluation split (``data.eval_fraction``, by prompt),
for KTO's imbalanced setting (``data.desirable_fraction``) or by ``data.max_rows``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from zoo.config import portable
from zoo.data.load import is_local_file, load_rows, prompt_key, read_eval_prompts, read_rows, read_source, split_by_prompt
from zoo.data.prompts import prompts_file
from zoo.data.schema import DataError

if TYPE_CHECKING:
    from zoo.stages import Prepared


@dataclass
class RunData:
    """A run's data: training ``rows``, evaluation ``eval_items`` (prompts, or held-out rows for a reward
    model), the file they came from (``source``), rows skipped as invalid, and where the eval items came from."""

    rows: list[dict]
    eval_items: list
    source: str
    skipped: int
    eval_source: str


def resolve_data(cfg: DictConfig, kind: str, stages: Prepared, eval_on_rows: bool = False) -> RunData:
    """The training rows and evaluation items of a run whose loss consumes ``kind``: prompts from
    ``data.prompts_path``, demonstrations from ``data.demonstrations_path``, pairs (and, without
    demonstrations, the chosen responses as demonstrations) from the label stage when ``stages`` has one,
    else ``data.path``.

    Eval items are prompts (policies are evaluated by sampling), or, with ``eval_on_rows``, held-out rows
    (reward models are evaluated on pairs they never saw). The training data is never shrunk silently:
    rows leave it only through ``data.eval_fraction`` (a seeded split by prompt, see :func:`eval_split`)."""
    data = cfg.data
    if kind in ("pairs", "unpaired") and data.preference_stage and stages.labels is None:
        raise ValueError(f"algo={cfg.algo.name} trains on {kind} and data={data.name} labels them in a stage, but "
                         f"algo.stages ({', '.join(cfg.algo.stages)}) does not declare labels")
    if kind == "prompts" and data.prompts_path:
        source = str(prompts_file(cfg))  # a hub dataset's prompts: the cached prompts stage
    elif kind == "demonstrations" and data.demonstrations_path:
        source = data.demonstrations_path
    elif kind in ("pairs", "unpaired", "demonstrations") and stages.labels is not None:
        source = str(stages.labels.path)  # demonstrations: SFT on the chosen responses
    elif data.path:
        source = data.path
    elif kind == "demonstrations" and data.preference_stage:
        raise DataError(f"data={data.name} has no demonstrations; to fine-tune on the chosen responses of its labelled "
                        f"pairs, add the label stage: algo.stages=[reference,labels]")
    else:
        raise DataError(f"data={data.name} gives no {kind} data: set data.path=FILE")
    rows, unconverted = read_source(data, source, convert=source == data.path)  # stages write the standard schema
    rows, skipped = load_rows(kind, source, rows, data.skip_bad_rows)
    skipped += unconverted
    rows, eval_items, eval_source = eval_split(cfg, rows, source, eval_on_rows)
    if kind == "unpaired" and data.desirable_fraction < 1.0:
        rows = keep_desirable(rows, data.desirable_fraction, cfg.seed)
    if data.max_rows:
        rows = rows[: data.max_rows]
    return RunData(rows, eval_items[: cfg.eval.num_prompts], source, skipped, eval_source)


def eval_split(cfg: DictConfig, rows: list[dict], source: str, eval_on_rows: bool) -> tuple[list[dict], list, str]:
    """(training rows, eval items, a description of where they came from).

    - ``data.eval_path``: the prompts of that file (a reward model's run needs pairs there); every row trains.
    - ``data.eval_split``: that split of the hub dataset: its distinct prompts (from ``data.prompts_path``, or
      the training source), or its pairs for a reward model (unless ``eval_fraction`` is set, or the dataset
      gives prompts only); every row of the training split trains.
    - ``data.eval_fraction``: a seeded split by prompt (``data.eval_split_seed``): the held-out prompts'
      rows leave training, and never half a pair or one of a prompt's labelled rows. A reward model's
      run uses it before ``eval_path`` (whose prompts it cannot score), a policy's run only without one.
    - neither: every row trains and the evaluation is skipped, which the run says.
    """
    data = cfg.data
    if data.eval_path and not (eval_on_rows and data.eval_fraction):
        if eval_on_rows:
            pairs, _ = load_rows("pairs", data.eval_path, read_rows(data.eval_path))
            return rows, pairs, f"data.eval_path={portable(data.eval_path)} ({len(pairs)} pairs)"
        prompts = read_eval_prompts(data.eval_path)
        return rows, prompts, f"data.eval_path={portable(data.eval_path)} ({len(prompts)} prompts)"
    # a reward model's run is evaluated on the eval split's pairs, which a prompts-only dataset (data=hub/imdb)
    # has not: its labelled pairs are split by eval_fraction instead
    if data.get("eval_split") and not (eval_on_rows and (data.eval_fraction or not data.path)):
        return rows, *_eval_split_items(cfg, source, eval_on_rows)
    if data.eval_fraction:
        train, held = split_by_prompt(rows, data.eval_fraction, data.eval_split_seed)
        items = held if eval_on_rows else list({prompt_key(r["prompt"]): r["prompt"] for r in held}.values())
        description = (f"data.eval_fraction={data.eval_fraction} (seed {data.eval_split_seed}): {len(held)} of "
                       f"{len(rows)} rows of {portable(source, cfg.stages.cache_dir)}, {len(items)} {'rows' if eval_on_rows else 'prompts'}")
        print(f"[zoo] evaluation data: {description} held out of training")
        return train, items, description
    if cfg.eval.num_prompts > 0:
        print(f"[zoo] no evaluation data: training on all {len(rows)} rows of {source} and skipping the "
              f"evaluation; set data.eval_path=FILE (prompts or rows) or data.eval_fraction=F (a seeded split "
              f"by prompt) to evaluate")
    return rows, [], "none"


def _eval_split_items(cfg: DictConfig, source: str, eval_on_rows: bool) -> tuple[list, str]:
    """(eval items, description) from ``data.eval_split``: pairs of the training source's split for a reward
    model, else the split's distinct prompts (the prompts stage of ``data.prompts_path`` when there is one)."""
    data = cfg.data
    split = data.eval_split
    if eval_on_rows or not data.prompts_path:
        if is_local_file(data.path or source):
            raise DataError(f"data.eval_split={split} reads a split of a hub dataset, but {data.path or source} is a "
                            f"file: set data.eval_path=FILE or data.eval_fraction=F instead")
        rows, _ = read_source(data, data.path or source, split)
        kind = "pairs" if eval_on_rows else "prompts"
        items, _ = load_rows(kind, f"{data.path or source} ({split})", rows, data.skip_bad_rows)
        if not eval_on_rows:
            items = list({prompt_key(r["prompt"]): r["prompt"] for r in items}.values())
    else:
        items = [r["prompt"] for r in read_rows(prompts_file(cfg, split))]
    what = "pairs" if eval_on_rows else "prompts"
    return items, f"data.eval_split={split} ({len(items)} {what})"


def keep_desirable(rows: list[dict], fraction: float, seed: int) -> list[dict]:
    """All undesirable rows and a seeded ``fraction`` of the desirable ones, in their original order
    (KTO's imbalanced-data setting, e.g. 1:10 from paired data with fraction 0.1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.desirable_fraction must be in (0, 1], got {fraction}")
    desirable = [i for i, r in enumerate(rows) if r["label"]]
    kept = set(random.Random(seed).sample(desirable, max(1, round(fraction * len(desirable))))) if desirable else set()
    return [r for i, r in enumerate(rows) if not r["label"] or i in kept]
