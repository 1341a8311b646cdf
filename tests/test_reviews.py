"""The reviews task (``data=reviews``): its committed prompts are what ``zoo.reviews.prompts`` builds, its
metrics score replies, and the evaluation's hacking signals (NLL under the reference, repeated 3-grams)
are computed as their docstrings say."""

import json

import pytest

from zoo.config import compose_train_config
from zoo.evaluate import repeated_ngram_rate
from zoo.reviews import prompts
from zoo.reviews.metrics import ReviewMetrics, textblob_polarity


def test_the_committed_prompts_are_what_the_builder_writes():
    built = prompts.build()
    for name, rows in built.items():
        committed = [json.loads(line) for line in (prompts.ASSETS / name).read_text().splitlines()]
        assert committed == rows, f"zoo/reviews/assets/{name} is stale: run python -m zoo.reviews.prompts"
    train = {r["opening"] for r in built["prompts.jsonl"]}
    held_out = {r["opening"] for r in built["eval_prompts.jsonl"]}
    assert len(train) == 968 and len(held_out) == 340 and not train & held_out
    first = built["eval_prompts.jsonl"][0]
    assert first["prompt"] == [{"role": "user", "content": prompts.INSTRUCTION.format(opening=first["opening"])}]


def test_the_data_config_points_at_the_assets():
    cfg = compose_train_config(["data=reviews"])
    assert cfg.data.prompts_path.endswith("reviews/assets/prompts.jsonl") and not cfg.data.sft_stage
    assert cfg.data.preference_stage and cfg.data.metrics._target_ == "zoo.reviews.metrics.ReviewMetrics"


def test_repeated_ngram_rate_counts_repeats_within_a_text():
    """"the film was great the film was great": 3-grams t1..t6, of which "the film was", "film was great"
    and "was great the"... : (6 grams, 4 distinct) -> 2/6 repeat; "a b" has no 3-gram -> 0; mean 1/6."""
    text = "the film was great the film was great"
    grams = [tuple(text.split()[i:i + 3]) for i in range(6)]
    assert len(grams) - len(set(grams)) == 2
    assert repeated_ngram_rate([text, "a b"]) == pytest.approx((2 / 6 + 0) / 2)
    assert repeated_ngram_rate(["one two three four"]) == 0.0


def test_review_metrics_score_sentiment_with_two_different_lexicons():
    task = ReviewMetrics()
    texts = ["A wonderful, moving film. I loved it.", "A dull, awful mess of a movie."]
    gold, other = task.gold_reward(texts), task.other_rewards(texts)["textblob"]
    assert gold[0] > 0.5 > -0.5 > gold[1]
    assert other[0] > 0 > other[1] and other == textblob_polarity(texts)
    assert task.judge() is None and not hasattr(task, "fluency")  # free text: no grammar to check
