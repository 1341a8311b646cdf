"""A model, tokenizer and rows built from scratch, unlike the world's in every way parity could hide behind.

The world's tokenizer has no BOS token, ties no embeddings away and ends its chat turns without EOS; a
code path that only agrees with TRL on the world (a BOS token TRL adds, a row held out, a pair split by
the batch) passes there and fails on a user's model. This one differs:

- a byte-level BPE vocabulary of 400 trained here on a few English sentences (merges cross word
  boundaries differently from the world's);
- a BOS token ``<s>`` that the tokenizer defines but does not add by itself (TRL's ORPOTrainer adds it);
- a chat template that closes every message, the assistant's included, with the EOS token;
- a random 2-layer Llama (hidden 48) with untied input and output embeddings.

Rows repeat prompts across rows (and, unpaired, across labels) and have completions of very different
lengths. Everything is written to a directory in the exact format ``from_pretrained`` reads, so the
real loading code (``zoo train model.name_or_path=DIR data=local data.path=FILE``) is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CORPUS = [
    "The acting was superb and I loved the ending of this film.",
    "I thought the plot was a boring mess, sadly, and the cast was weak.",
    "The soundtrack was wonderful, the pacing clever and the script fresh.",
    "Honestly, the director failed: a dull, painful and terrible movie.",
    "What a delight! A great job by everyone involved in the production.",
    "The story felt awful; I would not watch it again, not even for free.",
    "Summarise the review in one sentence. Answer briefly and politely.",
    "Is this review positive or negative? Explain your answer in a few words.",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# (prompt, chosen, rejected): prompts repeat across rows, completions range from two tokens to a sentence
PAIRS = [
    ("The acting was", " superb.", " dull, and the ending dragged on for far too long without any reason."),
    ("The acting was", " wonderful, and I loved every single scene of the last act.", " bad."),
    ("I thought the plot", " was clever.", " was a boring mess, sadly."),
    ("I thought the plot", " was fresh, surprising and honestly a delight from start to finish.", " failed."),
    ("The soundtrack", " was great!", " felt awful and the cast was weak."),
    ("This film", " is a delight to watch with the whole family, again and again.", " is terrible."),
    ("The director", " did a great job with the pacing.", " failed."),
    ("Honestly, the script", " was fresh.", " was terrible and painful to sit through."),
]


def build_tokenizer(out: Path):
    """A byte-level BPE tokenizer (vocab 400) with <s> (not added), </s>, <pad> and an EOS-closing chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return tokenizer


def build_model(out: Path, tokenizer, seed: int = 0):
    """A random 2-layer Llama with untied embeddings, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a random init is nearly uniform; sharper weights make the log-probs differ by row
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(out, safe_serialization=True)
    return model


def perturb(model, scale: float = 0.05, seed: int = 1):
    """Nudge every weight by seeded noise in place: a reference that differs from its policy."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def build(root: Path) -> dict[str, Path]:
    """Write a policy, its reference (the policy with perturbed weights, same tokenizer) and the data files
    under ``root``. The perturbation makes the reference worse at every text, so log pi - log pi_ref is
    positive on average and KTO's reference point z0 (clamped at 0) is really compared."""
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    reference, policy = root / "reference", root / "policy"
    tokenizer = build_tokenizer(policy)
    build_model(policy, tokenizer)
    tokenizer.save_pretrained(reference)
    perturb(AutoModelForCausalLM.from_pretrained(policy)).save_pretrained(reference, safe_serialization=True)
    files = {"reference": reference, "policy": policy}
    for fmt, rows in (("standard", standard_pairs()), ("conversational", conversational_pairs())):
        files[f"pairs_{fmt}"] = _write(root / f"pairs_{fmt}.jsonl", rows)
        files[f"unpaired_{fmt}"] = _write(root / f"unpaired_{fmt}.jsonl", unpaired(rows))
    return files


def standard_pairs() -> list[dict]:
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]


def conversational_pairs() -> list[dict]:
    def turn(role, text):
        return [{"role": role, "content": text.strip()}]

    return [{"prompt": turn("user", p), "chosen": turn("assistant", c), "rejected": turn("assistant", r)}
            for p, c, r in PAIRS]


def unpaired(pairs: list[dict]) -> list[dict]:
    """Each prompt once as desirable and once as undesirable, interleaved (what a user's KTO file looks like)."""
    rows = []
    for pair in pairs:
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
