"""The embedded world: raters, committed assets, and a deterministic rebuild (grammar: test_world_grammar.py)."""

import hashlib
import json
import math
import subprocess
import sys

import pytest

from zoo.feedback.raters import SimulatedRaters
from zoo.world.gold import gold_reward
from zoo.world import paths


def test_raters_follow_bradley_terry():
    """P(first wins) = sigmoid((VADER(good) - VADER(fine)) / 0.1), and the empirical win rate matches it."""
    raters = SimulatedRaters(gold_reward, temperature=0.1, seed=0)
    n = 4000
    labels = raters.label([f"p{i}" for i in range(n)], ["The acting was good."] * n, ["The acting was fine."] * n)
    good, fine = gold_reward(["The acting was good.", "The acting was fine."])
    gap = good - fine
    expected = 1 / (1 + math.exp(-gap / 0.1))
    assert labels.probability[0] == pytest.approx(expected)
    assert sum(labels.first_wins) / n == pytest.approx(expected, abs=0.03)


def test_rater_draws_are_per_pair_not_per_batch_position():
    """A pair keeps its label wherever it sits and whatever it is labelled with; the i-th pairs of two
    calls (online feedback: two training steps) get independent draws, not one shared by position."""
    raters = SimulatedRaters(gold_reward, temperature=0.1, seed=0)
    good, fine = "The acting was good.", "The acting was fine."
    prompts = [f"review {i}:" for i in range(400)]
    alone = [raters.label([p], [good], [fine]).first_wins[0] for p in prompts]
    batched = raters.label(prompts, [good] * 400, [fine] * 400).first_wins
    reversed_batch = raters.label(prompts[::-1], [good] * 400, [fine] * 400).first_wins[::-1]
    assert alone == batched == reversed_batch
    # one label per call at position 0, 400 calls: the old per-call reseeding gave 400 equal labels
    assert 0.2 < sum(alone) / 400 < 0.95 and len(set(alone)) == 2
    other_seed = SimulatedRaters(gold_reward, temperature=0.1, seed=1).label(prompts, [good] * 400, [fine] * 400).first_wins
    assert other_seed != batched


def test_committed_assets_load_like_a_hub_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.MODEL)
    model = AutoModelForCausalLM.from_pretrained(paths.MODEL, use_safetensors=True)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert 2e6 <= sum(p.numel() for p in model.parameters()) <= 5e6
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Review it."}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("Assistant:")
    for name in ("sft.jsonl", "preference_prompts.jsonl", "eval_prompts.jsonl"):
        assert (paths.DATA / name).stat().st_size > 0
    total = sum(p.stat().st_size for p in paths.ASSETS.rglob("*") if p.is_file())
    assert total < 20 * 2**20


def test_world_build_is_deterministic(tmp_path):
    digests = []
    for out in (tmp_path / "a", tmp_path / "b"):
        subprocess.run([sys.executable, "-m", "zoo.cli", "world", "build", "--quick", "--out", str(out)], check=True,
                       capture_output=True)
        files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "build_info.json")
        digests.append({p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert digests[0] == digests[1] and "model/model.safetensors" in digests[0]
    info = json.loads((tmp_path / "a" / "build_info.json").read_text())
    assert info["pretrain_steps"] == 20
