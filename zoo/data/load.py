"""Reading datasets from the world, local files or the hub into validated rows of one schema.

Local JSON/JSONL files are parsed here line by line (rather than through Arrow) so a malformed row is
reported with its file and row number instead of an Arrow type error; Parquet files and hub ids go
through ``datasets``. Rows are then converted to the schema the loss consumes: an implicit prompt is
split off with ``trl.data_utils.extract_prompt``; ``messages`` become prompt + final turn.
"""

from __future__ import annotations

import json
from pathlib import Path

from trl.data_utils import extract_prompt

from zoo.data.schema import DataError, validate_rows
from zoo.data.tokenize import tokenize_completion, tokenize_pair, tokenize_prompt


def read_rows(path: str | Path) -> list[dict]:
    """Rows of a local .json / .jsonl / .parquet file; bad JSON is reported with its line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import datasets

        return datasets.load_dataset("parquet", data_files=str(path), split="train").to_list()
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .json, .jsonl or .parquet)")
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: row {len(rows)} (line {lineno}) is not valid JSON: {err.msg}") from None
    return rows


def read_hub(name: str, split: str, subset: str | None) -> list[dict]:
    """Rows of a ``datasets.load_dataset`` id (a hub id or a local dataset dir saved in hub format)."""
    import datasets

    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        return (ds[split] if isinstance(ds, datasets.DatasetDict) else ds).to_list()
    return datasets.load_dataset(name, subset, split=split).to_list()


def to_schema(rows: list[dict], kind: str) -> list[dict]:
    """Convert rows to ``kind`` where the meaning is unambiguous (implicit prompts, messages, pairs -> demos)."""
    out = []
    for row in rows:
        if not isinstance(row, dict):
            out.append(row)  # validation reports it with its row number
            continue
        if kind in ("pairs", "demonstrations") and "prompt" not in row and "chosen" in row and "rejected" in row:
            if isinstance(row["chosen"], (str, list)) and isinstance(row["rejected"], (str, list)):
                row = {**row, **extract_prompt(row)}
        if kind == "demonstrations" and "completion" not in row:
            if "messages" in row and isinstance(row["messages"], list) and row["messages"]:
                row = {**row, "prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
            elif "chosen" in row:  # SFT on preference data trains on the chosen responses
                row = {**row, "completion": row["chosen"]}
        out.append(row)
    return out


def is_paired(rows: list) -> bool:
    """True when the first row is a preference pair (has ``chosen`` and ``rejected``)."""
    return bool(rows) and isinstance(rows[0], dict) and "chosen" in rows[0] and "rejected" in rows[0]


def unpair(rows: list[dict]) -> list[dict]:
    """Paired rows -> unpaired ones (TRL's ``unpair_preference_dataset``, row by row): each pair gives
    (prompt, chosen, label=True) then (prompt, rejected, label=False); other fields are kept."""
    out = []
    for row in rows:
        rest = {k: v for k, v in row.items() if k not in ("chosen", "rejected")}
        out.append({**rest, "completion": row["chosen"], "label": True})
        out.append({**rest, "completion": row["rejected"], "label": False})
    return out


def load_rows(kind: str, source: str, rows: list[dict], skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Convert and validate ``rows`` (from ``source``) for ``kind``; returns (rows, number skipped).

    Paired data for an unpaired loss is validated as pairs (so errors name the file's own rows) and
    then unpaired."""
    if kind == "unpaired" and is_paired(rows):
        pairs, skipped = validate_rows(to_schema(rows, "pairs"), "pairs", source, skip_bad_rows)
        return unpair(pairs), skipped
    return validate_rows(to_schema(rows, kind), kind, source, skip_bad_rows)


def tokenize_rows(rows: list[dict], kind: str, tokenizer, source: str, max_length: int | None,
                  skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Token ids per row (with ``row``, its index in ``rows``, so skipped rows stay traceable); a prompt
    that fills ``max_length`` leaves nothing to learn and is an error (or skipped and counted)."""
    out, skipped = [], 0
    for i, row in enumerate(rows):
        if kind == "pairs":
            prompt_ids, chosen_ids, rejected_ids = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
            item = {"row": i, "prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
        elif kind == "prompts":  # online losses: the completion is sampled during training
            prompt_ids = tokenize_prompt(tokenizer, row["prompt"])
            item = {"row": i, "prompt_ids": prompt_ids}
        else:  # demonstrations, and unpaired rows (the same plus their label)
            prompt_ids, completion_ids = tokenize_completion(tokenizer, row["prompt"], row["completion"])
            item = {"row": i, "prompt_ids": prompt_ids, "completion_ids": completion_ids}
            if kind == "unpaired":
                item["label"] = row["label"]
        if max_length is not None and len(prompt_ids) >= max_length:
            if skip_bad_rows:
                skipped += 1
                continue
            raise DataError(f"{source}: row {i}: field 'prompt' is {len(prompt_ids)} tokens, which fills "
                            f"data.max_length={max_length} and leaves no room for the completion; raise "
                            f"data.max_length or set data.skip_bad_rows=true")
        out.append(item)
    return out, skipped
