"""``zoo label``: label pairs with any feedback source into a paired preference dataset on disk.

    zoo label feedback=judge                       # the world's reference samples, judged
    zoo label feedback=llm_judge --input pairs.jsonl --out judged.jsonl
    zoo label feedback=gold data.max_rows=...      # any other Hydra override of `zoo train`

Without ``--input`` the pairs are the cached samples stage (two samples per prompt of
``data.prompts_path`` from the reference); with it, any JSON/JSONL/Parquet file of rows with ``prompt``
and either ``first``/``second`` or ``chosen``/``rejected`` (relabelled). The result is the cached label
stage (``prompt``, ``chosen``, ``rejected``, ``confidence``), so labelling the same pairs with the same
feedback twice costs nothing; ``--out`` also copies it to a path of your choice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from zoo.config import compose_train_config
from zoo.data.schema import DataError
from zoo.stages import prepare


def label(overrides: list[str], input_path: str | None = None, out: str | None = None) -> tuple[Path, dict]:
    """Label ``input_path`` (or the reference's samples) with the composed config's feedback; returns
    (the labelled pairs file, what the label stage measured)."""
    cfg = compose_train_config(overrides)
    if input_path is None:
        if not cfg.data.prompts_path:
            raise DataError(f"data={cfg.data.name} has no prompts to sample pairs for: pass --input FILE")
        labelled = prepare(cfg, ["samples", "labels"]).labels
    else:
        if not Path(input_path).is_file():
            raise FileNotFoundError(f"--input {input_path}: no such file")
        labelled = prepare(cfg, ["labels"], unlabelled=Path(input_path)).labels
    info = labelled.info
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(labelled.path, out)
    return Path(out) if out else labelled.path, info


def main(argv: list[str]) -> None:
    from zoo.cli_help import Parser

    parser = Parser(prog="zoo label", description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="pairs to label (default: two reference samples per data.prompts_path prompt)")
    parser.add_argument("--out", help="also copy the labelled pairs here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for zoo train (feedback=judge ...)")
    args = parser.parse_args(argv)
    path, info = label(args.overrides, args.input, args.out)
    shown = {k: v for k, v in info.items() if k not in ("stage", "key")}
    print(f"[zoo] labelled pairs: {path}\n" + json.dumps(shown, indent=2))
