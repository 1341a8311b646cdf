"""The embedded world's grammar and gold reward: determinism, VADER-checked word lists, the recognizer
accepting everything the generator makes and nothing else, prompt splits, and the gold-reward spread."""

from __future__ import annotations

import random
import statistics

import pytest
from vaderSentiment import vaderSentiment as vader

from zoo.world import grammar
from zoo.world.gold import gold_reward
from zoo.world.grammar import (CATEGORIES, PROMPT_WORDS, VOCABULARY, generate_corpus, generate_review,
                               is_grammatical, split_prompt)

LEXICON = vader.SentimentIntensityAnalyzer().lexicon
SENTIMENT_TIERS = {  # category -> (sign, tiers)
    "AP": (1, grammar.POSITIVE_ADJECTIVES), "AN": (-1, grammar.NEGATIVE_ADJECTIVES),
    "VP": (1, grammar.POSITIVE_VERBS), "VN": (-1, grammar.NEGATIVE_VERBS),
    "EP": (1, grammar.POSITIVE_NOUNS), "EN": (-1, grammar.NEGATIVE_NOUNS),
}
# VADER valence bands of the strength tiers (magnitudes), as the grammar's docstring states.
BANDS = {"mild": (0.0, 1.8), "moderate": (1.8, 2.5), "strong": (2.5, 5.0)}


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return generate_corpus(2000, seed=123)


def test_corpus_is_deterministic_for_a_seed():
    assert generate_corpus(50, seed=7) == generate_corpus(50, seed=7)
    assert generate_corpus(50, seed=7) != generate_corpus(50, seed=8)
    assert generate_review(random.Random(5), 0.3) == generate_review(random.Random(5), 0.3)


def test_vocabulary_size_and_form():
    assert 400 <= len(VOCABULARY) <= 700
    assert all(w.isalpha() and w.islower() for w in VOCABULARY)
    assert 10 <= len(grammar.TEMPLATES) <= 20


@pytest.mark.parametrize("category", sorted(SENTIMENT_TIERS))
def test_sentiment_words_are_in_vader_lexicon_with_sign_and_tier(category):
    sign, tiers = SENTIMENT_TIERS[category]
    for tier, words in tiers.items():
        lo, hi = BANDS[tier]
        for w in words:
            assert w in LEXICON, f"{w} ({category}) is not in VADER's lexicon"
            assert sign * LEXICON[w] > 0, f"{w} ({category}) has VADER valence {LEXICON[w]}"
            assert lo <= abs(LEXICON[w]) < hi, (w, tier, LEXICON[w])
        assert sorted(words) == sorted(set(words))


def test_sentiment_word_lists_are_large_enough():
    assert len(CATEGORIES["AP"]) >= 80 and len(CATEGORIES["AN"]) >= 80
    for tiers in (grammar.POSITIVE_ADJECTIVES, grammar.NEGATIVE_ADJECTIVES):
        assert all(len(words) >= 15 for words in tiers.values())  # a spread of strengths on both sides


def test_all_other_words_are_sentiment_free_for_vader():
    sentiment = {w for c in SENTIMENT_TIERS for w in CATEGORIES[c]} | {"recommend"}
    scored = sorted(w for w in VOCABULARY - sentiment if w in LEXICON)
    assert scored == [], f"framing words VADER scores: {scored}"
    negations = sorted(w for w in VOCABULARY if w in vader.NEGATE)
    assert negations == ["not"]
    # VADER intensifiers only where the grammar means them (adverbs and "a complete ..." modifiers).
    boosters = {w for w in VOCABULARY if w in vader.BOOSTER_DICT}
    assert boosters <= set(CATEGORIES["ADVA"]) | set(CATEGORIES["ADVV"]) | set(CATEGORIES["NMOD"])
    assert not PROMPT_WORDS & (set(LEXICON) | set(vader.BOOSTER_DICT) | set(vader.NEGATE))


def test_article_rule_has_no_exceptions():
    # a/an is chosen by the first letter; words where that is wrong ("a useful", "an honest") are kept out.
    exceptions = ("uniq", "unif", "unio", "unit", "univ", "use", "usu", "uti", "eu", "one", "once", "hon", "hour",
                  "heir")
    assert not [w for w in VOCABULARY if w.startswith(exceptions)]


