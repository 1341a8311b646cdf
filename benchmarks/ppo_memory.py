"""Peak memory of PPO vs SFT on the same model, LoRA setup and minibatch size; prints the ratio.

    python benchmarks/ppo_memory.py                     # a ~100M-parameter Llama, CPU or GPU
    python benchmarks/ppo_memory.py --hidden 192 --layers 4   # world-model size

RLHF is said to cost about 4x SFT memory: policy, reference, reward model and value model. With
``peft=lora`` zoo's PPO keeps one frozen base: the policy and the value model are adapters (+ a
head), the reference is the base with adapters disabled, and the LoRA reward model is one more
adapter (+ head). This script measures it rather than arguing it:

1. builds (once, under ``outputs/bench/``) a randomly initialised Llama with the world's tokenizer
   at the requested size, plus a LoRA reward model and a full reward model for it (random weights:
   memory does not depend on what the weights say);
2. runs ``zoo train`` in fresh processes: sft, ppo, and ppo with ``algo.value_checkpointing=true``
   (the value trunk recomputed in backward), each with ``peft=lora`` and without, with the same
   minibatch (``trainer.batch_size``) and no stages or evaluation;
3. reads each run's ``metrics.json``: on a GPU ``peak_memory_mb`` is the CUDA allocator's peak (the
   process starts from zero); on a CPU it is the process's peak RSS, so the memory in use before the
   models were loaded (interpreter, torch, transformers) is subtracted to get what the run itself used.

It prints one row per run and the PPO / SFT ratios. Nothing is estimated: a missing number is printed
as missing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def build_model(out: Path, hidden: int, layers: int) -> Path:
    """A random Llama of the requested size with the world's tokenizer, and LoRA / full reward models."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from zoo.models import apply_lora, load_reward_model, load_tokenizer
    from zoo.world import paths

    model_dir = out / f"llama-h{hidden}-l{layers}"
    if (model_dir / "done").exists():
        return model_dir
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(str(paths.MODEL))
    config.update({"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": hidden * 8 // 3,
                   "num_attention_heads": max(1, hidden // 64), "num_key_value_heads": max(1, hidden // 64),
                   "head_dim": min(64, hidden)})
    model = AutoModelForCausalLM.from_config(config)
    tokenizer = load_tokenizer(str(paths.MODEL))
    model.save_pretrained(model_dir / "policy", safe_serialization=True)
    tokenizer.save_pretrained(model_dir / "policy")
    reward = load_reward_model(str(model_dir / "policy"), tokenizer.pad_token_id)
    reward.save_pretrained(model_dir / "reward_full", safe_serialization=True)
    tokenizer.save_pretrained(model_dir / "reward_full")
    lora = apply_lora(load_reward_model(str(model_dir / "policy"), tokenizer.pad_token_id), 8, 16, 0.0,
                      "all-linear", task_type="SEQ_CLS")
    lora.save_pretrained(model_dir / "reward_lora", safe_serialization=True)
    tokenizer.save_pretrained(model_dir / "reward_lora")
    (model_dir / "done").write_text(json.dumps({"parameters": sum(p.numel() for p in model.parameters())}))
    return model_dir


def run(algo: str, peft: str, model_dir: Path, out: Path, args, extra: tuple[str, ...] = ()) -> dict:
    """One ``zoo train`` in a fresh process; returns its metrics.json."""
    run_dir = out / "-".join([algo, peft, *(e.split("=")[0].split(".")[-1] for e in extra if "reward_model" not in e)])
    overrides = [
        f"algo={algo}", f"peft={peft}", f"model.name_or_path={model_dir / 'policy'}", "data.sft_stage=false",
        "data.preference_stage=false", "eval.num_prompts=0",
        f"trainer.batch_size={args.batch_size}", f"trainer.max_steps={args.steps}", "trainer.save_every=0",
        "trainer.learning_rate=1e-5", "trainer.warmup_steps=1", "rollout.ppo_epochs=1",
        f"rollout.max_new_tokens={args.new_tokens}", f"hydra.run.dir={run_dir}", *extra,
    ]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "train", *overrides], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return {"status": "failed"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per optimizer step, both algorithms")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32, help="PPO rollout length (SFT data: ~30 tokens)")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args()

    model_dir = build_model(args.out, args.hidden, args.layers)
    params = json.loads((model_dir / "done").read_text())["parameters"]
    out = args.out / f"memory-{model_dir.name}-b{args.batch_size}"
    results = {}
    checkpointing = ("algo.value_checkpointing=true",)
    for peft in ("lora", "none"):
        reward = (f"algo.reward_model={model_dir / ('reward_lora' if peft == 'lora' else 'reward_full')}",)  # PPO's key
        results["sft", peft] = run("sft", peft, model_dir, out, args)
        results["ppo", peft] = run("ppo", peft, model_dir, out, args, reward)
        results["ppo + value checkpointing", peft] = run("ppo", peft, model_dir, out, args, reward + checkpointing)

    def used(m: dict) -> float | None:
        if m.get("status") != "finished":
            return None
        if m["peak_memory_source"] == "cuda_max_allocated":
            return m["peak_memory_mb"]
        return m["peak_memory_mb"] - m["memory_before_models_mb"]

    print(f"\nmodel: random Llama, hidden {args.hidden}, {args.layers} layers, {params / 1e6:.1f}M parameters; "
          f"batch {args.batch_size} sequences; {args.steps} optimizer steps")
    print("| algo | peft | peak memory used by the run (MB) | peak (MB) | source | wall s |")
    print("|---|---|---|---|---|---|")
    for (algo, peft), m in results.items():
        u = used(m)
        print(f"| {algo} | {peft} | {u:.0f} | {m['peak_memory_mb']:.0f} | {m['peak_memory_source']} | "
              f"{m['wall_seconds']:.0f} |" if u is not None else f"| {algo} | {peft} | failed | | | |")
    for peft in ("lora", "none"):
        for variant in ("ppo", "ppo + value checkpointing"):
            ppo, sft = used(results[variant, peft]), used(results["sft", peft])
            ratio = f"{ppo / sft:.2f}x" if ppo is not None and sft else "missing"
            print(f"{variant} / sft peak memory, peft={peft}: {ratio}")


if __name__ == "__main__":
    main()
