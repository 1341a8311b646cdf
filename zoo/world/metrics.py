"""The world's task metrics (``data.metrics`` in ``conf/data/world.yaml``): what samples are measured by
beyond the models themselves. Gold reward (VADER), fluency (the grammar the reviews were generated from)
and the judge win rate (the world's AI labeler, so a method's win rate as its labeler sees it sits next to
the gold one). The evaluation, the label stage's agreement with gold, PPO's proxy-vs-gold curve and
best-of-N read them through ``zoo.evaluate.TaskMetrics``; nothing outside the world imports this module.
"""

from __future__ import annotations

from zoo.feedback.judge import LMJudge
from zoo.world.gold import gold_reward
from zoo.world.grammar import is_grammatical
from zoo.world.judge_train import world_judge


class WorldMetrics:
    """Gold reward, fluency and the world's judge; ``judge_cache_dir`` caches the judge's verdicts."""

    def __init__(self, judge_cache_dir: str | None = None):
        self.judge_cache_dir = judge_cache_dir

    def gold_reward(self, texts: list[str]) -> list[float]:
        """VADER compound score of each completion (the prompt is not scored)."""
        return gold_reward(texts)

    def fluency(self, prompts: list[str], completions: list[str]) -> list[bool]:
        """Whether each prompt + completion is a sentence of the world's grammar."""
        return [is_grammatical(p + c) for p, c in zip(prompts, completions)]

    def judge(self) -> LMJudge:
        """The world's judge, with the principle and template it was trained with."""
        return world_judge(cache_dir=self.judge_cache_dir)
