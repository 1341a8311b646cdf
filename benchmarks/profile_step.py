"""Where a training step's time goes, and a whole process's: one ``zoo train`` run profiled in-process.

    python benchmarks/profile_step.py                      # dpo and kto on the world, 60 steps
    python benchmarks/profile_step.py --algos orpo --steps 100

For each algorithm, the bench job of ``bench_vs_trl.py`` (world model, batch 16, max length 96, the world's
4,000 pairs, evaluation off, the reference cache off: a cold run's step) runs once to warm up and once
under ``cProfile``. Printed per step: the policy's forward (KTO: with its KL rows, without autograd), the
reference's forward, backward, gradient clipping, the optimizer, fetching and collating the batch, and the
rest of the step (the loss, metrics, the progress bar); then the run's parts outside the steps (tokenizing,
loading the models, saving). The profiler's overhead inflates Python-heavy parts a little: the shares, not
the absolute times, are the point. Start-up's imports are measured apart, in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# (label, a function's file suffix and name in the profile); their cumulative times, per step
STEP_PARTS = [
    ("policy forward", "zoo/trainer.py", "_policy_forward"),
    ("reference forward", "zoo/trainer.py", "_reference_output"),
    ("backward", "accelerate/accelerator.py", "backward"),
    ("gradient clipping", "accelerate/accelerator.py", "clip_grad_norm_"),
    ("optimizer", "accelerate/optimizer.py", "step"),
    ("batch fetch + collate", "accelerate/data_loader.py", "__iter__"),
]
RUN_PARTS = [
    ("tokenize the data", "zoo/data/load.py", "tokenize_rows"),
    ("load policy + reference", "zoo/builders.py", "build_policy"),
    ("load the tokenizer", "zoo/models.py", "model_tokenizer"),
    ("save the model", "transformers/modeling_utils.py", "save_pretrained"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    """Cumulative seconds of every profiled function ``name`` defined in a file ending with ``suffix``."""
    return sum(entry[3] for (path, _, func), entry in stats.stats.items() if func == name and path.endswith(suffix))


def import_seconds() -> float:
    """Seconds a fresh interpreter takes to import what a run imports (zoo, torch, transformers, Llama)."""
    code = ("import time; t = time.perf_counter(); import zoo.run, transformers.models.llama.modeling_llama; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="dpo,kto")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    from bench_limits import compose
    from bench_vs_trl import world_pairs

    from zoo import run

    work = Path(tempfile.mkdtemp(prefix="profile_step_"))
    data = world_pairs(work / "pairs.jsonl", 4000)
    for algo in args.algos.split(","):
        cfg = compose(algo, args.steps, data, work / "cache")
        with contextlib.redirect_stderr(io.StringIO()):
            run.train(cfg, work / f"{algo}-warm")
            profiler = cProfile.Profile()
            started = time.perf_counter()
            profiler.enable()
            metrics = run.train(cfg, work / f"{algo}-profiled")
            profiler.disable()
            total = time.perf_counter() - started
        stats = pstats.Stats(profiler)
        steps_s = metrics["train_seconds"]
        print(f"\n{algo}: {args.steps} steps, {1e3 * steps_s / args.steps:.1f} ms / step under the profiler "
              f"({total:.1f} s for the whole run)")
        accounted = 0.0
        for label, suffix, name in STEP_PARTS:
            seconds = cumulative(stats, suffix, name)
            accounted += seconds
            print(f"  {label:<26}{1e3 * seconds / args.steps:7.1f} ms  {seconds / steps_s:6.1%}")
        rest = steps_s - accounted
        print(f"  {'rest of the step':<26}{1e3 * rest / args.steps:7.1f} ms  {rest / steps_s:6.1%}")
        for label, suffix, name in RUN_PARTS:
            print(f"  outside the steps: {label:<26}{cumulative(stats, suffix, name):6.2f} s")
    print(f"\nstart-up: importing zoo.run + the Llama modelling code in a fresh interpreter: {import_seconds():.2f} s "
          f"({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
