"""One TRL training job as its own process, the peer side of ``benchmarks/bench_vs_trl.py``.

    python benchmarks/trl_job.py --algo dpo --model DIR --data pairs.jsonl --steps 150 --batch 16 \
        --max-length 96 --out OUT [--lora]

Builds TRL 1.16's trainer for ``--algo`` (dpo / ipo: ``DPOTrainer`` with loss_type sigmoid / ipo; kto:
``KTOTrainer`` on the pairs unpaired with TRL's ``unpair_preference_dataset``; orpo:
``trl.experimental.orpo.ORPOTrainer``; rloo: ``RLOOTrainer`` on a prompts file, scored by ``--reward-model``, the
peer of zoo's PPO in ``benchmarks/bench_ppo_vs_rloo.py``) with the settings zoo's run uses: the same model and tokenizer,
batch, steps, learning rate, beta, max length, float32 on the CPU, dropout off, no evaluation, no
checkpoints, logging only at the last step, gradient checkpointing off (TRL's default turns it on, which
trades time for memory; zoo has none), the reference a separate frozen copy (or, with ``--lora``, the
base with adapters disabled, as zoo's). Writes ``OUT/trl.json``: the seconds ``trainer.train()`` took,
the samples per second that gives (rloo: completions generated per second) and TRL's last logs; with
``--count-flops``, the training's matmul and attention FLOPs per step (``FlopCounterMode``, as
``bench_limits.py`` counts zoo's), for comparing the work each side does, not its time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

LORA_TARGETS = "all-linear"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--algo", required=True, choices=["dpo", "ipo", "kto", "orpo", "rloo"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lora", action="store_true")
    # rloo: completions per generation batch = batch x steps-per-generation, each reused for `epochs` passes
    parser.add_argument("--reward-model", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--steps-per-generation", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--count-flops", action="store_true", help="count FLOPs (slower: not for timing)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    def load():
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, use_safetensors=True)

    policy = load()
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
                                 task_type="CAUSAL_LM")
    reference = None if args.lora or args.algo in ("orpo", "rloo") else load()
    common = dict(output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps,
                  learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, logging_steps=args.steps,
                  report_to=[], beta=args.beta, max_length=args.max_length, use_cpu=True, save_strategy="no",
                  disable_dropout=True, bf16=False, gradient_checkpointing=False, dataloader_num_workers=0,
                  seed=0)
    if args.algo in ("dpo", "ipo"):
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=policy, ref_model=reference, peft_config=peft_config,
                             args=DPOConfig(loss_type=["sigmoid" if args.algo == "dpo" else "ipo"], **common),
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    elif args.algo == "kto":
        from trl import KTOConfig, KTOTrainer
        from trl.data_utils import unpair_preference_dataset

        unpaired = unpair_preference_dataset(Dataset.from_list(rows))
        trainer = KTOTrainer(model=policy, ref_model=reference, peft_config=peft_config,
                             args=KTOConfig(loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0,
                                            precompute_ref_log_probs=False, **common),
                             train_dataset=unpaired, processing_class=tokenizer)
    elif args.algo == "rloo":  # the reference: TRL loads its own frozen copy of --model (beta > 0)
        from trl import RLOOConfig, RLOOTrainer

        common.pop("max_length")
        trainer = RLOOTrainer(model=policy, reward_funcs=args.reward_model, train_dataset=Dataset.from_list(
            [{"prompt": row["prompt"]} for row in rows]), processing_class=tokenizer, peft_config=peft_config,
            args=RLOOConfig(num_generations=args.generations, max_completion_length=args.max_new_tokens,
                            steps_per_generation=args.steps_per_generation, num_iterations=args.epochs,
                            temperature=1.0, top_k=0, top_p=1.0, **common))
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(model=policy, peft_config=peft_config, args=ORPOConfig(remove_unused_columns=False,
                                                                                        **common),
                              train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    counter = contextlib.nullcontext()
    if args.count_flops:  # every matmul / attention FLOP of the training, as bench_limits.py counts zoo's
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
    started = time.perf_counter()
    with counter:
        trainer.train()
    seconds = time.perf_counter() - started
    flops = {"flops_per_step": counter.get_total_flops() / args.steps} if args.count_flops else {}
    samples = args.steps * args.batch / (args.epochs if args.algo == "rloo" else 1)  # rloo: generated, once each
    (out / "trl.json").write_text(json.dumps({"train_seconds": seconds, "samples_per_second": samples / seconds,
                                              "last_log": trainer.state.log_history[-2:], **flops}))


if __name__ == "__main__":
    main()
