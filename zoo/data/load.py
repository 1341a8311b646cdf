"""Reading datasets from the world, local files or the hub into validated rows of one schema.

Local JSON/JSONL files are parsed here line by line (rather than through Arrow) so a malformed row is
reported with its file and row number instead of an Arrow type error; Parquet files and hub ids go
through ``datasets``. Rows are then converted to the schema the loss consumes: an implicit prompt is
split off with ``trl.data_utils.extract_prompt``; ``messages`` become prompt + final turn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from zoo.data.formats import convert_rows
from zoo.data.schema import DataError, validate_row, validate_rows
from zoo.data.collate import BATCH_KINDS
from zoo.data.tokenize import PreTokenized, standard_texts


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
    blob = path.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as err:
        line = blob[:err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text (byte {err.start}: {err.reason})") from None
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


def read_hub(name: str, split: str, subset: str | None, revision: str | None = None) -> list[dict]:
    """Rows of one split of a hub dataset, read with ``datasets.load_dataset``: a hub id, or a local copy of a
    hub repository (its files as the hub has them, e.g. ``data/train-00000-of-00001.parquet`` or
    ``harmless-base/train.jsonl.gz``, read by the same builder); a directory written by
    ``Dataset.save_to_disk`` is read with ``load_from_disk``."""
    import datasets

    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        ds = datasets.load_from_disk(name)
        return (ds[split] if isinstance(ds, datasets.DatasetDict) else ds).to_list()
    try:
        return datasets.load_dataset(name, subset, split=split, revision=revision).to_list()
    except ValueError as err:
        if "split" in str(err).lower():  # "Unknown split": name the splits it has
            raise DataError(f"{name}: no split '{split}' (data.split / data.eval_split): {err}") from None
        raise


def is_local_file(path: str | Path) -> bool:
    """A local data file (read by ``read_rows``), rather than a hub id or a dataset directory."""
    p = Path(path)
    return p.is_file() or p.suffix.lower() in (".json", ".jsonl", ".parquet")


def read_source(data, path: str, split: str | None = None, convert: bool = True) -> tuple[list, int]:
    """Rows of ``path`` (a local file, or ``split`` of a hub dataset: default ``data.split``) in the standard
    schema's field names (``data.row_format``, unless ``convert`` is off: a file a stage wrote), and how many
    could not be converted (``data.skip_bad_rows``)."""
    if is_local_file(path):
        rows, source = read_rows(path), str(path)
    else:
        split = split or data.split
        rows, source = read_hub(path, split, data.subset, data.get("revision")), f"{path} ({split})"
    return convert_rows(rows, data.get("row_format") if convert else None, source, data.skip_bad_rows)


def to_schema(rows: list[dict], kind: str) -> list[dict]:
    """Convert rows to ``kind`` where the meaning is unambiguous (implicit prompts, messages, pairs -> demos)."""
    out = []
    for row in rows:
        if not isinstance(row, dict):
            out.append(row)  # validation reports it with its row number
            continue
        implicit_prompt = "prompt" not in row and "chosen" in row and "rejected" in row
        if kind in ("pairs", "demonstrations", "prompts") and implicit_prompt:
            if isinstance(row["chosen"], (str, list)) and isinstance(row["rejected"], (str, list)):
                from trl.data_utils import extract_prompt  # imported where needed: trl and datasets cost 0.5 s

                try:
                    row = {**row, **extract_prompt(row)}
                except Exception:  # noqa: BLE001 - no shared prompt to find (empty or unlike responses):
                    pass  # the row stays without one, and validation names the missing field
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


UNPAIR_BATCH = 1000  # the map batch of TRL's unpair_preference_dataset (datasets' default), which sets row order


def unpair(rows: list[dict], source: str = "rows") -> list[dict]:
    """Paired rows -> unpaired ones in the order and form of TRL's ``unpair_preference_dataset`` (a
    ``datasets`` map of 1,000 pairs at a time), so zoo's KTO sees the rows TRL's KTOTrainer sees: per 1,000
    pairs, every (prompt, chosen, label=True) row, then every (prompt, rejected, label=False) row; other
    fields are kept, the columns being the first row's, as in an Arrow table. Done here rather than through
    ``datasets`` and ``trl``, whose import is half a second of every KTO run's start (tested equal to TRL's).
    Every row's prompt, chosen and rejected must be of the first row's kind (strings or messages), as one
    Arrow column is."""
    columns = list(rows[0]) if rows else []
    for i, row in enumerate(rows):
        for key in ("prompt", "chosen", "rejected"):
            if key in rows[0] and isinstance(row.get(key), str) != isinstance(rows[0][key], str):
                kinds = {True: "a string", False: "a list of messages"}
                raise DataError(f"{source}: row {i}: field '{key}' is {kinds[isinstance(row.get(key), str)]} where "
                                f"row 0's is {kinds[isinstance(rows[0][key], str)]}: the pairs cannot be unpaired as "
                                f"one table (every row needs the same field types: strings, or lists of messages)")
    extra = [k for k in columns if k not in ("chosen", "rejected", "prompt")]
    out = []
    for start in range(0, len(rows), UNPAIR_BATCH):
        batch = rows[start:start + UNPAIR_BATCH]
        for side, label in (("chosen", True), ("rejected", False)):
            for row in batch:
                unpaired = {"completion": row[side], "label": label}
                if "prompt" in columns:
                    unpaired["prompt"] = row.get("prompt")
                out.append({**unpaired, **{k: row.get(k) for k in extra}})
    return out


def load_rows(kind: str, source: str, rows: list[dict], skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Convert and validate ``rows`` (from ``source``) for ``kind``; returns (rows, number skipped).

    Paired data for an unpaired loss is validated as pairs (so errors name the file's own rows) and
    then unpaired."""
    if kind == "unpaired" and is_paired(rows):
        pairs, skipped = validate_rows(to_schema(rows, "pairs"), "pairs", source, skip_bad_rows)
        return unpair(pairs, source), skipped
    return validate_rows(to_schema(rows, kind), kind, source, skip_bad_rows)


