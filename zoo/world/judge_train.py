"""The world's AI labeler: the base model fine-tuned to answer "which continuation is more positive?".

RLAIF needs a judge that is a *language model reading text*, not the gold scorer in disguise. The
world's judge is built like a real AI labeler, only smaller:

1. prompts are drawn from the review grammar (a seed no dataset uses) and the base model samples two
   continuations of each, so the judge sees the kind of text policies write, grammatical or not;
2. each decided pair (gold rewards differ) is rendered through ``LMJudge``'s own template in both
   orders, and the target is the next token ``A`` or ``B`` that gold prefers;
3. the base model is fine-tuned on that next token (cross-entropy over the whole vocabulary, read
   at the last position exactly as ``LMJudge`` reads it: left padding, position ids from the first
   real token);
4. its agreement with gold and its position bias are measured by ``LMJudge`` on pairs from held-out
   prompts and written to ``judge_info.json``.

With a few thousand pairs and a 2.4M-parameter model it is a genuinely imperfect labeler: it
misjudges close pairs and text far from its training data, as AI labelers do.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from zoo.feedback.judge import OPEN, CLOSE, LMJudge  # noqa: F401 - OPEN/CLOSE document the template fields
from zoo.world.gold import gold_reward
from zoo.world.grammar import generate_corpus, split_prompt

WORLD_PRINCIPLE = "Which continuation is more positive?"
# The world model has 256 positions: a compact question leaves room for two 48-token continuations.
WORLD_TEMPLATE = "{principle}\n{prompt}\nA: {open}{a}{close}\nB: {open}{b}{close}"


def world_judge(cache_dir: str | None = None, judge_dir: Path | None = None) -> LMJudge:
    """The world's judge with the principle and template it was trained with (from its judge_info.json)."""
    from zoo.world import paths

    judge_dir = Path(judge_dir or paths.JUDGE)
    info_file = judge_dir / "judge_info.json"
    if not info_file.exists():
        raise FileNotFoundError(f"no world judge at {judge_dir}: run `zoo world build` (or `zoo world build --judge-only`)")
    info = json.loads(info_file.read_text())
    return LMJudge(str(judge_dir), principle=info["principle"], template=info["template"], batch_size=64,
                   cache_dir=cache_dir)


def judge_pairs(base_dir: Path, num_prompts: int, seed: int, max_new_tokens: int = 48) -> list[dict]:
    """Two base-model continuations per grammar prompt, with gold rewards; ties (equal gold) dropped."""
    from zoo.models import load_causal_lm, load_tokenizer
    from zoo.rollout import sample

    tokenizer, model = load_tokenizer(str(base_dir)), load_causal_lm(str(base_dir))
    rng = random.Random(seed)
    prompts = [split_prompt(review, rng)[0] for review in generate_corpus(num_prompts, seed)]
    first = sample(model, tokenizer, prompts, max_new_tokens, 1.0, 128, seed=seed, desc="world judge: samples (a)")
    second = sample(model, tokenizer, prompts, max_new_tokens, 1.0, 128, seed=seed + 1, desc="world judge: samples (b)")
    gold_a, gold_b = gold_reward(first.texts), gold_reward(second.texts)
    return [{"index": i, "prompt": p, "a": a, "b": b, "gold_a": ga, "gold_b": gb}
            for i, (p, a, b, ga, gb) in enumerate(zip(prompts, first.texts, second.texts, gold_a, gold_b)) if ga != gb]


def agreement(judge: LMJudge, pairs: list[dict]) -> dict:
    """How often the judge's averaged preference agrees with gold, and its position bias."""
    out = judge.judge([r["prompt"] for r in pairs], [r["a"] for r in pairs], [r["b"] for r in pairs])
    agree = [(p > 0.5) == (r["gold_a"] > r["gold_b"]) for p, r in zip(out.prob_first, pairs)]
    # the same judgement taken from one order only: what order averaging buys
    single = [(p > 0.5) == (r["gold_a"] > r["gold_b"]) for p, r in zip(out.prob_a_first_shown_first, pairs)]
    return {"agreement_with_gold": sum(agree) / len(agree), "agreement_one_order": sum(single) / len(single),
            "position_bias": out.position_bias, "pairs": len(pairs)}


def score_of(gold: float, scores: list[str]) -> str:
    """The rating a response of gold reward ``gold`` in [-1, 1] deserves on the judge's scale (lowest
    score at -1, highest at +1, evenly spaced)."""
    k = round((gold + 1.0) / 2.0 * (len(scores) - 1))
    return scores[max(0, min(len(scores) - 1, k))]


