"""zoo's PPO against TRL's nearest online trainer, ``RLOOTrainer``: completions generated per second, whole
processes alternating.

    python benchmarks/bench_ppo_vs_rloo.py                     # world, 4 rollouts of 64, 3 repetitions
    python benchmarks/bench_ppo_vs_rloo.py --rollouts 8 --reps 2

TRL has no PPO any more, so the peer is the closest online trainer it keeps. The two do the same outer
work on the same inputs: the same policy (the world's SFT stage), the same prompts (the world's), the same
reward model (the world's Bradley-Terry stage, a ``LlamaForSequenceClassification`` both load), rollout
batches of 64 completions of up to 48 new tokens at temperature 1, each batch reused for 4 passes of
minibatches of 16 (16 optimizer steps per batch), KL coefficient 0.05 to the frozen SFT model, learning rate
3e-5, float32, evaluation off, gradient checkpointing off. What differs is the algorithm itself:

- **zoo's PPO** draws one completion per prompt (64 prompts), runs a value model (initialised from the
  reward model) and GAE, and clips policy and value losses;
- **RLOO** draws two completions per prompt (32 prompts) and takes each one's baseline from the other;
  no value model.

So per generated completion, PPO does more (a value model's forward and backward); the ratio says what a
user pays per sample for each. The stages (SFT, labels, reward model) are built once, untimed, by a first
zoo run in the benchmark's cache; neither side pays for them.

Printed: each side's whole-process seconds and completions generated per second in-process (zoo:
``steps * batch_size / ppo_epochs / train_seconds`` from ``metrics.json``; TRL: the same count over the
seconds around ``trainer.train()``), the completions' mean length at the last log (generation's cost grows
with it, and each side's policy moves its own way), peak RSS, and the ratio zoo / TRL of completions per
second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_vs_trl import timed  # noqa: E402

PROMPTS = ROOT / "zoo" / "world" / "assets" / "data" / "preference_prompts.jsonl"
BATCH, EPOCHS, MINIBATCHES, NEW_TOKENS, KL, LR = 16, 4, 4, 48, 0.05, 3e-5
STEPS_PER_ROLLOUT = MINIBATCHES * EPOCHS  # zoo's rollout of 64 = 16 optimizer steps, as RLOO's generation batch


def zoo_cmd(steps: int, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", "train", "algo=ppo", f"trainer.max_steps={steps}",
            f"trainer.batch_size={BATCH}", "trainer.warmup_steps=0", f"trainer.log_every={steps}",
            f"trainer.learning_rate={LR}", "trainer.save_every=0", "eval.num_prompts=0", f"algo.loss.kl_coef={KL}",
            f"rollout.max_new_tokens={NEW_TOKENS}", f"rollout.num_minibatches={MINIBATCHES}",
            f"rollout.ppo_epochs={EPOCHS}", f"hydra.run.dir={run_dir}"]


def trl_cmd(steps: int, policy: Path, reward_model: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "trl_job.py"), "--algo", "rloo", "--model", str(policy),
            "--reward-model", str(reward_model), "--data", str(PROMPTS), "--steps", str(steps), "--batch",
            str(BATCH), "--lr", str(LR), "--beta", str(KL), "--max-new-tokens", str(NEW_TOKENS),
            "--generations", "2", "--steps-per-generation", str(MINIBATCHES), "--epochs", str(EPOCHS),
            "--out", str(out)]


def stage_paths(run_dir: Path, cache: Path) -> tuple[Path, Path]:
    """(SFT policy, reward model) directories a zoo PPO run used, from its metrics.json."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    policy, reward_model = (Path(metrics[key].replace("${stages.cache_dir}", str(cache)))
                            for key in ("policy_init", "reward_model"))
    return policy, reward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=4, help="rollout batches of 64 completions per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None, help="stage cache (default: under --work)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_ppo_vs_rloo_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = (args.cache or work / "cache").resolve()
    env = {**os.environ, "ZOO_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    print("building the stages (untimed) ...", flush=True)
    _, _, proc = timed(zoo_cmd(STEPS_PER_ROLLOUT, work / "stages"), env)
    if proc.returncode != 0:
        sys.exit(f"the stage-building run failed:\n{proc.stderr[-3000:]}")
    policy, reward_model = stage_paths(work / "stages", cache)
    steps = args.rollouts * STEPS_PER_ROLLOUT
    generated = steps * BATCH / EPOCHS

    runs = []
    for rep in range(args.reps):
        result = {}
        for side in (("zoo", "trl") if rep % 2 == 0 else ("trl", "zoo")):
            out = work / f"{side}-{rep}"
            if side == "zoo":
                wall, rss, proc = timed(zoo_cmd(steps, out), env)
                ok = proc.returncode == 0
                metrics = json.loads((out / "metrics.json").read_text()) if ok else {}
                seconds, length = metrics.get("train_seconds"), metrics.get("final_log", {}).get("rollout/length")
            else:
                wall, rss, proc = timed(trl_cmd(steps, policy, reward_model, out), env)
                ok = proc.returncode == 0
                report = json.loads((out / "trl.json").read_text()) if ok else {}
                seconds = report.get("train_seconds")
                length = next((log["completions/mean_length"] for log in report.get("last_log", [])
                               if "completions/mean_length" in log), None)
            if not ok:
                print(f"  {side} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
            result[side] = {"wall_s": wall, "peak_rss_mb": rss, "train_seconds": seconds, "mean_length": length,
                            "completions_per_second": generated / seconds if seconds else None}
        runs.append(result)
        z, t = result["zoo"], result["trl"]
        print(f"[rep {rep}] zoo PPO {z['wall_s']:.1f} s, {z['completions_per_second'] or 0:.1f} completions/s of "
              f"{z['mean_length'] or 0:.1f} tokens, {z['peak_rss_mb']:.0f} MB | TRL RLOO {t['wall_s']:.1f} s, "
              f"{t['completions_per_second'] or 0:.1f} completions/s of {t['mean_length'] or 0:.1f} tokens, "
              f"{t['peak_rss_mb']:.0f} MB", flush=True)

    ok = [r for r in runs if r["zoo"]["train_seconds"] and r["trl"]["train_seconds"]]
    if not ok:
        sys.exit("no repetition finished on both sides")

    def med(side: str, key: str) -> float:
        return statistics.median(r[side][key] for r in ok)

    ratios = [r["zoo"]["completions_per_second"] / r["trl"]["completions_per_second"] for r in ok]
    print(f"\n{args.rollouts} rollouts x 64 completions ({steps} steps of {BATCH}), {len(ok)} repetitions, "
          f"{os.cpu_count()} CPUs")
    print(f"{'':<10}{'wall s':>8}{'completions/s':>15}{'peak MB':>9}")
    for side, name in (("zoo", "zoo PPO"), ("trl", "TRL RLOO")):
        print(f"{name:<10}{med(side, 'wall_s'):>8.1f}{med(side, 'completions_per_second'):>15.1f}"
              f"{med(side, 'peak_rss_mb'):>9.0f}")
    print(f"zoo / TRL completions per second: median {statistics.median(ratios):.2f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}]")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                         "ratio_median": statistics.median(ratios)}, indent=2))


if __name__ == "__main__":
    main()
