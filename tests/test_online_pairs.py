"""Online AI feedback (OAIF): ``OnlinePairs`` samples fresh pairs from the policy being trained, labels them
and hands ``fit`` paired batches. On the world's tiny model with stub labelers whose choices are known."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from zoo.config import TrainerConfig
from zoo.data.tokenize import tokenize_pair
from zoo.feedback.base import Labels
from zoo.feedback.raters import SimulatedRaters
from zoo.world.gold import gold_reward
from zoo.losses import DPOLoss
from zoo.models import Reference, load_causal_lm, load_tokenizer
from zoo.online import OnlinePairs
from zoo.rollout import sample
from zoo.trainer import StepBatches, fit
from zoo.world import paths

MODEL = str(paths.MODEL)
PROMPTS = [json.loads(line)["prompt"] for line in paths.PREFERENCE_PROMPTS.read_text().splitlines()[:16]]
CPU = SimpleNamespace(device=torch.device("cpu"), num_processes=1, process_index=0)  # an accelerator stand-in


class Stub:
    """A labeler with a known rule: ``first``, ``second``, ``longer`` or ``shorter`` (text length) wins.
    Its probability P(first > second) is ``confidence`` toward the winner; the task's gold reward in these
    tests is the text length (``length_gold``)."""

    def __init__(self, rule: str, confidence: float = 0.8):
        self.rule, self.confidence = rule, confidence

    def label(self, prompts, first, second):
        assert len(prompts) == len(first) == len(second)
        rules = {"first": lambda a, b: True, "second": lambda a, b: False,
                 "longer": lambda a, b: len(a) >= len(b), "shorter": lambda a, b: len(a) <= len(b)}
        wins = [rules[self.rule](a, b) for a, b in zip(first, second)]
        probs = [self.confidence if w else 1 - self.confidence for w in wins]
        return Labels(wins, probs)


def length_gold(texts):
    """A gold reward the tests can compute by hand: the text's length."""
    return [float(len(t)) for t in texts]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: token-by-token generation of a tiny model is dominated by thread sync, and on a
    busy machine two threads made it 10-20x slower. Restored for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MODEL)


@pytest.fixture
def policy():
    return load_causal_lm(MODEL).train()


def source(policy, tokenizer, labeler, batch_size=4, max_new_tokens=8, gold_fn=length_gold, **kwargs):
    return OnlinePairs(policy, labeler, tokenizer, PROMPTS, batch_size=batch_size, grad_accum_steps=1, seed=3,
                       max_new_tokens=max_new_tokens, gold_fn=gold_fn, **kwargs)


