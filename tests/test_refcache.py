"""The reference log-prob cache (``zoo.refcache``): a run that meets its batches again reads the reference's
outputs instead of computing them, and gives bitwise the same run; anything that changes the reference's
outputs changes the key."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_configs import compose_train

from zoo import run
from zoo.refcache import ReferenceCache


def train(tmp_path, name, cache, *overrides):
    cfg = compose_train(["experiment=smoke", "eval.num_prompts=0", "trainer.save_every=0",
                         f"stages.cache_dir={cache}", *overrides])
    metrics = run.train(cfg, tmp_path / name)
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return metrics, log, load_file(str(tmp_path / name / "model" / "model.safetensors"))


@pytest.mark.parametrize("algo", ["dpo", "kto"])
def test_a_warm_cache_serves_every_batch_and_changes_nothing(algo, tmp_path):
    cache = tmp_path / "cache"
    cold, cold_log, cold_weights = train(tmp_path, "cold", cache, f"algo={algo}")
    warm, warm_log, warm_weights = train(tmp_path, "warm", cache, f"algo={algo}")
    off, off_log, off_weights = train(tmp_path, "off", cache, f"algo={algo}", "trainer.reference_cache=false")
    steps = cold["steps"]
    assert cold["reference_cache"] == {"hits": 0, "misses": steps}
    assert warm["reference_cache"] == {"hits": steps, "misses": 0}
    assert "reference_cache" not in off
    for log in (warm_log, off_log):  # the same numbers, cold, warm or without the cache
        assert [entry["loss"] for entry in log] == [entry["loss"] for entry in cold_log]
    for weights in (warm_weights, off_weights):
        assert all(torch.equal(weights[k], cold_weights[k]) for k in cold_weights)


def test_another_seed_or_beta_meets_other_batches_or_the_same_ones(tmp_path):
    """DPO and IPO of one seed train on the same batches: IPO reads DPO's reference outputs. Another seed
    shuffles other batches: nothing to read."""
    cache = tmp_path / "cache"
    train(tmp_path, "dpo", cache, "algo=dpo")
    ipo, _, _ = train(tmp_path, "ipo", cache, "algo=ipo")
    assert ipo["reference_cache"]["misses"] == 0 and ipo["reference_cache"]["hits"] == ipo["steps"]
    other_seed, _, _ = train(tmp_path, "seed1", cache, "algo=dpo", "seed=1")
    assert other_seed["reference_cache"]["hits"] == 0


def test_the_key_follows_the_batch_and_the_reference_setting(tmp_path):
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]]),
             "completion_mask": torch.tensor([[0, 1, 1]])}
    other_ids = {**batch, "input_ids": torch.tensor([[5, 6, 8]])}
    other_mask = {**batch, "completion_mask": torch.tensor([[0, 0, 1]])}
    labelled = {**batch, "labels": torch.tensor([True])}
    digests = {ReferenceCache.digest(b) for b in (batch, other_ids, other_mask, labelled)}
    assert len(digests) == 4
    base = {"reference": "stage:abc", "dtype": "float32", "quant_bits": None}
    dirs = {ReferenceCache(tmp_path, s).dir for s in (base, {**base, "reference": "stage:abd"},
                                                      {**base, "dtype": "bfloat16"}, {**base, "quant_bits": 4})}
    assert len(dirs) == 4


def test_online_sources_do_not_use_the_cache(tmp_path):
    metrics, _, _ = train(tmp_path, "online", tmp_path / "cache", "algo=online_dpo")
    assert "reference_cache" not in metrics
    assert not list((tmp_path / "cache").glob("reference-logps-*"))


def test_the_evaluation_reads_the_reference_samples_a_run_with_the_same_reference_drew(tmp_path):
    """DPO and IPO of one seed are evaluated against the same reference samples: the second run reads them,
    and its metrics and samples are the ones it would have computed itself."""
    cache = tmp_path / "cache"
    overrides = ["eval.num_prompts=8", "experiment=smoke", "trainer.save_every=0", f"stages.cache_dir={cache}"]
    first = run.train(compose_train(["algo=dpo", *overrides]), tmp_path / "dpo")
    assert len(list((cache / "eval-reference").glob("*.json"))) == 1
    warm = run.train(compose_train(["algo=ipo", *overrides]), tmp_path / "ipo-warm")
    cold = run.train(compose_train(["algo=ipo", "eval.reference_cache=false", *overrides]), tmp_path / "ipo-cold")
    assert len(list((cache / "eval-reference").glob("*.json"))) == 1  # the same entry: nothing new drawn
    for key in ("gold_reward", "ref_gold_reward", "win_rate_vs_ref", "kl_to_ref", "ref_nll_under_ref", "ref_fluency",
                "ref_mean_length", "ref_repeated_3grams"):
        assert warm[key] == cold[key], key
    assert first["ref_gold_reward"] == warm["ref_gold_reward"]
    assert (tmp_path / "ipo-warm" / "samples.jsonl").read_text() == (tmp_path / "ipo-cold" / "samples.jsonl").read_text()
    other_seed = run.train(compose_train(["algo=ipo", "seed=1", *overrides]), tmp_path / "ipo-seed1")
    assert len(list((cache / "eval-reference").glob("*.json"))) == 2  # another eval seed: its own samples
    assert other_seed["status"] == "finished"
