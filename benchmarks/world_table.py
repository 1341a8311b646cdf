"""Summarise finished world runs (multirun sweep dirs or run dirs) as a markdown table, per algorithm.

    python benchmarks/world_table.py outputs/multirun/2026-11-27_20-00-00

Prints, per algorithm, the per-seed numbers and their mean: gold reward (policy vs reference),
win rate vs the reference, KL to the reference, fluency, mean length and train seconds. It reads
only metrics.json files: it prints what the runs measured.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(dirs: list[str]) -> None:
    runs = defaultdict(list)
    for d in dirs:
        for path in sorted(Path(d).rglob("metrics.json")):
            m = json.loads(path.read_text())
            runs[m["algo"]].append(m)
    cols = ["seed", "gold", "ref gold", "win rate", "KL (nats)", "fluency", "ref fluency", "length", "train s", "status"]
    print("| algo | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for algo, ms in runs.items():
        rows = []
        for m in sorted(ms, key=lambda m: m["seed"]):
            if m["status"] != "finished":
                print(f"| {algo} | {m['seed']} | " + " | ".join(["-"] * (len(cols) - 2)) + f" | {m['status']} |")
                continue
            row = [m["gold_reward"]["mean"], m["ref_gold_reward"]["mean"], m["win_rate_vs_ref"],
                   m["kl_to_ref"]["mean"], m["fluency"], m["ref_fluency"], m["mean_length"], m["train_seconds"]]
            rows.append(row)
            print(f"| {algo} | {m['seed']} | " + " | ".join(f"{x:.3f}" for x in row[:6])
                  + f" | {row[6]:.1f} | {row[7]:.0f} | finished |")
        if len(rows) > 1:
            means = [statistics.mean(c) for c in zip(*rows)]
            print(f"| **{algo}** | mean | " + " | ".join(f"**{x:.3f}**" for x in means[:6])
                  + f" | {means[6]:.1f} | {means[7]:.0f} | |")


if __name__ == "__main__":
    main(sys.argv[1:])