def rows(batch):
    """The 2B sequences of a collated batch as token-id lists (padding removed), chosen first."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


def completions(batch):
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["completion_mask"])]


# --- (a) shape and who is chosen ---


def test_batches_are_pair_batches_with_chosen_decided_by_the_labeler(policy, tokenizer):
    first_wins = next(source(policy, tokenizer, Stub("first")).batches(CPU, policy, 0, 1))
    second_wins = next(source(policy, tokenizer, Stub("second")).batches(CPU, policy, 0, 1))
    assert set(first_wins) == {"input_ids", "attention_mask", "completion_mask", "metrics"}
    b = 4
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert first_wins[key].shape == second_wins[key].shape
        assert first_wins[key].shape[0] == 2 * b and first_wins[key].dtype == torch.long
    assert bool((first_wins["completion_mask"] <= first_wins["attention_mask"]).all())

    # chosen rows are the first sample (seed of completion 0), rejected the second (completion 1)
    src = source(policy, tokenizer, Stub("first"))
    prompts = [PROMPTS[i] for i in next(iter(StepBatches(len(PROMPTS), b, 3, 0, 1)))]  # micro-batch 0, seed 3
    a = sample(policy, tokenizer, prompts, 8, batch_size=b, seed=src.sample_seed(0, 0))
    z = sample(policy, tokenizer, prompts, 8, batch_size=b, seed=src.sample_seed(0, 1))
    eos = [tokenizer.eos_token_id]  # a completion cut at the 8-token cap gets the EOS the offline pairs get

    def sampled(s):
        return [p + c + ([] if done else eos) for p, c, done in zip(s.prompt_ids, s.completion_ids, s.ended)]

    assert not all(a.ended + z.ended)  # the cut case is exercised
    assert rows(first_wins) == sampled(a) + sampled(z)
    assert a.completion_ids != z.completion_ids  # the two samples differ, so the swap below means something
    # a labeler preferring the second response swaps chosen and rejected
    assert rows(second_wins) == rows(first_wins)[b:] + rows(first_wins)[:b]
    assert torch.equal(second_wins["completion_mask"], torch.cat([first_wins["completion_mask"][b:],
                                                                    first_wins["completion_mask"][:b]]))


def test_a_per_pair_decision_puts_each_winner_on_the_chosen_side(policy, tokenizer):
    batch = next(source(policy, tokenizer, Stub("longer"), batch_size=8).batches(CPU, policy, 0, 1))
    texts = tokenizer.batch_decode(completions(batch), skip_special_tokens=True)
    chosen, rejected = texts[:8], texts[8:]
    assert all(len(c) >= len(r) for c, r in zip(chosen, rejected))
    assert any(len(c) > len(r) for c, r in zip(chosen, rejected))


# --- (b) determinism and resume ---


def test_resumed_batches_equal_the_uninterrupted_ones(policy, tokenizer):
    straight = list(source(policy, tokenizer, Stub("longer"), batch_size=2).batches(CPU, policy, 0, 4))
    resumed = list(source(policy, tokenizer, Stub("longer"), batch_size=2).batches(CPU, policy, 2, 4))
    assert len(straight) == 4 and len(resumed) == 2
    for a, b in zip(straight[2:], resumed):
        for key in ("input_ids", "attention_mask", "completion_mask"):
            assert torch.equal(a[key], b[key]), key
        assert a["metrics"] == b["metrics"]
    assert rows(straight[0]) != rows(straight[2])  # fresh pairs every micro-batch, not one batch repeated


def test_each_process_counts_its_share_and_samples_its_own_pairs(policy, tokenizer):
    second = SimpleNamespace(device=torch.device("cpu"), num_processes=2, process_index=1)
    src = source(policy, tokenizer, Stub("first"), batch_size=2)
    on_second = list(src.batches(second, policy, 0, 4))  # micro-batches 0..4 over 2 processes: 2 each
    assert len(on_second) == 2
    on_first = next(source(policy, tokenizer, Stub("first"), batch_size=2).batches(CPU, policy, 0, 1))
    assert rows(on_second[0]) != rows(on_first)
    with pytest.raises(ValueError, match="split evenly"):
        next(src.batches(second, policy, 1, 4))


# --- (c) on-policy ---


def test_pairs_come_from_the_current_weights(policy, tokenizer):
    src = source(policy, tokenizer, Stub("first"))
    before = src.pairs(PROMPTS[:4], 0, "cpu")
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    after = src.pairs(PROMPTS[:4], 0, "cpu")  # same prompts, same seeds: only the weights differ
    assert completions(before) != completions(after)
    assert policy.training  # sampling ran in eval mode and put train mode back


# --- (d) metrics ---


def test_metrics_report_confidence_lengths_gold_margin_and_noise(policy, tokenizer):
    b = 8
    longer = next(source(policy, tokenizer, Stub("longer", 0.9), batch_size=b).batches(CPU, policy, 0, 1))
    m = longer["metrics"]
    lengths = longer["completion_mask"].sum(1).float()  # (2B,) completion tokens, EOS included
    assert m["online/chosen_length"] == pytest.approx(lengths[:b].mean().item())
    assert m["online/rejected_length"] == pytest.approx(lengths[b:].mean().item())
    assert m["online/label_confidence"] == pytest.approx(0.9)  # max(p, 1 - p), whichever side won
    texts = tokenizer.batch_decode(completions(longer), skip_special_tokens=True)
    margin = sum(len(c) - len(r) for c, r in zip(texts[:b], texts[b:])) / b
    assert m["online/gold_margin"] == pytest.approx(margin) and margin > 0  # chosen - rejected, not the reverse
    assert m["online/label_noise"] == 0.0
    assert m["online/identical_pairs"] == 0.0
    assert 0.0 <= m["online/eos_rate"] <= 1.0

    shorter = next(source(policy, tokenizer, Stub("shorter", 0.3), batch_size=b).batches(CPU, policy, 0, 1))
    assert shorter["metrics"]["online/gold_margin"] == pytest.approx(-margin)
    assert shorter["metrics"]["online/label_noise"] == 1.0
    assert shorter["metrics"]["online/label_confidence"] == pytest.approx(0.7)


def test_identical_pairs_are_kept_and_counted(policy, tokenizer):
    # near-greedy sampling: both completions of every prompt are the same tokens
    src = source(policy, tokenizer, Stub("first"), temperature=1e-4)
    batch = next(src.batches(CPU, policy, 0, 1))
    assert batch["input_ids"].shape[0] == 8  # kept: a fixed batch shape
    assert batch["metrics"]["online/identical_pairs"] == 1.0
    assert batch["metrics"]["online/gold_margin"] == 0.0
    assert "online/label_noise" not in batch["metrics"]  # every pair ties on gold: no noise to measure


class NoGold(Stub):
    """A judge's labels with a measured position bias (off the world: no task gold reward)."""

    def label(self, prompts, first, second):
        labels = super().label(prompts, first, second)
        return Labels(labels.first_wins, labels.probability, position_bias=0.125)