def test_generated_reviews_are_grammatical_and_well_formed(reviews):
    bad = [r for r in reviews if not is_grammatical(r)]
    assert bad == []
    for r in reviews:
        words = [w for w in r.split() if w[0].isalpha()]
        sentences = r.count(".") + r.count("!")
        assert 15 <= len(words) <= 40 and 2 <= sentences <= 4, r
        assert r[0].isupper() and r[-1] in ".!" and "  " not in r


@pytest.mark.parametrize("text", [
    "great great superb loved amazing",               # word salad
    "Great great superb loved amazing.",              # word salad with a full stop
    "The acting was superb superb superb.",           # repeated slot
    "The acting was superb, and I loved the",         # truncated
    "The acting was superb",                          # no sentence end
    "The acting was flibbertigibbet.",                # unknown word
    "The acting was superb the acting was superb.",   # two sentences glued without punctuation
    "The acting were superb.",                        # agreement
    "This movie was an disaster.",                    # a/an
    "This movie was a insult.",
    "The acting was superb. 123",                      # stray characters
    "",
])
def test_recognizer_rejects_non_grammatical(text):
    assert not is_grammatical(text)


@pytest.mark.parametrize("text", [
    "The acting was superb.",
    "the acting was superb. i loved the ending!",     # case-insensitive
    "This movie was an insult. I would not recommend it to anyone.",
    "Although the plot felt weak, the songs were lovely.",
])
def test_recognizer_accepts_grammatical(text):
    assert is_grammatical(text)


def test_split_prompt_shapes(reviews):
    rng = random.Random(0)
    lengths = set()
    for r in reviews:
        prompt, continuation = split_prompt(r, rng)
        words = prompt.split(" ")
        lengths.add(len(words))
        assert prompt + continuation == r
        assert 2 <= len(words) <= 4 and prompt == prompt.strip()
        assert continuation.startswith(" ") and not continuation.startswith("  ") and continuation.strip()
        # The opening is framing only and never ends on an article, so the continuation decides sentiment.
        assert all(w.rstrip(",").lower() in PROMPT_WORDS for w in words), prompt
        assert words[-1].lower() not in ("a", "an")
        assert gold_reward([prompt]) == [0.0]
    assert lengths == {2, 3, 4}
    assert split_prompt(reviews[0], random.Random(1)) == split_prompt(reviews[0], random.Random(1))


def test_gold_reward_sign_and_order_on_hand_picked_texts():
    texts = ["The acting was superb.", "The acting was good.", "The acting was bad.", "The acting was dismal."]
    scores = gold_reward(texts)
    assert scores[0] > scores[1] > 0 > scores[2] > scores[3]
    assert gold_reward([" the plot was long."]) == [0.0]
    # VADER's own modifiers reach through: intensifiers raise magnitude, "not" flips the sign.
    very, plain, negated = gold_reward(["It was very good.", "It was good.", "It was not good."])
    assert very > plain > 0 > negated


def test_gold_reward_is_spread_and_continuous(reviews):
    rng = random.Random(1)
    rewards = gold_reward([split_prompt(r, rng)[1] for r in reviews])
    mean, std = statistics.mean(rewards), statistics.pstdev(rewards)
    print(f"gold reward over {len(rewards)} continuations: mean {mean:.3f} std {std:.3f} "
          f"min {min(rewards):.3f} max {max(rewards):.3f} distinct {len(set(rewards))}")
    assert min(rewards) < -0.5 and max(rewards) > 0.5
    assert std > 0.3 and abs(mean) < 0.3
    assert len(set(rewards)) >= 20
    middle = sum(-0.5 < x < 0.5 for x in rewards) / len(rewards)
    assert middle > 0.15  # not bimodal-only: plenty of mixed and mild continuations


def test_sentiment_latent_moves_gold_reward():
    rng = random.Random(3)

    def mean_reward(s: float) -> float:
        return statistics.mean(gold_reward([split_prompt(generate_review(rng, s), rng)[1] for _ in range(300)]))

    low, mid, high = mean_reward(-1.0), mean_reward(0.0), mean_reward(1.0)
    assert low < -0.4 < mid < 0.4 < high
