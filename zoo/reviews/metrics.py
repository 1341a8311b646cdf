"""The reviews task's metrics (``data.metrics`` in ``conf/data/reviews.yaml``): VADER as the gold reward
(the world's, on free text) and, kept out of every stage and loss, TextBlob's polarity (the Pattern
lexicon, a different word list and different rules) so a report shows whether a VADER gain is a sentiment
gain. Free text has no grammar: ``zoo.evaluate`` reports NLL under the reference and repeated 3-grams for
every task, which is where hacking shows here."""

from __future__ import annotations

from functools import lru_cache

from zoo.world.gold import gold_reward


@lru_cache(maxsize=1)
def _textblob():
    try:
        from textblob import TextBlob
    except ImportError as error:  # a dependency of zoo; only a broken install lacks it
        raise ImportError("the reviews task's held-out scorer needs textblob: pip install textblob") from error
    return TextBlob


def textblob_polarity(texts: list[str]) -> list[float]:
    """TextBlob's polarity of each text, in [-1, 1] (its Pattern-lexicon analyzer; no corpus download)."""
    blob = _textblob()
    return [float(blob(t).sentiment.polarity) for t in texts]


class ReviewMetrics:
    """Gold reward (VADER on the reply) and a held-out sentiment scorer; no judge of its own (a judge given as
    feedback measures the judge win rate, ``eval.judge_with_feedback``)."""

    def gold_reward(self, texts: list[str]) -> list[float]:
        """VADER compound score of each reply (the prompt is not scored)."""
        return gold_reward(texts)

    def other_rewards(self, texts: list[str]) -> dict[str, list[float]]:
        """Scorers no stage or loss reads: here, TextBlob's polarity."""
        return {"textblob": textblob_polarity(texts)}

    def judge(self):
        return None
