"""Batch sources: where ``zoo.trainer.fit`` gets its micro-batches.

A batch source is anything with the :class:`BatchSource` members. Three implement it:

- :class:`DatasetBatches`: a fixed, tokenized dataset collated in a seeded order (every offline loss,
  the SFT and reward-model stages);
- ``zoo.rollout.Experience``: PPO's rollouts from the policy being trained, scored and turned into targets;
- ``zoo.online.OnlinePairs``: fresh on-policy pairs labelled by a feedback source (online DPO / IPO).

Micro-batches are numbered over all processes, so a resumed run asks for ``start..end`` and sees what an
uninterrupted run would have; a source that samples seeds each process with :func:`process_seed`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader


@runtime_checkable
class BatchSource(Protocol):
    """What ``fit`` reads from a batch source. ``batches(accelerator, model, start, end)`` yields collated
    micro-batches number ``start..end`` (dicts of tensors on the accelerator's device, optionally with
    ``"metrics"``: floats ``fit`` logs with the loss's); ``steps_per_refresh``: checkpoints fall on its
    multiples (an online source cannot rebuild a half-used rollout batch). A source with ``state_dict`` /
    ``load_state_dict`` is checkpointed with the model."""

    steps_per_refresh: int

    def batches(self, accelerator: Accelerator, model: torch.nn.Module, start: int, end: int) -> Iterable[dict]:
        ...


def process_seed(seed: int, accelerator: Accelerator) -> int:
    """The seed of this process's samples: ``seed`` itself on one process, a different one on each of
    several, so processes neither sample the same completions nor take the same prompts."""
    return seed + 7919 * accelerator.process_index


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps ``start..end`` of an endless seeded shuffle, so a resumed run sees the
    same data in the same order as an uninterrupted one (epoch e uses permutation seed + e)."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, start_batch: int, end_batch: int):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.start_batch, self.end_batch = start_batch, end_batch

    def __len__(self) -> int:
        return max(0, self.end_batch - self.start_batch)

    def __iter__(self):
        per_epoch = max(1, self.num_rows // self.batch_size)  # drop the ragged tail: fixed batch shape
        order, order_epoch = [], None
        for b in range(self.start_batch, self.end_batch):
            epoch, k = divmod(b, per_epoch)
            if epoch != order_epoch:  # one shuffle per epoch (5 ms for 8,000 rows), not one per batch
                order, order_epoch = list(range(self.num_rows)), epoch
                random.Random(self.seed + epoch).shuffle(order)
            chunk = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield chunk if len(chunk) == self.batch_size else (chunk + order)[: self.batch_size]


class DatasetBatches:
    """Batches of a fixed dataset: ``rows`` collated ``batch_size`` at a time in a seeded order."""

    steps_per_refresh = 1  # any step is a valid checkpoint

    def __init__(self, rows: list[dict], collator, batch_size: int, seed: int = 0):
        self.rows, self.collator, self.batch_size, self.seed = rows, collator, batch_size, seed

    def batches(self, accelerator: Accelerator, model: torch.nn.Module, start: int, end: int):
        """Micro-batches number ``start..end`` of the endless shuffle, on the accelerator's device."""
        sampler = StepBatches(len(self.rows), self.batch_size, self.seed, start, end)
        return accelerator.prepare(DataLoader(self.rows, batch_sampler=sampler, collate_fn=self.collator))
