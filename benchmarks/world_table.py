"""Summarise finished world runs (multirun sweep dirs or run dirs) as a markdown table, per algorithm.

    python benchmarks/world_table.py outputs/multirun/2026-11-27_20-00-00

Prints, per algorithm and feedback source, the per-seed numbers and their mean: gold reward (policy
vs reference), win rate vs the reference by gold and by the world's judge, KL to the reference,
fluency, mean length and train seconds. It reads only metrics.json files: it prints what the runs
measured ("-" where a run did not measure a value, e.g. runs from before the judge existed).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def _value(m: dict, key: str) -> float | None:
    v = m.get(key)
    return v["mean"] if isinstance(v, dict) else v


COLUMNS = [("gold", "gold_reward"), ("ref gold", "ref_gold_reward"), ("win rate", "win_rate_vs_ref"),
           ("judge win rate", "judge_win_rate_vs_ref"), ("KL (nats)", "kl_to_ref"), ("fluency", "fluency"),
           ("ref fluency", "ref_fluency"), ("length", "mean_length"), ("train s", "train_seconds")]


def _cell(x: float | None, name: str, bold: bool = False) -> str:
    if x is None:
        return "-"
    text = f"{x:.1f}" if name == "length" else f"{x:.0f}" if name == "train s" else f"{x:.3f}"
    return f"**{text}**" if bold and name not in ("length", "train s") else text


def main(dirs: list[str]) -> None:
    runs = defaultdict(list)
    for d in dirs:
        for path in sorted(Path(d).rglob("metrics.json")):
            m = json.loads(path.read_text())
            runs[(m["algo"], m.get("feedback", "gold"))].append(m)
    names = [name for name, _ in COLUMNS]
    print("| algo | feedback | seed | " + " | ".join(names) + " | status |")
    print("|" + "---|" * (len(names) + 4))
    for (algo, feedback), ms in runs.items():
        rows = []
        for m in sorted(ms, key=lambda m: m["seed"]):
            if m["status"] != "finished":
                print(f"| {algo} | {feedback} | {m['seed']} | " + " | ".join(["-"] * len(names)) + f" | {m['status']} |")
                continue
            row = [_value(m, key) for _, key in COLUMNS]
            rows.append(row)
            print(f"| {algo} | {feedback} | {m['seed']} | " + " | ".join(_cell(x, n) for x, n in zip(row, names))
                  + " | finished |")
        if len(rows) > 1:
            means = [statistics.mean(c) if None not in c else None for c in zip(*rows)]
            print(f"| **{algo}** | {feedback} | mean | " + " | ".join(_cell(x, n, True) for x, n in zip(means, names))
                  + " | |")


if __name__ == "__main__":
    main(sys.argv[1:])
