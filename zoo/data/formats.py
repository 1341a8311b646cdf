"""Converters from datasets' own row formats to zoo's standard schema (``data.row_format``), and the
prompt-prefix reader for text datasets used as prompts (``data.prompt_field``, ``data.prompt_prefix_tokens``).

Datasets already in TRL's formats (``prompt`` / ``chosen`` / ``rejected``, implicit prompts, ``messages``,
unpaired ``completion`` + ``label``) need no converter: the loader reads them as they are.

``hh_transcript``: Anthropic's HH-RLHF rows are two whole transcripts, ``chosen`` and ``rejected``, each a
run of ``"\\n\\nHuman: ..."`` and ``"\\n\\nAssistant: ..."`` turns that share everything up to the final
Assistant turn. They become a conversational pair: the prompt is the shared turns as messages (user,
assistant, user, ...), chosen and rejected the final assistant message of each.
"""

from __future__ import annotations

import random
import re

from zoo.data.schema import DataError

TURN = re.compile(r"\n\n(Human|Assistant): ?")
ROLES = {"Human": "user", "Assistant": "assistant"}


def transcript_messages(text: str) -> list[dict]:
    """The turns of one HH transcript as messages; ValueError says why a transcript is not one."""
    if not isinstance(text, str):
        raise ValueError(f"must be a transcript string, got {type(text).__name__}")
    parts = TURN.split(text)  # [text before the first turn, speaker, body, speaker, body, ...]
    if parts[0].strip():
        raise ValueError(f"has text before its first '\\n\\nHuman:' turn ({parts[0].strip()[:60]!r})")
    messages = [{"role": ROLES[speaker], "content": body.strip()} for speaker, body in zip(parts[1::2], parts[2::2])]
    if not messages or messages[0]["role"] != "user" or messages[-1]["role"] != "assistant":
        raise ValueError("must start with a Human turn and end with an Assistant turn")
    return messages


def hh_transcript(row: dict) -> dict:
    """One HH-RLHF row (``chosen``, ``rejected`` transcripts) -> ``prompt`` / ``chosen`` / ``rejected``
    messages; other fields are kept. ValueError names the field that cannot be converted."""
    turns = {}
    for side in ("chosen", "rejected"):
        if side not in row:
            raise ValueError(f"field '{side}' is missing (an HH-RLHF row has chosen and rejected transcripts)")
        try:
            turns[side] = transcript_messages(row[side])
        except ValueError as err:
            raise ValueError(f"field '{side}' {err}") from None
    if turns["chosen"][:-1] != turns["rejected"][:-1]:
        raise ValueError("fields 'chosen' and 'rejected' differ before their final Assistant turn, so they do not "
                         "answer the same conversation")
    return {**row, "prompt": turns["chosen"][:-1], "chosen": turns["chosen"][-1:], "rejected": turns["rejected"][-1:]}


ROW_FORMATS = {"hh_transcript": hh_transcript}


def convert_rows(rows: list, row_format: str | None, source: str, skip_bad_rows: bool = False) -> tuple[list, int]:
    """``rows`` in the standard schema (unchanged without a ``row_format``), and how many were skipped: a row
    that cannot be converted is an error naming the source, row and field, or skipped when asked."""
    if row_format is None:
        return rows, 0
    if row_format not in ROW_FORMATS:
        raise ValueError(f"data.row_format={row_format!r} is not one of {', '.join(ROW_FORMATS)} (or null)")
    convert, out, skipped = ROW_FORMATS[row_format], [], 0
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"is a {type(row).__name__}, not an object")
            out.append(convert(row))
        except ValueError as err:
            if not skip_bad_rows:
                raise DataError(f"{source}: row {i}: {err} (data.row_format={row_format}; "
                                f"data.skip_bad_rows=true skips such rows)") from None
            skipped += 1
    return out, skipped


def clean_review(text: str) -> str:
    """An IMDb review as plain text: its HTML line breaks as spaces, runs of whitespace as one."""
    return " ".join(text.replace("<br />", " ").replace("<br/>", " ").split())


def prefix_prompts(texts: list[str], tokenizer, low: int, high: int, seed: int | str = 0) -> list[str]:
    """The first n tokens of each text (special tokens aside), n drawn uniformly from [low, high] per row with
    ``seed`` (the DPO paper's IMDb prompts: review prefixes of 2-8 tokens), decoded back to text; a cut
    inside a multi-byte character takes the character whole (a few more tokens)."""
    if not 1 <= low <= high:
        raise ValueError(f"data.prompt_prefix_tokens must be [low, high] with 1 <= low <= high, got [{low}, {high}]")
    rng = random.Random(seed)
    prompts = []
    for text in texts:
        n = rng.randint(low, high)
        ids = tokenizer(clean_review(text), add_special_tokens=False)["input_ids"]
        prefix = tokenizer.decode(ids[:n])
        while prefix.endswith("\ufffd") and n < len(ids):  # a byte-level cut inside a character: take it whole
            n += 1
            prefix = tokenizer.decode(ids[:n])
        prompts.append(prefix)
    return prompts