def test_labels_without_gold_rewards_give_no_gold_metrics(policy, tokenizer):
    batch = next(source(policy, tokenizer, NoGold("first"), gold_fn=None).batches(CPU, policy, 0, 1))
    assert "online/gold_margin" not in batch["metrics"] and "online/label_noise" not in batch["metrics"]
    assert batch["metrics"]["online/label_confidence"] == pytest.approx(0.8)
    assert batch["metrics"]["online/position_bias"] == 0.125


def test_too_few_prompts_is_a_clear_error(policy, tokenizer):
    with pytest.raises(ValueError, match="needs 17 prompts"):
        source(policy, tokenizer, Stub("first"), batch_size=17)


# --- (e) EOS as in the offline pair data ---


def test_completions_end_in_one_eos_as_the_offline_tokenization(policy, tokenizer):
    b, eos = 8, tokenizer.eos_token_id
    src = source(policy, tokenizer, Stub("first"), batch_size=b, max_new_tokens=24)
    batch = src.pairs(PROMPTS[:b], 5, "cpu")
    first = sample(policy, tokenizer, PROMPTS[:b], 24, batch_size=b, seed=src.sample_seed(5, 0))
    second = sample(policy, tokenizer, PROMPTS[:b], 24, batch_size=b, seed=src.sample_seed(5, 1))
    ended = first.ended + second.ended
    assert any(ended) and not all(ended)  # both cases are exercised
    texts = first.texts + second.texts
    for ids, done, prompt, text in zip(completions(batch), ended, PROMPTS[:b] * 2, texts):
        # the offline data tokenizes (prompt, text) with TRL's tokenize_pair, which appends one EOS
        _, offline, _ = tokenize_pair(tokenizer, prompt, text, text)
        assert offline[-1] == eos and offline.count(eos) == 1
        # stopped at EOS, or cut at max_new_tokens and given the EOS the offline pairs get: the offline tokens
        assert ids == offline
        assert len(ids) <= 24 if done else len(ids) == 25


# --- (f) one real training run ---


def test_fit_trains_dpo_on_online_pairs(tmp_path, tokenizer):
    policy = load_causal_lm(MODEL)
    src = OnlinePairs(policy, SimulatedRaters(gold_reward, temperature=0.1), tokenizer, PROMPTS, batch_size=4,
                      grad_accum_steps=1, seed=0, max_new_tokens=8, max_length=64, gold_fn=gold_reward)
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    cfg = TrainerConfig(max_steps=3, batch_size=4, learning_rate=1e-3, warmup_steps=1, log_every=1)
    result = fit(policy, DPOLoss(beta=0.1), src, cfg, tmp_path, seed=0,
                 reference=Reference(policy, load_causal_lm(MODEL)))
    assert result.steps == 3
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    for entry in log:
        assert math.isfinite(entry["loss"])
        for key in ("online/label_confidence", "online/identical_pairs", "online/chosen_length",
                    "online/rejected_length", "online/gold_margin"):
            assert key in entry and math.isfinite(entry[key]), key
        assert 0.5 <= entry["online/label_confidence"] <= 1.0
    # step 1: policy = reference, so DPO's margin is 0 and the loss log 2
    assert log[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert any(not torch.equal(initial[k], v) for k, v in policy.state_dict().items())
