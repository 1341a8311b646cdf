"""The reviews task's prompts: the world's review openings as one-turn chat requests.

``python -m zoo.reviews.prompts`` rewrites ``zoo/reviews/assets/*.jsonl`` from the world's prompt files;
a test checks the committed files are what this writes. The openings are the world's (synthetic, 2-8
words, of every sentiment), so the two tasks share their prompts and differ in model and text.

Why chat requests and not raw continuations: SmolLM2-135M-Instruct is used as it was tuned, through its
chat template, and asked this way its replies were as often negative as positive (measured on 24
openings: mean VADER 0.13, 37% below zero, against 0.36 and 21% for a bare "Continue this movie
review:"), which leaves a method room to move the reward both ways.
"""

from __future__ import annotations

import json
from pathlib import Path

from zoo.world import paths

ASSETS = Path(__file__).parent / "assets"
INSTRUCTION = 'Write the rest of this movie review in one or two sentences: "{opening}"'
# (asset, the world's prompt file): the training prompts (the preference stage samples pairs for them; 968
# distinct openings) and the held-out evaluation prompts (340), never overlapping
FILES = (("prompts.jsonl", paths.DATA / "preference_prompts.jsonl"),
         ("eval_prompts.jsonl", paths.DATA / "eval_prompts.jsonl"))


def request(opening: str) -> list[dict]:
    """One conversational prompt: a user turn asking for the rest of the review that opens with ``opening``."""
    return [{"role": "user", "content": INSTRUCTION.format(opening=opening)}]


def build() -> dict[str, list[dict]]:
    """Each asset's rows: distinct openings in their first order, none of the eval ones among the training ones."""
    openings = {name: list(dict.fromkeys(json.loads(line)["prompt"] for line in source.read_text().splitlines()))
                for name, source in FILES}
    held_out = set(openings["eval_prompts.jsonl"])
    openings["prompts.jsonl"] = [o for o in openings["prompts.jsonl"] if o not in held_out]
    return {name: [{"prompt": request(o), "opening": o} for o in rows] for name, rows in openings.items()}


def write(directory: Path = ASSETS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in build().items():
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} prompts to {directory / name}")


if __name__ == "__main__":
    write()
