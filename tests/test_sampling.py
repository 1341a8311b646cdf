"""``zoo.rollout.sample``: prompts are generated in length-sorted chunks and come back in their own order."""

import json

import pytest
import torch

from zoo.models import load_causal_lm, load_tokenizer
from zoo.rollout import length_sorted_chunks, sample
from zoo.world import paths


def test_chunks_cover_every_index_once_grouped_by_length_in_input_order():
    lengths = [7, 2, 9, 2, 4, 7, 3]
    chunks = length_sorted_chunks(lengths, 3)
    assert chunks == [[1, 3, 6], [0, 4, 5], [2]]  # lengths {2, 2, 3}, {7, 4, 7}, {9}
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    # padded to each chunk's longest: 3 * 3 + 3 * 7 + 9 = 39 cells, against 3 * 9 + 3 * 7 + 3 = 51 unsorted
    assert sum(len(c) * max(lengths[i] for i in c) for c in chunks) == 39
    assert length_sorted_chunks(lengths, 10) == [list(range(7))]  # one chunk: the order is untouched


@pytest.fixture(scope="module")
def world_model():
    return load_causal_lm(str(paths.MODEL)), load_tokenizer(str(paths.MODEL))


def test_each_prompt_gets_its_own_completion_back(world_model):
    """At a temperature near zero sampling is greedy, so a prompt's completion cannot depend on its chunk:
    prompts of mixed lengths, sampled 3 to a chunk (reordered by length), equal the same prompts in one chunk."""
    model, tokenizer = world_model
    rows = [json.loads(line)["prompt"] for line in paths.EVAL_PROMPTS.read_text().splitlines()[:40]]
    prompts = [" ".join(rows[5 * k:5 * k + 1 + k % 5]) for k in range(8)]  # 8 prompts of 1 to 5 joined rows
    assert len({len(tokenizer(p).input_ids) for p in prompts}) > 3
    chunked = sample(model, tokenizer, prompts, 12, temperature=1e-4, batch_size=3, seed=0)
    together = sample(model, tokenizer, prompts, 12, temperature=1e-4, batch_size=len(prompts), seed=0)
    assert chunked.prompts == together.prompts == prompts
    assert chunked.completion_ids == together.completion_ids
    assert chunked.texts == together.texts and chunked.ended == together.ended
    assert len(set(map(tuple, chunked.completion_ids))) > 1  # distinct prompts, distinct completions


def test_a_seed_reproduces_its_samples(world_model):
    model, tokenizer = world_model
    prompts = [json.loads(line)["prompt"] for line in paths.EVAL_PROMPTS.read_text().splitlines()[:10]]
    first = sample(model, tokenizer, prompts, 12, batch_size=4, seed=3)
    assert first.completion_ids == sample(model, tokenizer, prompts, 12, batch_size=4, seed=3).completion_ids
    assert first.completion_ids != sample(model, tokenizer, prompts, 12, batch_size=4, seed=4).completion_ids
