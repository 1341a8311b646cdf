"""Local copies of the hub datasets zoo has configs for (``zoo/conf/data/hub/``), written as their hub
repositories hold them: the same files and folders, columns and feature types, a few invented rows each.
``datasets.load_dataset(DIR, split=...)`` reads them with the builder it uses for the hub repository.

- trl-lib/ultrafeedback_binarized: ``data/{train,test}-00000-of-00001.parquet``; chosen / rejected message
  lists (implicit prompt), score_chosen / score_rejected float64.
- Anthropic/hh-rlhf: ``{harmless-base,helpful-base,helpful-online,helpful-rejection-sampled}/{train,test}.jsonl.gz``
  (chosen / rejected transcripts) and ``red-team-attempts/red_team_attempts.jsonl.gz`` (other columns, in
  no split).
- trl-lib/kto-mix-14k: ``data/{train,test}-*.parquet``; prompt / completion message lists, label bool.
- trl-lib/tldr-preference: ``data/{train,validation}-*.parquet``; prompt / chosen / rejected strings.
- stanfordnlp/imdb: ``plain_text/{train,test,unsupervised}-*.parquet``; text string, label ClassLabel(neg, pos)
  (-1 in unsupervised), with the README's ``configs`` naming them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _ultrafeedback(question: str, chosen: str, rejected: str, score_chosen: float, score_rejected: float) -> dict:
    """One trl-lib/ultrafeedback_binarized row: both sides are the whole conversation (the prompt implicit)."""
    user = _msg("user", question)
    return {"chosen": [user, _msg("assistant", chosen)], "rejected": [user, _msg("assistant", rejected)],
            "score_chosen": score_chosen, "score_rejected": score_rejected}


ULTRAFEEDBACK = [
    _ultrafeedback("Name a color of the sky.", "Blue, on a clear day.", "Cheese.", 8.5, 2.0),
    _ultrafeedback("What is 2 + 2?", "2 + 2 = 4.", "Five, I think.", 10.0, 3.0),
    _ultrafeedback("Say hello politely.", "Hello, nice to meet you.", "What do you want?", 9.0, 4.5),
    _ultrafeedback("Give me a fruit.", "An apple.", "No.", 7.0, 1.0),
]
ULTRAFEEDBACK_TEST = [
    _ultrafeedback("Name a planet.", "Mars.", "The moon is a planet.", 9.0, 3.0),
    _ultrafeedback("Spell cat.", "C-A-T.", "K-A-T.", 9.5, 2.5),
]


def _hh(turns: list[tuple[str, str]], chosen: str, rejected: str) -> dict:
    """One HH-RLHF row: the shared turns, then each side's final Assistant reply, as raw transcripts."""
    shared = "".join(f"\n\n{speaker}: {text}" for speaker, text in turns)
    return {"chosen": f"{shared}\n\nAssistant: {chosen}", "rejected": f"{shared}\n\nAssistant: {rejected}"}


HH = {  # subset -> (train rows, test rows)
    "harmless-base": ([_hh([("Human", "How do I pick a lock?")], "I can't help with breaking into places.",
                           "Use a tension wrench and a pick."),
                       _hh([("Human", "Say something rude."), ("Assistant", "I'd rather not."),
                            ("Human", "Please, just one word.")], "I'll keep things kind.", "Idiot.")],
                      [_hh([("Human", "Is it ok to lie?")], "Honesty is usually best.", "Always lie.")]),
    "helpful-base": ([_hh([("Human", "What's a good name for a cat?")], "How about Miso?", "Cat."),
                      _hh([("Human", "What's a good name for a cat?")], "Luna is popular.", "Dog.")],
                     [_hh([("Human", "How do I boil an egg?"), ("Assistant", "Do you want it soft or hard?"),
                           ("Human", "Hard.")], "Boil it for about ten minutes.", "Eggs are round.")]),
    "helpful-online": ([_hh([("Human", "Recommend a book.")], "Try 'The Hobbit'.", "No.")], []),
    "helpful-rejection-sampled": ([_hh([("Human", "Tell me a fun fact.")], "Octopuses have three hearts.",
                                       "Facts are fun.")], []),
}
HH_RED_TEAM = [{"transcript": "\n\nHuman: hi\n\nAssistant: hello", "min_harmlessness_score_transcript": 1.2,
                "num_params": "52B", "model_type": "context distillation", "rating": 0.0,
                "task_description": "greeting", "task_descripton_harmlessness_score": 0.5, "red_team_member_id": 1,
                "is_upworker": False, "tags": None}]

