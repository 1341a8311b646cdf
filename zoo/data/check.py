"""``zoo data check FILE-OR-CONFIG [overrides]``: a run's own data validation as a command, before a run.

It reads the data a ``zoo train`` with the same overrides would read (a file: ``data=local data.path=FILE``;
otherwise the data config's own ``data.path``, local or on the hub) and prints:

- how many rows fit each schema (pairs, unpaired, demonstrations, prompts), standard or conversational;
- the rows the run would refuse (or skip, with ``data.skip_bad_rows=true``) and why, by row and field;
- token lengths under the model's tokenizer against ``data.max_length``: prompts that fill it (refused)
  and sequences it truncates;
- duplicate rows and pairs whose two responses are identical.

The exit status is 1 when the run would refuse its data, 0 otherwise.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from zoo.data.collate import BATCH_KINDS
from zoo.data.formats import convert_rows
from zoo.data.load import UNPAIR_BATCH, is_local_file, is_paired, read_hub, read_rows, to_schema, tokenize_rows, unpair
from zoo.data.schema import DataError, validate_row

SHOWN = 10  # refused rows listed one by one; the rest are counted


def schema_counts(rows: list, source: str) -> dict[str, Counter]:
    """Per batch kind, how many rows fit it, split by format (standard text or conversational messages)."""
    counts = {}
    for kind in BATCH_KINDS:
        fits = Counter()
        for i, row in enumerate(to_schema(rows, kind)):
            try:
                validate_row(row, i, kind, source)
            except DataError:
                continue
            fits["conversational" if isinstance(row.get("prompt"), list) else "standard"] += 1
        counts[kind] = fits
    return counts


def refused_rows(rows: list, kind: str, source: str) -> dict[int, str]:
    """Row number -> why that row does not fit ``kind`` (paired data read for an unpaired loss: as pairs)."""
    if kind == "unpaired" and is_paired(rows):
        kind = "pairs"
    problems = {}
    for i, row in enumerate(to_schema(rows, kind)):
        try:
            validate_row(row, i, kind, source)
        except DataError as err:
            problems[i] = str(err)
    return problems


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def duplicates(rows: list) -> tuple[int, int]:
    """(rows that repeat an earlier row exactly, pairs whose chosen and rejected are the same)."""
    seen, repeated, identical = set(), 0, 0
    for row in rows:
        key = _key(row)
        repeated += key in seen
        seen.add(key)
        if isinstance(row, dict) and "chosen" in row and "rejected" in row and _key(row["chosen"]) == _key(row["rejected"]):
            identical += 1
    return repeated, identical


def length_summary(lengths: list[int]) -> str:
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"min {ordered[0]}, median {statistics.median(ordered):g}, p95 {p95}, max {ordered[-1]}"


def check(cfg) -> int:
    """Print the check of ``cfg``'s data; returns the exit status."""
    from zoo.models import model_tokenizer
    from zoo.run import data_kind_of

    data = cfg.data
    if not data.path:
        raise DataError(f"data={data.name} reads its rows from a stage a run builds (data.path is null); check a "
                        f"file (zoo data check FILE) or a data config with a path")
    loss_fn = instantiate(cfg.algo.loss)
    kind = data_kind_of(cfg, loss_fn)
    path = str(data.path)
    raw = read_rows(path) if is_local_file(path) else read_hub(path, data.split, data.subset, data.get("revision"))
    source = path if is_local_file(path) else f"{path} ({data.split})"
    rows, unconverted = convert_rows(raw, data.get("row_format"), source, skip_bad_rows=True)
    print(f"{source}: {len(raw)} rows; algo={cfg.algo.name} reads them as {kind}"
          + (f"; {unconverted} could not be converted (data.row_format={data.row_format})" if unconverted else ""))

    print("rows per schema:")
    for name, fits in schema_counts(rows, source).items():
        detail = ", ".join(f"{n} {form}" for form, n in sorted(fits.items())) or "none"
        print(f"  {name:15} {sum(fits.values()):>7}  ({detail})")

    problems = refused_rows(rows, kind, source)
    action = "skipped (data.skip_bad_rows=true)" if data.skip_bad_rows else "refused: the run stops at the first"
    print(f"rows the run cannot use: {len(problems) + unconverted}" + (f", {action}" if problems else ""))
    for problem in list(problems.values())[:SHOWN]:
        print(f"  {problem}")
    if len(problems) > SHOWN:
        print(f"  ... and {len(problems) - SHOWN} more")

    repeated, identical = duplicates(rows)
    print(f"duplicate rows: {repeated}; pairs with identical chosen and rejected: {identical}")

    read_as = "pairs" if kind == "unpaired" and is_paired(rows) else kind
    kept = [i for i in range(len(rows)) if i not in problems]  # the file's row numbers of the usable rows
    valid = [to_schema([rows[i]], read_as)[0] for i in kept]
    too_long = 0
    if valid and read_as != kind:  # pairs for an unpaired loss: each pair's two rows carry its row number
        try:
            valid = unpair(valid, source)  # per UNPAIR_BATCH pairs: their chosen rows, then their rejected ones
            kept = [i for start in range(0, len(kept), UNPAIR_BATCH) for _ in (0, 1)
                    for i in kept[start:start + UNPAIR_BATCH]]
        except DataError as err:  # the pairs cannot become one table of unpaired rows
            index, reason = str(err)[len(source) + len(": row "):].split(": ", 1)
            message = f"{source}: row {kept[int(index)]}: {reason}"  # the file's row number, not the usable rows'
            print(f"  {message}")
            problems[kept[int(index)]] = message
            valid = []
    if valid:
        tokenizer = model_tokenizer(cfg.model)
        tokens, _ = tokenize_rows(valid, kind, tokenizer, source, None, prepend_bos=loss_fn.prepend_bos)
        limit = data.max_length
        prompts = [len(t["prompt_ids"]) for t in tokens]
        totals = [len(t["prompt_ids"]) + max((len(v) for k, v in t.items() if k.endswith("_ids") and k != "prompt_ids"),
                                             default=0) for t in tokens]
        filled = sorted({kept[t["row"]] for t, n in zip(tokens, prompts) if limit and n >= limit})
        too_long = len(filled)
        truncated = sum(n > limit for n in totals) if limit else 0
        print(f"tokens ({cfg.model.name}'s tokenizer), data.max_length={limit}:")
        print(f"  prompt   {length_summary(prompts)}; {too_long} fill max_length (refused"
              + (f": rows {', '.join(map(str, filled[:SHOWN]))}{' ...' if too_long > SHOWN else ''})" if filled else ")"))
        print(f"  sequence {length_summary(totals)}; {truncated} longer than max_length (truncated)")
    refused = (bool(problems) or bool(too_long) or bool(unconverted)) and not data.skip_bad_rows
    print("verdict: " + ("the run would stop on this data" if refused else "the run can read this data"))
    return 1 if refused else 0


def main(argv: list[str]) -> int:
    from zoo.config import compose_train_config

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: zoo data check FILE-OR-CONFIG [overrides ...]\n\n" + __doc__)
        return 0
    target, *overrides = argv
    if "=" in target:  # a config: data=hub/imdb, algo=kto ...
        overrides = [target, *overrides]
    elif Path(target).suffix.lower() in (".json", ".jsonl", ".parquet"):
        overrides = ["data=local", f"data.path={Path(target).resolve()}", *overrides]
    else:
        raise DataError(f"{target}: neither a data file (.json, .jsonl, .parquet) nor an override (data=NAME ...)")
    cfg = compose_train_config(overrides)
    OmegaConf.resolve(cfg)
    return check(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
