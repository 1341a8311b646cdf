"""The feedback contract: what a source of preferences gives, and how rollouts are scored.

Every feedback source (``feedback.source`` in the config, built with ``hydra.utils.instantiate``) is a
:class:`Labeler`: shown two completions of each prompt, it says which one wins and how sure it is
(:class:`Labels`). The label stage turns that into a preference dataset, online DPO into on-policy pairs.

PPO and best-of-N score single completions instead, through a :class:`Scorer`: a trained reward model
(:class:`RewardScorer`) or, for direct RLAIF, an LM judge's expected rating (:class:`JudgeScorer`).

What the feedback is measured against (the world's gold reward, its grammar, its judge) is not feedback:
it is the task's, plugged in through ``data.metrics`` (``zoo.evaluate.TaskMetrics``), so nothing here
knows the world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from zoo.data.collate import DemonstrationCollator
from zoo.data.tokenize import tokenize_completion


@dataclass
class Labels:
    """One label per pair: whether the first completion won, and the source's P(first > second)."""

    first_wins: list[bool]
    probability: list[float]  # P(first > second) under the source's own model of its preferences
    position_bias: float | None = None  # a judge's measured preference for the first-shown response


@runtime_checkable
class Labeler(Protocol):
    """A feedback source: ``label(prompts, first, second)`` compares ``first[i]`` with ``second[i]`` as
    completions of ``prompts[i]``. Stateless given its inputs (a pair always gets the same label), so
    cached stages and resumed online runs see the labels an uninterrupted run would."""

    def label(self, prompts: list, first: list[str], second: list[str]) -> Labels:
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores (prompt, completion) texts: ``scorer(prompts, completions, device) -> (N,)`` float tensor.
    ``module`` is what must sit on the scoring device before it is called."""

    module: torch.nn.Module

    def __call__(self, prompts: list, completions: list[str], device) -> torch.Tensor:
        ...


class RewardScorer:
    """Scores (prompt, completion) texts with a scalar model, through its own tokenizer (feedback reads
    text, not the policy's token ids). ``score_fn(input_ids, attention_mask) -> (N,)``; ``module`` is
    what must sit on the scoring device (the RM, or only a head when the RM is an adapter of the policy)."""

    def __init__(self, score_fn, module: torch.nn.Module, tokenizer, max_length: int | None, batch_size: int = 64):
        self.score_fn, self.module, self.tokenizer = score_fn, module, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str], device) -> torch.Tensor:
        # the RM was trained on prompt + completion + EOS (TRL's tokenization), so it is scored the same way
        rows = [dict(zip(("prompt_ids", "completion_ids"), tokenize_completion(self.tokenizer, p, c)))
                for p, c in zip(prompts, completions)]
        collate = DemonstrationCollator(self.tokenizer.pad_token_id, self.max_length)
        scores = []
        for start in range(0, len(rows), self.batch_size):
            batch = collate(rows[start:start + self.batch_size])
            scores.append(self.score_fn(batch["input_ids"].to(device), batch["attention_mask"].to(device)).float())
        return torch.cat(scores)


class JudgeScorer:
    """Direct RLAIF (d-RLAIF, Lee et al. 2023): a rollout's score is an LM judge's expected rating
    E[s] = sum_s s P(s) of the response (``LMJudge.score``), read from the text; no reward model is
    trained, so the reward cannot drift from the judge. ``module`` (the judge's LM) moves to the
    rollout device like a reward model."""

    def __init__(self, judge):
        self.judge, self.module = judge, judge.model

    @torch.no_grad()
    def __call__(self, prompts: list, completions: list[str], device) -> torch.Tensor:
        self.judge.device = torch.device(device)  # where ``Experience`` put the judge's model
        return torch.tensor(self.judge.score(prompts, completions), device=device)  # (N,)
