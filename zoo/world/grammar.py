"""A seeded grammar of short movie reviews: the embedded world's language.

Design:
- Words live in disjoint categories (aspect nouns, film nouns, copulas, adverbs, adjectives of three
  polarities, verbs of three polarities, ...). Positive and negative words are taken from VADER's
  lexicon with a spread of strengths (``good`` 1.9 < ``great`` 3.1; ``weird`` -0.7 > ``horrible``
  -2.5), so the gold reward (VADER compound) of a review varies continuously, not in two clusters.
- A review is 2-3 sentences from ~15 templates. Each sentiment slot draws its polarity from a
  review-level latent ``sentiment`` in [-1, 1] with per-slot noise, so most reviews are mixed.
- The first sentence always starts with at least three sentiment-free words ("The plot was",
  "This movie seemed", "Overall, the ending"), and ``split_prompt`` cuts the opening inside that
  neutral prefix: the prompt never decides the sentiment, the continuation does.
- ``is_grammatical`` recognises exactly this language: each word maps to one category symbol and the
  symbol string must be a sequence of template matches (one compiled regular expression). Word salad,
  unknown words, truncated sentences and missing punctuation are rejected. VADER ignores grammar, so
  a policy can raise gold reward with ungrammatical text: the fluency metric makes that visible.
"""

from __future__ import annotations

import random
import re

ASPECTS = """plot acting cast script story ending soundtrack score dialogue pacing direction cinematography
visuals premise twist finale editing lighting costumes effects music setting tone atmosphere camera climax
opening screenplay narrative performance casting design sound budget runtime structure lead writing""".split()
FILMS = "film movie picture sequel remake biopic cartoon series saga noir drama western documentary musical mystery adaptation feature".split()
POSITIVE = """good great excellent wonderful brilliant amazing fantastic lovely beautiful charming delightful fun
enjoyable clever smart strong nice pleasant funny gorgeous stunning impressive perfect inspiring sweet warm
thrilling exciting superb terrific outstanding marvelous magnificent splendid fabulous remarkable elegant
graceful hilarious heartwarming fresh original creative engaging entertaining compelling powerful satisfying
solid fine interesting intelligent thoughtful honest rich vibrant lively playful cheerful joyful glorious bold
confident awesome adorable romantic""".split()
NEGATIVE = """bad awful horrible terrible boring dull weak poor stupid ugly annoying painful disappointing dreadful
lame pathetic sad tired confusing messy ridiculous worthless useless awkward lazy grim depressing miserable
gloomy frustrating irritating offensive disgusting horrendous dreary dumb cruel empty fake foolish hopeless
inferior lousy nasty pitiful ruined unpleasant upsetting weird wrong insulting""".split()
NEUTRAL = """long short quiet simple familiar loud dark old modern typical usual ordinary recent slow quick early
late small large dense busy plain steady formal distant subtle colorful minimal epic visual technical complex
brief lengthy standard classic""".split()
VERBS = {  # "I ___ the plot."
    1: "loved liked enjoyed admired adored appreciated praised cherished treasured".split(),
    -1: "hated disliked despised regretted loathed resented mocked dreaded".split(),
    0: "watched noticed saw expected followed studied described reviewed rewatched finished considered discussed".split(),
}
BARE_VERBS = {  # "The ending made me ___."
    1: "smile laugh cheer grin".split(), -1: "cry weep scream".split(), 0: "wince yawn think sleep groan shiver wonder clap".split(),
}
FUTURE_VERBS = {  # "I will ___ this film."
    1: "recommend praise love enjoy treasure".split(), -1: "avoid forget ignore hate".split(), 0: "remember skip rewatch".split(),
}
ADVERBS = "very quite rather fairly somewhat incredibly extremely so utterly remarkably unusually oddly mostly".split()
VERB_ADVERBS = "really genuinely absolutely totally simply".split()
OPENERS = "overall frankly personally basically ultimately admittedly".split()

