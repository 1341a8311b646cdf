"""Batch kinds: what each ``batch_kind`` a loss declares reads, how it is tokenized and collated
(:data:`BATCH_KINDS`, one entry per kind), and the collators: tokenized rows -> right-padded tensors.

Every batch kind produces the same three tensors, so the trainer computes log-probabilities one way:
``input_ids`` (N, T), ``attention_mask`` (N, T), ``completion_mask`` (N, T). Paired batches stack
the B chosen sequences on top of the B rejected ones (N = 2B) for one forward pass; unpaired (KTO)
batches stack the examples on top of their mismatched KL rows and add ``labels``. Over-long
sequences are truncated keeping the start (TRL's default ``truncation_mode="keep_start"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from zoo.data.tokenize import tokenize_completion, tokenize_pair, tokenize_prompt


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad a list of int lists to (N, T)."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int, max_length: int | None) -> dict:
    """Concatenate prompt + completion per row, truncate, pad, and mark the completion tokens."""
    ids = [p + c for p, c in zip(prompts, completions)]
    masks = [[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]
    if max_length is not None:
        ids, masks = [x[:max_length] for x in ids], [m[:max_length] for m in masks]
    return {
        "input_ids": _pad(ids, pad_id),
        "attention_mask": _pad([[1] * len(x) for x in ids], 0),
        "completion_mask": _pad(masks, 0),
    }


@dataclass
class DemonstrationCollator:
    """Rows with ``prompt_ids`` and ``completion_ids`` -> one sequence per row."""

    pad_token_id: int
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        return _sequences([r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows],
                          self.pad_token_id, self.max_length)


@dataclass
class PairCollator:
    """Rows with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` -> 2B sequences, chosen first."""

    pad_token_id: int
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        prompts = [r["prompt_ids"] for r in rows]
        completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
        return _sequences(prompts + prompts, completions, self.pad_token_id, self.max_length)


@dataclass
class UnpairedCollator:
    """Unpaired rows (KTO) -> 2N sequences plus ``labels`` (N,) bool: the N examples (x_i, y_i), then N
    mismatched rows (x_i, y_{i-1}), wrapping around, whose log-ratios estimate KTO's reference point.
    The shift by one matches TRL's KL dataset (completions shifted by one within a batch)."""

    pad_token_id: int
    max_length: int | None = None

    def __call__(self, rows: list[dict]) -> dict:
        if len(rows) < 2:
            raise ValueError("an unpaired (KTO) batch needs at least 2 rows: the KL rows pair each prompt with "
                             "another row's completion; raise trainer.batch_size")
        prompts = [r["prompt_ids"] for r in rows]
        completions = [r["completion_ids"] for r in rows]
        shifted = completions[-1:] + completions[:-1]  # y_{i-1} for x_i
        batch = _sequences(prompts + prompts, completions + shifted, self.pad_token_id, self.max_length)
        batch["labels"] = torch.tensor([bool(r["label"]) for r in rows])
        return batch


def _pair_ids(tokenizer, row: dict, prepend_bos: bool) -> dict:
    prompt_ids, chosen_ids, rejected_ids = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"],
                                                          prepend_bos)
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}


def _completion_ids(tokenizer, row: dict, prepend_bos: bool) -> dict:
    prompt_ids, completion_ids = tokenize_completion(tokenizer, row["prompt"], row["completion"], prepend_bos)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids}


def _labelled_ids(tokenizer, row: dict, prepend_bos: bool) -> dict:
    return {**_completion_ids(tokenizer, row, prepend_bos), "label": row["label"]}


def _prompt_ids(tokenizer, row: dict, prepend_bos: bool) -> dict:
    return {"prompt_ids": tokenize_prompt(tokenizer, row["prompt"])}  # generation prompts: as sampling sees them


@dataclass(frozen=True)
class BatchKind:
    """One ``batch_kind``: the row fields its schema requires (``zoo.data.schema``), ``tokenize(tokenizer,
    row, prepend_bos)`` -> the row's token ids (``prompt_ids`` first), and its collator class (None for
    prompts: an online source samples the completions and collates them itself)."""

    fields: tuple[str, ...]
    tokenize: Callable[..., dict]
    collator: type | None


BATCH_KINDS = {
    "pairs": BatchKind(("prompt", "chosen", "rejected"), _pair_ids, PairCollator),
    "demonstrations": BatchKind(("prompt", "completion"), _completion_ids, DemonstrationCollator),
    "unpaired": BatchKind(("prompt", "completion", "label"), _labelled_ids, UnpairedCollator),
    "prompts": BatchKind(("prompt",), _prompt_ids, None),
}
COLLATORS = {name: kind.collator for name, kind in BATCH_KINDS.items() if kind.collator}  # a view, for callers