def tokenize_rows(rows: list[dict], kind: str, tokenizer, source: str, max_length: int | None,
                  skip_bad_rows: bool = False, prepend_bos: bool = False) -> tuple[list[dict], int]:
    """Token ids per row (with ``row``, its index in ``rows``, so skipped rows stay traceable); a prompt
    that fills ``max_length`` leaves nothing to learn and is an error (or skipped and counted).
    ``prepend_bos``: the loss's declaration (``zoo.data.tokenize``)."""
    out, skipped = [], 0
    tokenize = BATCH_KINDS[kind].tokenize
    tokenizer = PreTokenized(tokenizer, (text for row in rows for text in standard_texts(tokenizer, row)))
    for i, row in enumerate(rows):
        item = {"row": i, **tokenize(tokenizer, row, prepend_bos)}
        prompt_ids = item["prompt_ids"]
        if max_length is not None and len(prompt_ids) >= max_length:
            if skip_bad_rows:
                skipped += 1
                continue
            raise DataError(f"{source}: row {i}: field 'prompt' is {len(prompt_ids)} tokens, which fills "
                            f"data.max_length={max_length} and leaves no room for the completion; raise "
                            f"data.max_length or set data.skip_bad_rows=true")
        out.append(item)
    return out, skipped


def prompt_key(prompt) -> str:
    """A hashable identity for a prompt (a string or a list of messages)."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def split_by_prompt(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows): a seeded ``fraction`` of the distinct prompts, with every row of each,
    is held out, so the halves of a pair (and a prompt's desirable and undesirable rows) never land on
    both sides. At least one prompt is held out and at least one kept; both keep the file's row order."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.eval_fraction must lie in (0, 1), got {fraction}")
    prompts = list(dict.fromkeys(prompt_key(r["prompt"]) for r in rows))  # distinct, in file order
    if len(prompts) < 2:
        raise DataError(f"data.eval_fraction={fraction} splits by prompt, but the data has {len(prompts)} distinct "
                        f"prompt(s); set data.eval_path=FILE instead")
    held_count = min(len(prompts) - 1, max(1, round(fraction * len(prompts))))
    held = set(random.Random(seed).sample(prompts, held_count))
    train = [r for r in rows if prompt_key(r["prompt"]) not in held]
    return train, [r for r in rows if prompt_key(r["prompt"]) in held]


def read_eval_prompts(path: str | Path) -> list:
    """The prompts of an evaluation file: rows of any schema with a ``prompt`` field, errors naming the row."""
    prompts = []
    for i, row in enumerate(read_rows(path)):
        validate_row(row, i, "prompts", str(path))  # names the file, the row and the field
        prompts.append(row["prompt"])
    if not prompts:
        raise DataError(f"{path}: the evaluation file is empty")
    return prompts