# word -> category symbol used by the recogniser (categories are disjoint by construction)
_SYMBOLS: dict[str, str] = {}
for _sym, _words in [("N", ASPECTS), ("F", FILMS), ("J", POSITIVE + NEGATIVE + NEUTRAL),
                     ("V", sum(VERBS.values(), [])), ("VB", sum(BARE_VERBS.values(), [])),
                     ("VF", sum(FUTURE_VERBS.values(), [])), ("ADV", ADVERBS), ("VADV", VERB_ADVERBS),
                     ("OP", OPENERS), ("BE", ["was", "is"]), ("CV", ["felt", "seemed", "looked", "sounded"]),
                     ("WERE", ["were"]), ("T", ["the"]), ("THIS", ["this"]), ("I", ["i"]), ("IT", ["it"]),
                     ("A", ["a", "an"]), ("NOT", ["not"]), ("AND", ["and"]), ("BUT", ["but"]), ("MADE", ["made"]),
                     ("ME", ["me"]), ("WILL", ["will"]), ("OF", ["of"]), ("C", [","]), ("E", [".", "!"])]:
    for _w in _words:
        assert _w not in _SYMBOLS, f"{_w} is in two categories"
        _SYMBOLS[_w] = _sym
VOCABULARY = frozenset(w for w in _SYMBOLS if w.isalpha())

# Templates: category symbols; "?" marks an optional slot. NP = "the N", AP = "[ADV] J", COP = BE|CV.
TEMPLATES = {
    "np_cop_ap": "T N COP AP E",
    "np_cop_ap_and": "T N COP AP C AND T N COP AP E",
    "np_cop_ap_but": "T N COP AP C BUT T N COP AP E",
    "np_not": "T N BE NOT J E",
    "two_np_were": "T N AND T N PLCOP AP E",
    "this_film": "THIS F COP AP E",
    "opener_np": "OP C T N COP AP E",
    "made_me": "T N MADE ME VB E",
    "it_was_a": "IT BE A AP F E",
    "i_verb": "I VADV? V T N E",
    "i_verb_of": "I VADV? V T N OF THIS F E",
    "i_verb_but": "I V T N C BUT I V T N E",
    "opener_i": "OP C I V THIS F E",
    "i_will": "I WILL VF THIS F E",
}
FIRST_SENTENCE = ["np_cop_ap", "np_cop_ap_and", "np_cop_ap_but", "np_not", "two_np_were", "this_film", "opener_np", "made_me"]
_MACROS = {"COP": "(?:BE|CV)", "PLCOP": "(?:WERE|CV)", "AP": "(?:ADV )?J"}


def _template_regex(template: str) -> str:
    parts = []
    for sym in template.split():
        optional = sym.endswith("?")
        sym = sym.rstrip("?")
        body = _MACROS.get(sym, sym)
        parts.append(f"(?:{body} )?" if optional else f"{body} ")
    return "".join(parts)


_SENTENCE = "(?:" + "|".join(_template_regex(t) for t in TEMPLATES.values()) + ")"
_REVIEW = re.compile(f"(?:{_SENTENCE})+")
_WORD = re.compile(r"[A-Za-z]+|[.,!]|\S")


def _polarity(rng: random.Random, sentiment: float) -> int:
    """+1, -1 or 0 for one slot: neutral 20% of the time, else positive with probability (1 + s) / 2."""
    if rng.random() < 0.2:
        return 0
    noisy = max(-1.0, min(1.0, sentiment + rng.gauss(0.0, 0.35)))
    return 1 if rng.random() < (1 + noisy) / 2 else -1


def _adjective(rng: random.Random, sentiment: float, allow_adverb: bool = True) -> list[str]:
    pol = _polarity(rng, sentiment)
    word = rng.choice({1: POSITIVE, -1: NEGATIVE, 0: NEUTRAL}[pol])
    return ([rng.choice(ADVERBS)] if allow_adverb and rng.random() < 0.3 else []) + [word]