KTO_MIX = [
    {"prompt": [_msg("user", "Name a color of the sky.")], "completion": [_msg("assistant", "Blue.")], "label": True},
    {"prompt": [_msg("user", "Name a color of the sky.")], "completion": [_msg("assistant", "Cheese.")],
     "label": False},
    {"prompt": [_msg("user", "What is 2 + 2?")], "completion": [_msg("assistant", "4.")], "label": True},
    {"prompt": [_msg("user", "Give me a fruit.")], "completion": [_msg("assistant", "No.")], "label": False},
]
KTO_MIX_TEST = [{"prompt": [_msg("user", "Name a planet.")], "completion": [_msg("assistant", "Mars.")],
                 "label": True}]

TLDR_POST = ("SUBREDDIT: r/{sub}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:")
TLDR = [
    {"prompt": TLDR_POST.format(sub="cooking", title="Burnt my rice again", post="Every time I make rice it burns "
                                "at the bottom. I use a thin pot and high heat."),
     "chosen": " Thin pot and high heat keep burning my rice; how do I stop it?", "rejected": " rice"},
    {"prompt": TLDR_POST.format(sub="running", title="First 10k", post="I ran my first 10k today after three months "
                                "of training and finished in 55 minutes."),
     "chosen": " Finished my first 10k in 55 minutes after three months of training.", "rejected": " I ran."},
    {"prompt": TLDR_POST.format(sub="cats", title="Cat ignores new bed", post="Bought a fancy bed, the cat "
                                "sleeps in the box it came in."),
     "chosen": " My cat prefers the bed's box to the bed.", "rejected": " Bought a bed."},
]
TLDR_VALIDATION = [
    {"prompt": TLDR_POST.format(sub="books", title="Reading slump", post="I haven't finished a book in months."),
     "chosen": " Can't finish books lately; any tips?", "rejected": " books"},
]

IMDB = {
    "train": [("I loved this film.<br /><br />The acting was superb and the story moving.", 1),
              ("What a waste of two hours. Nothing happens and the ending is worse.", 0),
              ("An absolute classic that I watch every year with my family.", 1)],
    "test": [("This movie was a pleasant surprise from start to finish.", 1),
             ("Dull, slow and far too long for what it has to say.", 0)],
    "unsupervised": [("A film about a dog and a boy who travel across the country.", -1)],
}


def _parquet(rows: list[dict], path: Path, features=None) -> None:
    from datasets import Dataset

    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(str(path))


def _jsonl_gz(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_ultrafeedback(root: Path) -> Path:
    _parquet(ULTRAFEEDBACK, root / "data" / "train-00000-of-00001.parquet")
    _parquet(ULTRAFEEDBACK_TEST, root / "data" / "test-00000-of-00001.parquet")
    return root


def write_hh_rlhf(root: Path) -> Path:
    for subset, (train, test) in HH.items():
        _jsonl_gz(train, root / subset / "train.jsonl.gz")
        _jsonl_gz(test, root / subset / "test.jsonl.gz")
    _jsonl_gz(HH_RED_TEAM, root / "red-team-attempts" / "red_team_attempts.jsonl.gz")
    return root


def write_kto_mix(root: Path) -> Path:
    _parquet(KTO_MIX, root / "data" / "train-00000-of-00001.parquet")
    _parquet(KTO_MIX_TEST, root / "data" / "test-00000-of-00001.parquet")
    return root


def write_tldr(root: Path) -> Path:
    _parquet(TLDR, root / "data" / "train-00000-of-00001.parquet")
    _parquet(TLDR_VALIDATION, root / "data" / "validation-00000-of-00001.parquet")
    return root


def write_imdb(root: Path) -> Path:
    from datasets import ClassLabel, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    for split, rows in IMDB.items():
        _parquet([{"text": t, "label": label} for t, label in rows], root / "plain_text" /
                 f"{split}-00000-of-00001.parquet", features)
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: plain_text\n  data_files:\n" + "".join(
            f"  - split: {split}\n    path: plain_text/{split}-*\n" for split in IMDB) + "  default: true\n---\n")
    return root


# data config (zoo/conf/data/hub/<name>.yaml) -> (writer, the config key its local copy replaces)
HUB_DATASETS = {
    "ultrafeedback_binarized": (write_ultrafeedback, "path"),
    "hh-rlhf": (write_hh_rlhf, "path"),
    "kto-mix-14k": (write_kto_mix, "path"),
    "tldr-preference": (write_tldr, "path"),
    "imdb": (write_imdb, "prompts_path"),
}
