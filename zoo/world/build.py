"""``zoo world build``: regenerate the embedded world's assets deterministically.

Steps (each seeded; identical output for the same seed and the same torch thread count):
  1. a corpus of synthetic reviews from ``zoo.world.grammar``;
  2. a byte-level BPE tokenizer trained on it (the ``tokenizers`` library), saved as a Hugging Face
     tokenizer with EOS, a distinct PAD token and a chat template;
  3. a small Llama-architecture base model pretrained on the corpus (next-token loss on whole reviews);
  4. the datasets: SFT demonstrations (prompt, completion), preference prompts and held-out eval
     prompts, each drawn from reviews of a different seed;
  5. the judge: the base model fine-tuned as an AI labeler of "which continuation is more positive?"
     (``zoo.world.judge_train``), with its measured agreement with gold in judge/judge_info.json.
The result loads like any hub model and dataset: ``from_pretrained(dir)`` and JSONL files.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from zoo.world import paths
from zoo.world.grammar import generate_corpus, split_prompt

EOS, PAD = "<|endoftext|>", "<|pad|>"
# A minimal chat template for conversational data: role-tagged turns; the assistant turn ends in EOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}" + EOS + "{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, bos_token=None,
                                   chat_template=CHAT_TEMPLATE, model_max_length=256)


def build_model(vocab_size: int, eos_id: int, pad_id: int, hidden: int, layers: int, seed: int):
    """A small Llama (no dropout; RoPE; SwiGLU), randomly initialised for a seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32,
                         num_hidden_layers=layers, num_attention_heads=hidden // 32, num_key_value_heads=hidden // 32,
                         max_position_embeddings=256, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                         tie_word_embeddings=False, attention_dropout=0.0)
    return LlamaForCausalLM(config)


def pretrain(model, tokenizer, corpus: list[str], steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Next-token pretraining on whole reviews (each followed by EOS); returns the loss curve."""
    from tqdm.auto import tqdm

    ids = [tokenizer(text + EOS)["input_ids"] for text in corpus]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="world: pretrain base model", dynamic_ncols=True)
    for _ in bar:
        batch = [ids[rng.randrange(len(ids))] for _ in range(batch_size)]
        width = max(len(b) for b in batch)
        input_ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        attention = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = input_ids.masked_fill(attention == 0, -100)  # (B, T): no loss on padding
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def prompt_rows(reviews: list[str], seed: int, with_completion: bool) -> list[dict]:
    """Split reviews into (opening, continuation) rows."""
    rng = random.Random(seed)
    rows = []
    for review in reviews:
        prompt, completion = split_prompt(review, rng)
        rows.append({"prompt": prompt, "completion": completion} if with_completion else {"prompt": prompt})
    return rows


def build(out: Path, seed: int = 0, corpus_size: int = 50_000, vocab_size: int = 1536, hidden: int = 192,
          layers: int = 4, steps: int = 1500, batch_size: int = 64, lr: float = 3e-3, num_sft: int = 4000,
          num_pref: int = 4000, num_eval: int = 512, judge: dict | None = None) -> dict:
    """Build every asset under ``out`` (model/ and data/); returns a summary."""
    started = time.perf_counter()
    corpus = generate_corpus(corpus_size, seed)
    tokenizer = build_tokenizer(corpus, vocab_size)
    model = build_model(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, hidden, layers, seed)
    losses = pretrain(model, tokenizer, corpus, steps, batch_size, lr, seed)
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")
    # Disjoint seeds keep the three datasets' reviews independent of each other and of the corpus.
    write_jsonl(out / "data" / "sft.jsonl", prompt_rows(generate_corpus(num_sft, seed + 1), seed + 1, True))
    write_jsonl(out / "data" / "preference_prompts.jsonl", prompt_rows(generate_corpus(num_pref, seed + 2), seed + 2, False))
    write_jsonl(out / "data" / "eval_prompts.jsonl", prompt_rows(generate_corpus(num_eval, seed + 3), seed + 3, False))
    judge_info = build_judge_asset(out, seed, judge or {})
    summary = {
        "judge_agreement_with_gold": judge_info["agreement_with_gold"], "judge_position_bias": judge_info["position_bias"],
        "seed": seed, "corpus_size": corpus_size, "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()), "pretrain_steps": steps,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]), "build_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "build_info.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_judge_asset(out: Path, seed: int, settings: dict) -> dict:
    """Step 5: the world judge under ``out/judge``, trained from ``out/model`` (prompts from seed + 4)."""
    from zoo.world.judge_train import build_judge

    return build_judge(out / "judge", out / "model", seed=seed + 4, **settings)


def main(argv: list[str] | None = None) -> None:
    """``zoo world build [--out DIR] [--quick]``."""
    from zoo.cli_help import Parser

    parser = Parser(prog="zoo world build", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=paths.ASSETS, help="asset directory (default: the package's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="pretraining steps (default 1500)")
    parser.add_argument("--quick", action="store_true", help="a tiny, fast build for tests (not for results)")
    parser.add_argument("--judge-only", action="store_true",
                        help="rebuild only the judge (step 5) from the base model already under --out")
    args = parser.parse_args(argv)
    quick_judge = dict(num_prompts=48, num_eval_prompts=16, steps=4, batch_size=8)
    if args.judge_only:
        started = time.perf_counter()
        info = build_judge_asset(args.out, args.seed, quick_judge if args.quick else {})
        print(json.dumps({k: v for k, v in info.items() if k != "curve"}, indent=2))
        print(f"judge built in {time.perf_counter() - started:.0f} s")
        return
    kwargs = dict(corpus_size=2000, vocab_size=512, hidden=64, layers=2, steps=20, batch_size=16, num_sft=200,
                  num_pref=200, num_eval=32, judge=quick_judge) if args.quick else {}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    summary = build(args.out, args.seed, **kwargs)
    print(json.dumps(summary, indent=2))