def training_rows(judge: LMJudge, pairs: list[dict], score_every: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, target ids) for every pair in both orders (target: the gold-preferred label) and, for
    every ``score_every``-th pair, both responses rated (target: the score's tokens then EOS, so the
    judge learns where a score ends, e.g. "1" vs "10")."""
    tok = judge.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    rows = []
    for n, r in enumerate(pairs):
        a_wins = r["gold_a"] > r["gold_b"]
        rows.append((ids(judge.render(r["prompt"], r["a"], r["b"])), [judge.label_ids[0 if a_wins else 1]]))
        rows.append((ids(judge.render(r["prompt"], r["b"], r["a"])), [judge.label_ids[1 if a_wins else 0]]))
        if score_every and n % score_every == 0:
            for response, gold in ((r["a"], r["gold_a"]), (r["b"], r["gold_b"])):
                target = list(judge.score_ids[judge.scores.index(score_of(gold, judge.scores))]) + [tok.eos_token_id]
                rows.append((ids(judge.render_score(r["prompt"], response)), target))
    return rows


def train_judge(judge: LMJudge, pairs: list[dict], steps: int, batch_size: int, lr: float, seed: int,
                eval_pairs: list[dict] | None = None, eval_every: int = 0, score_every: int = 0) -> list[dict]:
    """Fine-tune ``judge.model`` on the answers gold implies (``training_rows``): next-token cross-entropy
    on the answer tokens only, with inputs left-padded exactly as ``LMJudge`` reads them."""
    from tqdm.auto import tqdm

    rows = training_rows(judge, pairs, score_every)
    pad = judge.tokenizer.pad_token_id
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model = judge.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order: list[int] = []
    history = []
    bar = tqdm(range(steps), desc="world judge: train", dynamic_ncols=True)
    for step in bar:
        model.train()
        if len(order) < batch_size:  # epochs of reshuffled rows
            fresh = list(range(len(rows)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = [rows[i] for i in order[:batch_size]], order[batch_size:]
        seqs = [x + y for x, y in batch]
        width = max(len(q) for q in seqs)
        input_ids = torch.tensor([[pad] * (width - len(q)) + q for q in seqs])  # (B, T) left-padded
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in seqs])
        labels = torch.full_like(input_ids, -100)
        for i, (_, target) in enumerate(batch):
            labels[i, width - len(target):] = torch.tensor(target)  # loss on the answer tokens only
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_pairs and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            model.eval()
            judge.cache.clear()
            history.append({"step": step + 1, "loss": loss.item(), **agreement(judge, eval_pairs)})
            print(json.dumps(history[-1]))
    model.eval()
    judge.cache.clear()
    return history


def build_judge(out: Path, base_dir: Path, seed: int = 0, num_prompts: int = 6000, num_eval_prompts: int = 600,
                steps: int = 1800, batch_size: int = 32, lr: float = 1e-3, eval_every: int = 300, score_every: int = 1,
                min_margin: float = 0.2) -> dict:
    """Train the world judge from the base model in ``base_dir``; save it (+ judge_info.json) under ``out``.

    Saved in float16 (half the asset size; LMJudge computes in float32) and measured *after* reloading,
    so the reported agreement is the shipped judge's."""
    pairs = judge_pairs(base_dir, num_prompts + num_eval_prompts, seed)
    # training pairs with a clear gold margin (a clean signal); evaluation on every decided held-out pair
    train_pairs = [r for r in pairs if r["index"] < num_prompts and abs(r["gold_a"] - r["gold_b"]) >= min_margin]
    eval_pairs = [r for r in pairs if r["index"] >= num_prompts]  # pairs of prompts never trained on
    judge = LMJudge(str(base_dir), principle=WORLD_PRINCIPLE, template=WORLD_TEMPLATE, batch_size=64, device="cpu")
    history = train_judge(judge, train_pairs, steps, batch_size, lr, seed, eval_pairs, eval_every, score_every)
    out.mkdir(parents=True, exist_ok=True)
    judge.model.to(torch.float16).save_pretrained(out, safe_serialization=True)
    judge.tokenizer.padding_side = "right"  # saved as the base's tokenizer; LMJudge sets left padding itself
    judge.tokenizer.save_pretrained(out)
    info = {"principle": WORLD_PRINCIPLE, "template": WORLD_TEMPLATE, "seed": seed, "train_pairs": len(train_pairs),
            "steps": steps, "batch_size": batch_size, "learning_rate": lr, "score_every": score_every,
            "min_margin": min_margin, "curve": history}
    (out / "judge_info.json").write_text(json.dumps(info, indent=2))
    info.update(agreement(world_judge(judge_dir=out), eval_pairs))  # the shipped (float16) judge
    (out / "judge_info.json").write_text(json.dumps(info, indent=2))
    return info
