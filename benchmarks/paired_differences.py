"""Which gaps between two trained runs are larger than the evaluation's noise: paired differences over prompts.

    python benchmarks/paired_differences.py results/smollm2                 # gold reward, every pair of runs
    python benchmarks/paired_differences.py results/smollm2 --metric kl
    python benchmarks/paired_differences.py results/smollm2 --against-reference   # each run's gain, per scorer

Every run of a ``zoo compare`` wrote one sample per eval prompt to its ``samples.jsonl`` with the sample's
gold reward and its KL estimate. Two runs evaluated on the same prompts can be compared prompt by prompt:
the mean of the per-prompt differences, with a 95% normal interval (1.96 standard errors of that mean), is
tighter than comparing the two runs' own intervals because prompt difficulty cancels. It answers "on these
prompts, does this trained policy score higher than that one?". It does not answer "does the method beat
the other?": one training seed per method says nothing about the spread between seeds, which on the world
was as large as the gaps between methods (docs/comparison.md). Best-of-N's samples.jsonl holds one draw of
its selection, not its expectation, so it is left out. Nothing is estimated beyond what the files hold.

``--against-reference`` pairs each run with its own reference replies instead (``ref_completion``, sampled
for the same prompts): the gold gain, and the gain by each held-out scorer of the run's task (its
``data.metrics``' ``other_rewards``, recomputed on the saved texts: TextBlob on the reviews task).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from zoo.evaluate import normal_ci_over_prompts

METRICS = {"gold": "gold_reward", "kl": "kl", "length": "length"}


def per_prompt(run_dir: Path, key: str) -> dict[str, float]:
    """{prompt (as JSON): value} for one run's samples.jsonl."""
    values = {}
    for line in (run_dir / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row:
            values[json.dumps(row["prompt"], sort_keys=True)] = float(row[key])
    return values


def paired(a: dict, b: dict) -> tuple[float, float, int]:
    """(mean of a - b over their shared prompts, half-width of its 95% normal interval, number of prompts):
    the evaluation's own interval over prompts (``zoo.evaluate.normal_ci_over_prompts``) of the differences."""
    diffs = [a[p] - b[p] for p in sorted(a.keys() & b.keys())]
    if len(diffs) < 2:
        raise ValueError(f"only {len(diffs)} shared prompt(s): the runs were not evaluated on the same prompts")
    ci = normal_ci_over_prompts(diffs)
    return ci["mean"], ci["ci95_high"] - ci["mean"], ci["n"]


def trained_runs(root: Path) -> dict[str, Path]:
    """{"algo/feedback[ tag] seed S": run dir} of every finished trained run under ``root`` (not best-of-N)."""
    runs = {}
    for metrics_path in sorted(root.rglob("metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        if metrics.get("status") != "finished" or "kl_bound" in metrics or metrics.get("algo") == "reward":
            continue
        if not (metrics_path.parent / "samples.jsonl").exists():
            continue
        tag = f" {metrics['tag']}" if metrics.get("tag") else ""
        runs[f"{metrics['algo']}/{metrics['feedback']}{tag} seed {metrics.get('seed')}"] = metrics_path.parent
    return runs


def gains_against_reference(run_dir: Path) -> dict[str, tuple[float, float, int]]:
    """{"gold": paired gain, NAME: paired gain by each held-out scorer}: the run's reply minus its reference
    reply, prompt by prompt (mean, 95% half-width, prompts)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    gains = {"gold": paired(dict(enumerate(row["gold_reward"] for row in rows)),
                            dict(enumerate(row["ref_gold_reward"] for row in rows)))}
    metrics_cfg = OmegaConf.load(run_dir / "config.yaml").data.get("metrics")
    task = instantiate(metrics_cfg) if metrics_cfg is not None else None
    if hasattr(task, "other_rewards"):
        mine = task.other_rewards([row["completion"] for row in rows])
        theirs = task.other_rewards([row["ref_completion"] for row in rows])
        for name in mine:
            gains[name] = paired(dict(enumerate(mine[name])), dict(enumerate(theirs[name])))
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a zoo compare output dir (results/smollm2)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="gold")
    parser.add_argument("--against-reference", action="store_true",
                        help="each run against its own reference replies: gold and held-out scorers' gains")
    args = parser.parse_args()
    runs = trained_runs(args.root)
    if args.against_reference:
        print("| run | gain over its reference replies (95% over prompts) | prompts |")
        print("|---|---|---|")
        for name, path in runs.items():
            gains = gains_against_reference(path)
            cells = ", ".join(f"{scorer} {mean:+.3f} ± {half:.3f}" for scorer, (mean, half, _) in gains.items())
            print(f"| {name} | {cells} | {gains['gold'][2]} |")
        return
    if len(runs) < 2:
        raise SystemExit(f"{args.root}: fewer than two finished trained runs with samples.jsonl")
    values = {name: per_prompt(path, METRICS[args.metric]) for name, path in runs.items()}
    print(f"| A | B | mean {args.metric} A - B (95% over prompts) | prompts | larger than the noise |")
    print("|---|---|---|---|---|")
    for a, b in itertools.combinations(sorted(values, key=lambda k: -sum(values[k].values()) / len(values[k])), 2):
        mean, half, n = paired(values[a], values[b])
        print(f"| {a} | {b} | {mean:+.3f} ± {half:.3f} | {n} | {'yes' if abs(mean) > half else 'no'} |")


if __name__ == "__main__":
    main()
