"""The world's gold reward: VADER sentiment (Hutto & Gilbert 2014) of a continuation.

A scorer nobody in this project wrote, standing in for the sentiment classifier that defines the
gold reward of the DPO paper's controlled-sentiment task (Rafailov et al. 2023, sec. 6.1). The
compound score lies in [-1, 1]; callers pass the continuation only, not the prompt.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold_reward(texts: list[str]) -> list[float]:
    """VADER compound score of each text."""
    analyzer = _analyzer()
    return [analyzer.polarity_scores(t)["compound"] for t in texts]