def _sentence(name: str, rng: random.Random, s: float) -> list[str]:
    """Fill one template with words (lowercase; capitalised when rendered)."""
    n = lambda: rng.choice(ASPECTS)  # noqa: E731
    cop = lambda: rng.choice(["was", "was", "is", "felt", "seemed", "looked", "sounded"])  # noqa: E731
    end = "!" if rng.random() < 0.15 else "."
    v = lambda table: rng.choice(table[_polarity(rng, s)])  # noqa: E731
    if name == "np_cop_ap":
        return ["the", n(), cop(), *_adjective(rng, s), end]
    if name in ("np_cop_ap_and", "np_cop_ap_but"):
        conj = "and" if name.endswith("and") else "but"
        return ["the", n(), cop(), *_adjective(rng, s), ",", conj, "the", n(), cop(), *_adjective(rng, s), end]
    if name == "np_not":
        return ["the", n(), rng.choice(["was", "is"]), "not", _adjective(rng, -s, False)[0], end]
    if name == "two_np_were":
        a, b = rng.sample(ASPECTS, 2)
        return ["the", a, "and", "the", b, rng.choice(["were", "were", "felt", "seemed"]), *_adjective(rng, s), end]
    if name == "this_film":
        return ["this", rng.choice(FILMS), cop(), *_adjective(rng, s), end]
    if name == "opener_np":
        return [rng.choice(OPENERS), ",", "the", n(), cop(), *_adjective(rng, s), end]
    if name == "made_me":
        return ["the", n(), "made", "me", v(BARE_VERBS), end]
    if name == "it_was_a":
        adj = _adjective(rng, s)
        return ["it", "was", "an" if adj[0][0] in "aeiou" else "a", *adj, rng.choice(FILMS), end]
    if name in ("i_verb", "i_verb_of"):
        adv = [rng.choice(VERB_ADVERBS)] if rng.random() < 0.3 else []
        tail = ["of", "this", rng.choice(FILMS)] if name == "i_verb_of" else []
        return ["i", *adv, v(VERBS), "the", n(), *tail, end]
    if name == "i_verb_but":
        return ["i", v(VERBS), "the", n(), ",", "but", "i", v(VERBS), "the", n(), end]
    if name == "opener_i":
        return [rng.choice(OPENERS), ",", "i", v(VERBS), "this", rng.choice(FILMS), end]
    if name == "i_will":
        return ["i", "will", v(FUTURE_VERBS), "this", rng.choice(FILMS), end]
    raise KeyError(name)


def _render(words: list[str]) -> str:
    """Words -> text: capitalise sentence starts and "I", attach punctuation to the previous word."""
    out, capital = [], True
    for w in words:
        if w in ".,!":
            out[-1] += w
            capital = w != ","
            continue
        out.append(w.capitalize() if capital or w == "i" else w)
        capital = False
    return " ".join(out)


def generate_review(rng: random.Random, sentiment: float | None = None) -> str:
    """One review of 2-3 sentences whose word polarities lean towards ``sentiment`` in [-1, 1]."""
    s = rng.uniform(-1.0, 1.0) if sentiment is None else max(-1.0, min(1.0, sentiment))
    names = [rng.choice(FIRST_SENTENCE)] + [rng.choice(list(TEMPLATES)) for _ in range(rng.randint(1, 2))]
    return _render([w for name in names for w in _sentence(name, rng, s)])


def generate_corpus(n: int, seed: int) -> list[str]:
    """``n`` reviews, deterministic for ``seed``."""
    rng = random.Random(seed)
    return [generate_review(rng) for _ in range(n)]


def _neutral_prefix_words(review: str) -> int:
    """How many leading words (punctuation attached) carry no sentiment."""
    count = 0
    for token in review.split():
        word = token.strip(".,!").lower()
        if token.endswith((".", "!")):  # the prompt stays inside the first sentence
            break
        if word in POSITIVE or word in NEGATIVE or word == "not" or _SYMBOLS.get(word) in ("V", "VB", "VF", "ADV"):
            break
        count += 1
    return count


def split_prompt(review: str, rng: random.Random) -> tuple[str, str]:
    """(opening of 2-4 sentiment-free words, continuation starting with a space)."""
    words = review.split(" ")
    k = rng.randint(2, max(2, min(4, _neutral_prefix_words(review))))
    return " ".join(words[:k]), " " + " ".join(words[k:])


def is_grammatical(text: str) -> bool:
    """True iff ``text`` is a sequence of complete sentences this grammar generates."""
    symbols = []
    for token in _WORD.findall(text.lower()):
        sym = _SYMBOLS.get(token)
        if sym is None:
            return False
        symbols.append(sym)
    return bool(symbols) and _REVIEW.fullmatch(" ".join(symbols) + " ") is not None
