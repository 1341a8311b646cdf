"""Sampling completions from a policy: used by evaluation, preference collection and (later) PPO.

Prompts are left-padded for batched generation (decoder-only models continue from the right edge).
Sampling is pure ancestral sampling at ``temperature`` (``top_k=0``, ``top_p=1``), so samples at
temperature 1 come from the policy itself and Monte-Carlo KL estimates on them are unbiased.
Each completion is cut after its first EOS; ``ended`` records whether it produced one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zoo.data.tokenize import tokenize_prompt


@dataclass
class Samples:
    """Completions for a list of prompts (token ids exclude padding; completions include EOS if produced)."""

    prompts: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]  # decoded completions, special tokens removed
    ended: list[bool]  # True where the completion stopped at EOS within max_new_tokens


@torch.no_grad()
def sample(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float = 1.0,
           batch_size: int = 64, seed: int = 0, desc: str | None = None) -> Samples:
    """Sample one completion per prompt, reproducibly for a seed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    all_prompt_ids = [tokenize_prompt(tokenizer, p) for p in prompts]
    completions, ended = [], []
    generator_seed = seed
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False):
        chunk = all_prompt_ids[start:start + batch_size]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        torch.manual_seed(generator_seed + start)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad)
        for row in out[:, width:].tolist():  # (B, new tokens)
            if eos in row:
                completions.append(row[: row.index(eos) + 1])
                ended.append(True)
            else:
                completions.append(row)
                ended.append(False)
    model.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Samples(list(prompts), all_prompt_ids, completions, texts, ended)
