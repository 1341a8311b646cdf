"""How close a training step comes to the machine: achieved FLOP/s per algorithm as a fraction of the matmul
peak measured in the same process, and PPO's peak memory over SFT's.

    python benchmarks/bench_limits.py                       # world model, sft dpo ipo kto orpo ppo, 30 steps
    python benchmarks/bench_limits.py --algos dpo,kto --steps 50

For each algorithm, two in-process ``zoo.run.train`` runs of the same config (world model, batch 16, max
length 96, evaluation off; offline losses on 4,000 pairs of the world's demonstrations, PPO on the world's
prompts with its cached stages):

1. under ``torch.utils.flop_counter.FlopCounterMode``: the floating-point operations of every matmul,
   convolution and attention call of the whole training (forward, backward, the reference's forward, PPO's
   generation and scoring), divided by the steps: FLOPs per step, counted, not estimated from a formula;
2. without it, timed: ``train_seconds / steps`` from ``metrics.json``.

Achieved FLOP/s = (1) / (2). The peak is the best of 5 float32 ``torch.mm`` calls of 2048 x 2048 matrices on
the same threads, the most a dense matmul reaches here; the fraction says how much of a step is not spent
in large matmuls (small layers, elementwise ops, Python, the optimizer). The reference cache is off, so a
step includes the reference's forward. Memory: SFT and PPO again as fresh ``zoo train`` processes, each
run's peak RSS minus its RSS before the models were loaded (``peak_memory_mb - memory_before_models_mb``),
PPO over SFT.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an n x n by n x n ``torch.mm`` on this process's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best


def overrides(algo: str, steps: int, data: Path, cache: Path) -> list[str]:
    """The run's ``zoo train`` overrides: world model, batch 16, evaluation off, the reference cache off
    (the whole step, the reference's forward included)."""
    common = [f"algo={algo}", f"trainer.max_steps={steps}", "trainer.batch_size=16", "trainer.warmup_steps=0",
              f"trainer.log_every={steps}", "trainer.save_every=0", "eval.num_prompts=0", "data.max_length=96",
              f"stages.cache_dir={cache}", "trainer.reference_cache=false"]
    if algo != "ppo":  # PPO samples its own completions: the world's prompts and cached reward model
        common += ["data=local", f"data.path={data}"]
    return common


def compose(algo: str, steps: int, data: Path, cache: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zoo.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "zoo" / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides(algo, steps, data, cache))


def run_memory_mb(algo: str, steps: int, data: Path, cache: Path, out: Path) -> float:
    """A fresh ``zoo train`` process's peak RSS minus its RSS before the models loaded: what the run used
    (in one process, the RSS high-water mark of earlier runs would hide it)."""
    cmd = [sys.executable, "-m", "zoo.cli", "train", *overrides(algo, steps, data, cache), f"hydra.run.dir={out}"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics["peak_memory_mb"] - metrics["memory_before_models_mb"]


def measure(algo: str, steps: int, data: Path, cache: Path, work: Path) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from zoo import run

    cfg = compose(algo, steps, data, cache)
    run.train(cfg, work / f"{algo}-warm")  # builds any stage first, so neither measured run pays for it
    counter = FlopCounterMode(display=False)
    with counter:
        run.train(cfg, work / f"{algo}-counted")
    timed = run.train(cfg, work / f"{algo}-timed")
    flops_per_step = counter.get_total_flops() / steps
    seconds_per_step = timed["train_seconds"] / steps
    return {"flops_per_step": flops_per_step, "seconds_per_step": seconds_per_step,
            "achieved_flops": flops_per_step / seconds_per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="sft,dpo,ipo,kto,orpo,ppo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cache", type=Path, default=None, help="stage cache (PPO's world stages; default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from bench_vs_trl import world_pairs

    work = Path(tempfile.mkdtemp(prefix="bench_limits_"))
    data = world_pairs(work / "pairs.jsonl", 4000)
    cache = args.cache or work / "cache"
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak / 1e9:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    results = {}
    for algo in args.algos.split(","):
        results[algo] = measure(algo, args.steps, data, cache, work)
        r = results[algo]
        print(f"{algo:<6} {r['flops_per_step'] / 1e9:8.2f} GFLOP/step {r['seconds_per_step'] * 1e3:8.1f} ms/step "
              f"{r['achieved_flops'] / 1e9:7.2f} GFLOP/s = {r['achieved_flops'] / peak:6.1%} of peak", flush=True)
    if "ppo" in results and "sft" in results:
        memory = {a: run_memory_mb(a, args.steps, data, cache, work / f"{a}-memory") for a in ("sft", "ppo")}
        results["memory_mb"] = memory
        print(f"run memory (fresh processes): SFT {memory['sft']:.0f} MB, PPO {memory['ppo']:.0f} MB, "
              f"PPO / SFT {memory['ppo'] / memory['sft']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"matmul_peak_flops": peak, "steps": args.steps, "results": results},
                                        indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
