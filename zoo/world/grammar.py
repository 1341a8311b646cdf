"""A seeded generative grammar of short English movie reviews: the embedded world's language.

The world mirrors the controlled sentiment generation task of the DPO paper (Rafailov et al. 2023,
sec. 6.1: IMDb review prefixes, a sentiment classifier as gold reward). Real IMDb text needs a
download and a large model; this grammar gives the same shape offline, small enough that a ~2M
parameter transformer learns it in a few hundred steps.

Design
------
* **Words** (600) live in disjoint categories: aspect nouns ("plot", "soundtrack"), film nouns,
  adjectives, verbs, adverbs, connectives, a few literal function words. Every word has exactly one
  category, so a text maps to one category sequence and recognition is a regular-expression match.
* **Sentiment words come from VADER's lexicon.** Positive and negative adjectives, verbs ("loved",
  "hated") and evaluative nouns ("a masterpiece", "a disaster") are each split into three strength
  tiers by their VADER valence (mild < 1.8 <= moderate < 2.5 <= strong, mirrored for negatives), so
  the gold reward (``zoo.world.gold``, VADER compound) of a review varies continuously. Every other
  word is absent from the lexicon (checked by ``tests/test_world_grammar.py``), so sentiment enters
  only through the sentiment slots, VADER's intensifiers ("very", "slightly"), "not" and "but".
* **Templates** (16 sentence shapes, ``TEMPLATES``) are written in a tiny notation: category names
  in capitals, literal words in lower case, ``( a | b )`` alternatives, ``x?`` optional (``x?15``: 15%
  of the time), ``<MACRO>`` expansions and a ``~`` directive ("the next sentiment slot contrasts
  with the previous one"). One parse serves both directions: the generator walks it, the recognizer
  compiles it to one regular expression over category symbols.
* **Sentiment** is a review-level latent ``s`` in [-1, 1]. Each sentiment slot is positive with
  probability 0.5 + 0.42 s (neutral 15% of the time where a neutral word fits), so reviews are
  mixed; the strength tier is drawn around |s|, and intensifiers and "!" grow likelier with |s|.
  After "not" the slot's word takes the opposite polarity ("not bad" says something positive);
  "and"/"but" are chosen to agree with the polarities they join.
* **Prompts** are review openings of 2-4 words made only of framing words (``PROMPT_WORDS``:
  determiners, nouns, copulas, pronouns, "watched"...; no adjective, adverb, sentiment verb or
  "not"), so the sentiment is left to the continuation. A prompt never ends on "a"/"an" (the
  article would reveal the next word's first letter, e.g. "an insult"). Every review's first
  sentence is drawn from templates that start with at least two such words, so it can always be cut.

``is_grammatical`` is the world's fluency check: VADER ignores grammar, so a policy can raise gold
reward with word salad; the recognizer sees it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

# --- words ----------------------------------------------------------------------------------------
# Sentiment tiers follow VADER valence (lexicon values in the comments' ranges); the test file checks
# every word's sign and band against the installed lexicon.

POSITIVE_ADJECTIVES = {
    "mild": (  # 0 < valence < 1.8
        "solid fine okay warm compelling sparkling fresh original cool competent engaging worthwhile natural "
        "stunning bold thoughtful capable clear amusing humorous hilarious smart sincere interesting romantic"
    ).split(),
    "moderate": (  # 1.8 <= valence < 2.5
        "good nice enjoyable entertaining funny powerful inspiring mature popular playful lively creative "
        "classy attractive energetic clever cute sweet graceful satisfying intelligent breathtaking neat "
        "harmonious grand noble terrific thrilling heartwarming elegant effective wise ambitious radiant "
        "exciting confident inspired adorable pretty handsome strong impressive pleasant flawless talented "
        "beloved fun fabulous vibrant rewarding brave pleasing passionate ideal"
    ).split(),
    "strong": (  # valence >= 2.5
        "fascinating cheerful superior fantastic remarkable admirable heroic rich divine excellent "
        "wonderful perfect happy amazing brilliant splendid lovely charming delightful successful marvelous "
        "magnificent beautiful joyful outstanding gorgeous lovable heavenly great superb awesome glorious"
    ).split(),
}
NEGATIVE_ADJECTIVES = {
    "mild": (  # -1.8 < valence < 0
        "grating awkward gloomy weird strange trite empty confusing repetitive feeble boring confused "
        "humorless odd bizarre disjointed dreary unimpressive lazy messy ridiculous appalling careless "
        "exhausting ludicrous depressing embarrassing dull annoying sluggish"
    ).split(),
    "moderate": (  # -2.5 < valence <= -1.8
        "lame bitter weak dreadful tired meaningless frustrating painful worthless harsh mindless awful "
        "irritating offensive dire forced obnoxious hopeless tragic unfortunate poor terrible unpleasant "
        "fake gross broken flawed wrong upsetting sad incompetent disappointing miserable shameful insulting "
        "chaotic catastrophic scary frightening dumb ugly rotten regrettable disturbing stupid "
        "disgusting sickening dissatisfying"
    ).split(),
    "strong": (  # valence <= -2.5
        "bad horrible lousy horrid joyless troubling idiotic nasty pathetic crude grim moronic cruel "
        "horrendous disastrous dismal vile"
    ).split(),
}
# Descriptive adjectives VADER does not score: they keep some slots sentiment-free.
NEUTRAL_ADJECTIVES = (
    "long short slow quiet loud simple dark familiar unusual modern new classic different typical "
    "conventional traditional realistic minimal experimental lengthy brief straightforward standard "
    "ordinary average modest subtle quirky complex complicated dense heavy light fast quick steady linear "
    "episodic technical theatrical plain direct deliberate measured unexpected atmospheric detailed sparse "
    "muted lavish intimate personal stylized silent"
).split()

POSITIVE_VERBS = {"mild": [], "moderate": "liked adored enjoyed admired appreciated cherished".split(),
                  "strong": "loved treasured".split()}
NEGATIVE_VERBS = {"mild": "disliked despised regretted resented".split(), "moderate": "loathed abhorred".split(),
                  "strong": "hated dreaded".split()}
POSITIVE_NOUNS = {"mild": "treat".split(), "moderate": "triumph marvel gift".split(),
                  "strong": "masterpiece delight joy pleasure success winner miracle beauty".split()}
NEGATIVE_NOUNS = {"mild": "mess bore flop dud".split(),
                  "moderate": "waste failure disappointment embarrassment insult fiasco shame".split(),
                  "strong": "disaster tragedy catastrophe travesty".split()}

# Framing and structure categories; none of these words is in VADER's lexicon.
CATEGORIES: dict[str, list[str]] = {
    "NS": (  # film aspects, singular: "the plot was"
        "plot acting soundtrack ending cast director script pacing dialogue direction cinematography editing "
        "score story premise finale climax screenplay tone atmosphere lighting casting narrative storyline "
        "setting opening protagonist lead narrator composer writer writing production runtime music sound "
        "design makeup choreography animation photography framing twist conclusion beginning middle "
        "chemistry message theme concept characterization performance scenery camerawork dubbing trailer"
    ).split(),
    "NP": (  # film aspects, plural: "the songs were"
        "visuals effects characters actors actresses performances costumes sets songs scenes twists stunts "
        "locations shots landscapes graphics lines creatures monsters subplots flashbacks chases sequences "
        "cameos montages accents dances performers extras props melodies lyrics"
    ).split(),
    "F": ("movie film picture remake documentary feature adaptation prequel sequel cartoon show series flick "
          "musical western drama mystery epic biopic anime satire parody whodunit").split(),
    "NMOD": "absolute complete total utter real".split(),  # "a complete disaster"
    "ADVA": (  # adverbs before adjectives; most are VADER boosters (+-0.293), which is why they are here
        "very extremely incredibly so quite remarkably especially utterly unbelievably fairly somewhat "
        "slightly rather largely oddly exceptionally tremendously unusually decidedly particularly hugely "
        "genuinely"
    ).split(),
    "ADVV": "really absolutely totally completely deeply thoroughly just actually simply mostly partly".split(),
    "DM": "overall frankly basically personally ultimately still anyway admittedly".split(),  # "Overall, ..."
    "LINK": "felt seemed looked sounded".split(),  # number-neutral copulas
    "WATCH": "watched saw caught rented streamed viewed".split(),
    "REL": ("wife husband brother sister son daughter girlfriend boyfriend dad mom father mother roommate "
            "cousin grandmother grandfather uncle aunt nephew niece partner").split(),
    "TUNIT": "night week weekend month year summer winter".split(),
    "DAY": "monday tuesday wednesday thursday friday saturday sunday".split(),
    "PLACE": "theater cinema multiplex movies premiere screening".split(),  # "at the cinema"
    "PADJ": "young old retired former local elderly teenage married famous foreign".split(),
    "PERSON": ("detective teacher soldier farmer girl boy doctor pilot lawyer painter chef scientist sailor "
               "nurse student musician boxer journalist spy king queen robot dog widow singer dancer").split(),
    "SETTING": ("town city village school hospital desert forest ship castle kingdom island hotel office farm "
                "apartment suburb").split(),
    "RECIP": "everyone anyone families adults teenagers fans".split(),
    "ART": "a an".split(),
    "END": ". !".split(),
}
_SENTIMENT = {"AP": POSITIVE_ADJECTIVES, "AN": NEGATIVE_ADJECTIVES, "VP": POSITIVE_VERBS, "VN": NEGATIVE_VERBS,
              "EP": POSITIVE_NOUNS, "EN": NEGATIVE_NOUNS}
for _name, _tiers in _SENTIMENT.items():
    CATEGORIES[_name] = [w for tier in _tiers.values() for w in tier]
CATEGORIES["A0"] = NEUTRAL_ADJECTIVES
# Flat views for callers and tests: all positive / negative / neutral adjectives, aspect and film nouns.
POSITIVE, NEGATIVE, NEUTRAL = CATEGORIES["AP"], CATEGORIES["AN"], NEUTRAL_ADJECTIVES
ASPECTS, FILMS = CATEGORIES["NS"] + CATEGORIES["NP"], CATEGORIES["F"]

# Union names used in templates: a slot filled by the generator according to sentiment.
META = {"ADJ": ("AP", "AN", "A0"), "VERB": ("VP", "VN"), "ENOUN": ("EP", "EN"), "CONJ": ("and", "but")}
TIERS = ("mild", "moderate", "strong")
# Capitalised inside sentences too (proper nouns).
_PROPER = frozenset(CATEGORIES["DAY"]) | {"i"}

MACROS = {
    "<NPC>": "( the NS ( was | LINK ) | the NP ( were | LINK ) )",  # noun phrase + agreeing copula
    "<AP>": "ADVA? ADJ",
    "<TIME>": "( last TUNIT | on DAY | at the PLACE )",
    "<WHO>": "( i | we | my REL and i )",
}

# (template, opener): openers start with >= 2 prompt-safe words, so a review can begin with them.
TEMPLATES: list[tuple[str, bool]] = [
    ("( DM , )?15 <NPC> not?12 <AP> END", True),                    # Overall, the plot was not very good.
    ("<NPC> <AP> , CONJ <NPC> <AP> END", True),                      # The plot was dull, but the songs were lovely.
    ("although <NPC> <AP> , <NPC> ~ <AP> END", True),                # Although the cast felt weak, the score was fine.
    ("<NPC> <AP> CONJ ADJ END", True),                               # The script was clever and funny.
    ("i ADVV? VERB the ( NS | NP ) END", False),                     # I really loved the soundtrack.
    # I loved the plot, but I hated the songs.
    ("i ADVV? VERB the ( NS | NP ) , but i ADVV? ~ VERB the ( NS | NP ) END", False),
    ("i ADVV? VERB every minute of it END", False),                  # I hated every minute of it.
    ("( ( this | the ) F | it ) was ART NMOD?35 ENOUN END", True),   # This movie was a complete disaster.
    ("( DM , )?15 ( this | the ) F was not?12 <AP> END", True),      # This film was extremely charming.
    ("what ART <AP> F END", False),                                  # What a wonderful film!
    ("the ( NS | NP ) made the F <AP> END", True),                   # The soundtrack made the film enjoyable.
    ("i would REC_NOT ADVV? recommend it ( to RECIP )? END", False),  # I would not recommend it.
    ("<WHO> WATCH this F ( with my REL )?30 <TIME> END", True),      # My sister and I watched this movie last night.
    # This film follows a retired detective in a village.
    ("( the | this ) F ( follows | is about ) ART PADJ? PERSON ( in ART SETTING )? END", True),
    ("( i | we ) found the ( NS | NP ) <AP> END", True),             # I found the pacing rather slow.
    ("<AP> ( NS | NP ) , <AP> ( NS | NP ) END", False),             # Superb acting, awful songs.
]

# --- template notation ----------------------------------------------------------------------------
# AST nodes: ("sym", name) | ("seq", [node]) | ("alt", [node]) | ("opt", node, prob or None) | ("contrast",)

def _parse(template: str):
    for macro, body in MACROS.items():
        template = template.replace(macro, body)
    toks = re.findall(r"\(|\)|\||\?\d*|[^\s()|?]+", template)
    pos = 0

    def seq():
        nonlocal pos
        items = []
        while pos < len(toks) and toks[pos] not in (")", "|"):
            tok = toks[pos]
            pos += 1
            if tok == "(":
                alts = [seq()]
                while toks[pos] == "|":
                    pos += 1
                    alts.append(seq())
                assert toks[pos] == ")", template
                pos += 1
                node = ("alt", alts) if len(alts) > 1 else alts[0]
            elif tok == "~":
                node = ("contrast",)
            else:
                node = ("sym", tok)
            if pos < len(toks) and toks[pos].startswith("?"):
                prob = int(toks[pos][1:]) / 100 if len(toks[pos]) > 1 else None
                node = ("opt", node, prob)
                pos += 1
            items.append(node)
        return ("seq", items)

    tree = seq()
    assert pos == len(toks), template
    return tree


_TREES = [_parse(tpl) for tpl, _ in TEMPLATES]
_OPENERS = [tree for tree, (_, opener) in zip(_TREES, TEMPLATES) if opener]


def _names(node) -> set[str]:
    if node[0] == "sym":
        return {node[1]}
    children = node[1] if node[0] in ("seq", "alt") else [node[1]] if node[0] == "opt" else []
    return set().union(*map(_names, children))


# Every word maps to one symbol: each category gets one, each literal word of a template gets its own.
_LITERALS = sorted(set().union(*map(_names, _TREES)) - set(CATEGORIES) - set(META) - {"REC_NOT"}
                   | {"and", "but", "not"})
_SYMBOL: dict[str, str] = {}  # category or literal -> one character
_WORD_SYMBOL: dict[str, str] = {}  # word -> its category's character
for _i, _name in enumerate(list(CATEGORIES) + _LITERALS):
    _SYMBOL[_name] = chr(0x100 + _i)
    for _w in CATEGORIES.get(_name, [_name]):
        if _w in _WORD_SYMBOL:
            raise ValueError(f"word {_w!r} is in two categories")  # disjointness keeps recognition a regex match
        _WORD_SYMBOL[_w] = _SYMBOL[_name]

VOCABULARY: frozenset[str] = frozenset(w for w in _WORD_SYMBOL if w[0].isalpha())
# Words a prompt may contain: framing only, nothing that hints at a polarity or strength. ("and" only
# ever follows framing words in "my sister and I"; "although" announces a contrast, not its direction.)
PROMPT_WORDS: frozenset[str] = frozenset(
    [w for name in ("NS", "NP", "F", "DM", "LINK", "WATCH", "REL", "TUNIT", "DAY", "PLACE", "PADJ", "PERSON",
                    "SETTING", "ART") for w in CATEGORIES[name]]
    + [w for w in _LITERALS if w not in ("not", "but", "recommend", ",")]
)


def _regex(node) -> str:
    kind = node[0]
    if kind == "seq":
        return "".join(_regex(n) for n in node[1])
    if kind == "alt":
        return "(?:" + "|".join(_regex(n) for n in node[1]) + ")"
    if kind == "opt":
        return "(?:" + _regex(node[1]) + ")?"
    if kind == "contrast":
        return ""
    name = node[1]
    if name == "REC_NOT":
        return "(?:" + _SYMBOL["not"] + ")?"
    if name in META:
        return "[" + "".join(_SYMBOL[m] for m in META[name]) + "]"
    return _SYMBOL[name]


# One regex over symbol strings: one or more complete sentences, each matching some template.
_TEXT_RE = re.compile("(?:" + "|".join(_regex(t) for t in _TREES) + ")+")
_TOKEN_RE = re.compile(r"[a-z]+|[.,!]|\S")  # \S catches any other character, which then fails lookup
_VOWELS = frozenset("aeiou")  # a/an by first letter: the vocabulary avoids "useful"-type exceptions


# --- generation -----------------------------------------------------------------------------------

@dataclass
class _Sentence:
    """Mutable state while one sentence is generated."""
    rng: random.Random
    s: float  # review-level sentiment latent in [-1, 1]
    tokens: list[str] = field(default_factory=list)
    polarity: list[tuple[int, int]] = field(default_factory=list)  # (token index, intended polarity)
    flip: bool = False  # after "not": the next word takes the opposite polarity
    contrast: bool = False  # after "~": the next slot opposes the previous one

    def draw_polarity(self, allow_neutral: bool) -> int:
        """Intended polarity of the next slot: +1, -1 or 0 (neutral)."""
        if self.contrast and self.polarity and self.polarity[-1][1] != 0 and self.rng.random() < 0.9:
            p = -self.polarity[-1][1]
        elif allow_neutral and self.rng.random() < 0.15:
            p = 0
        else:
            p = 1 if self.rng.random() < 0.5 + 0.42 * self.s else -1
        self.contrast = False
        self.polarity.append((len(self.tokens), p))
        return p

    def sentiment_word(self, pos_name: str, neg_name: str, neutral_name: str | None) -> str:
        """Fill a sentiment slot: polarity from the latent, strength tier drawn around |s|."""
        p = self.draw_polarity(allow_neutral=neutral_name is not None)
        if self.flip:
            p, self.flip = -p, False
        if p == 0:
            return self.rng.choice(CATEGORIES[neutral_name])
        tiers = _SENTIMENT[pos_name if p > 0 else neg_name]
        target = 2 * abs(self.s)  # 0 = mild ... 2 = strong
        weights = [math.exp(-((t - target) ** 2)) if tiers[name] else 0.0 for t, name in enumerate(TIERS)]
        tier = self.rng.choices(TIERS, weights)[0]
        return self.rng.choice(tiers[tier])

    def walk(self, node) -> None:
        kind = node[0]
        if kind == "seq":
            for n in node[1]:
                self.walk(n)
        elif kind == "alt":
            self.walk(self.rng.choice(node[1]))
        elif kind == "opt":
            prob = node[2]
            if prob is None:  # intensifiers grow likelier with the strength of the latent
                prob = 0.2 + 0.3 * abs(self.s) if node[1] in (("sym", "ADVA"), ("sym", "ADVV")) else 0.5
            if self.rng.random() < prob:
                self.walk(node[1])
        elif kind == "contrast":
            self.contrast = True
        else:
            self.tokens.append(self.word(node[1]))

    def word(self, name: str) -> str:
        rng = self.rng
        if name == "ADJ":
            return self.sentiment_word("AP", "AN", "A0")
        if name == "VERB":
            return self.sentiment_word("VP", "VN", None)
        if name == "ENOUN":
            return self.sentiment_word("EP", "EN", None)
        if name == "REC_NOT":  # "recommend" is positive in VADER; "not" makes the slot negative
            return "not" if self.draw_polarity(allow_neutral=False) < 0 else ""
        if name == "not":
            self.flip = True
            return "not"
        if name in ("ART", "CONJ"):
            return "\0" + name  # resolved once the neighbours are known
        if name == "END":
            charged = any(p for _, p in self.polarity)
            bang = 0.8 if self.tokens[0] == "what" else (0.08 + 0.25 * abs(self.s) if charged else 0.03)
            return "!" if rng.random() < bang else "."
        if name in CATEGORIES:
            return rng.choice(CATEGORIES[name])
        return name  # literal word

    def render(self) -> list[str]:
        """Resolve placeholders (a/an by the next word; and/but by the polarities joined)."""
        toks = self.tokens
        for i, tok in enumerate(toks):
            if tok == "\0ART":
                toks[i] = "an" if next(t for t in toks[i + 1:] if t)[0] in _VOWELS else "a"
            elif tok == "\0CONJ":
                before = [p for j, p in self.polarity if j < i]
                after = [p for j, p in self.polarity if j > i]
                a, b = (before[-1] if before else 0), (after[0] if after else 0)
                if a and b:  # "good and funny", "good but slow"
                    toks[i] = "and" if a == b else "but"
                else:
                    toks[i] = self.rng.choice(["and", "but"])
        return [t for t in toks if t]


def _sentence(rng: random.Random, s: float, tree) -> list[str]:
    sent = _Sentence(rng, s)
    sent.walk(tree)
    toks = sent.render()
    return [toks[0].capitalize()] + [t.capitalize() if t in _PROPER else t for t in toks[1:]]


def _detokenize(tokens: list[str]) -> str:
    return re.sub(r" ([.,!])", r"\1", " ".join(tokens))


def generate_review(rng: random.Random, sentiment: float | None = None) -> str:
    """One review of 2-4 sentences and 15-40 words; ``sentiment`` in [-1, 1] biases its slots (None: uniform)."""
    s = rng.uniform(-1.0, 1.0) if sentiment is None else max(-1.0, min(1.0, float(sentiment)))
    while True:  # rejection keeps the length in range; a few tries on average
        n = rng.choice((2, 3, 3, 4))
        first = rng.choice(_OPENERS)
        # Distinct templates per review: no "I would not recommend it. I would not recommend it."
        trees = [first] + rng.sample([t for t in _TREES if t is not first], n - 1)
        tokens = [tok for tree in trees for tok in _sentence(rng, s, tree)]
        if 15 <= sum(t[0].isalpha() for t in tokens) <= 40:
            return _detokenize(tokens)


def generate_corpus(n: int, seed: int) -> list[str]:
    """``n`` reviews of random sentiment, identical for the same seed."""
    rng = random.Random(seed)
    return [generate_review(rng) for _ in range(n)]


def split_prompt(review: str, rng: random.Random) -> tuple[str, str]:
    """Cut a review after its first 2-4 words, all framing words; returns (prompt, continuation)."""
    words = review.split(" ")
    safe = 0  # length of the leading run of prompt-safe words within the first sentence
    for w in words:
        if not w or w.rstrip(",").lower() not in PROMPT_WORDS or w[-1] in ".!":
            break
        safe += 1
    # A prompt never ends on "a"/"an": the article is chosen by the next word, which may carry sentiment.
    cuts = [k for k in range(2, min(4, safe, len(words) - 1) + 1) if words[k - 1].lower() not in ("a", "an")]
    k = rng.choice(cuts) if cuts else 2  # generated reviews always have a cut (openers); other text: two words
    return " ".join(words[:k]), " " + " ".join(words[k:])


def is_grammatical(text: str) -> bool:
    """Whether ``text`` is a sequence of complete sentences the grammar generates (case-insensitive)."""
    symbols = []
    tokens = _TOKEN_RE.findall(text.lower())
    for tok in tokens:
        sym = _WORD_SYMBOL.get(tok)
        if sym is None:
            return False
        symbols.append(sym)
    if not symbols or _TEXT_RE.fullmatch("".join(symbols)) is None:
        return False
    # a/an agreement is not a category property, so it is checked on the words themselves.
    return all((tokens[i + 1][0] in _VOWELS) == (tok == "an") for i, tok in enumerate(tokens) if tok in ("a", "an"))
