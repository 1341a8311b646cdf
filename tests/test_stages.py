"""The cached pipeline stages: built once per config, reused by every run that shares it."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from transformers import AutoModelForSequenceClassification

from zoo import stages
from zoo.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"


@pytest.fixture()
def cfg(tmp_path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=smoke", f"stages.cache_dir={tmp_path}"])


def test_sft_preference_and_reward_stages_build_once(cfg, tmp_path, monkeypatch):
    prepared = stages.prepare(cfg, ["reward_model"])  # and what it depends on: reference, samples, labels
    reference, pairs, reward = prepared.reference.path, prepared.labels.path, prepared.reward_model.path
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"} <= set(rows[0])
    info = prepared.reward_model.info
    assert info == json.loads((reward.parent / "stage.json").read_text())
    assert info["steps"] == 3 and "rm_accuracy_vs_gold" in info and "rm_accuracy_vs_labels" in info
    assert AutoModelForSequenceClassification.from_pretrained(reward).config.num_labels == 1
    assert prepared.labels.feedback_metrics()["feedback_agreement_with_gold"] == prepared.labels.info["agreement_with_gold"]

    # A second request with the same config is a cache hit: nothing is rebuilt.
    monkeypatch.setattr(stages, "fit", lambda *a, **k: pytest.fail("a cached stage was rebuilt"))
    again = stages.prepare(cfg, ["reference", "labels", "reward_model"])
    assert (again.reference.path, again.labels.path, again.reward_model.path) == (reference, pairs, reward)
    assert not list(tmp_path.glob("*.tmp"))  # no half-built stage left behind


def test_a_run_builds_only_the_stages_it_declares(cfg, tmp_path):
    """SFT's run reads the reference only; DPO's the labelled pairs too, never a reward model."""
    assert stages.prepare(cfg, ["reference"]).labels is None and {p.name.split("-")[0] for p in tmp_path.iterdir()
                                                                   if p.is_dir()} == {"sft"}
    dpo = stages.prepare(cfg, ["reference", "labels"])
    assert dpo.reward_model is None and not list(tmp_path.glob("reward-*"))
    with pytest.raises(ValueError, match="unknown stage"):
        stages.prepare(cfg, ["pairs"])


def test_a_moved_cache_keeps_its_stages(cfg, tmp_path, monkeypatch):
    """Keys hash contents, not paths: the same cache copied elsewhere (another checkout, another machine)
    is found whole, the samples stage included, although the reference it samples from moved with it."""
    import shutil

    first = stages.prepare(cfg, ["labels"])
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    shutil.copytree(tmp_path, moved)
    cfg.stages.cache_dir = str(moved)
    monkeypatch.setattr(stages, "fit", lambda *a, **k: pytest.fail("a moved stage was retrained"))
    monkeypatch.setattr(stages, "sample", lambda *a, **k: pytest.fail("a moved stage was resampled"))
    again = stages.prepare(cfg, ["labels"])
    assert again.labels.path == moved / first.labels.path.relative_to(tmp_path)
    assert again.reference.path == moved / first.reference.path.relative_to(tmp_path)


def test_changing_a_stage_setting_changes_its_key(cfg):
    reference = stages.prepare(cfg, ["reference"]).reference.path
    cfg.stages.preferences.num_prompts = 12
    other = stages.label_stage(cfg, stages.samples_stage(cfg, reference, Path(cfg.data.prompts_path)).path).path
    assert len(other.read_text().splitlines()) <= 12


def test_a_reward_stage_does_not_depend_on_what_the_process_ran_before(cfg, tmp_path):
    """The same key must mean the same weights: the reward model's new head starts from the stage's seed,
    so building it after other work (another RNG state) gives the same bytes."""
    import shutil

    import torch

    first = stages.prepare(cfg, ["reward_model"]).reward_model.path
    other = tmp_path.parent / f"{tmp_path.name}-other"
    shutil.copytree(tmp_path, other, ignore=shutil.ignore_patterns("reward-*"))
    cfg.stages.cache_dir = str(other)
    torch.manual_seed(12345)
    torch.randn(1000)  # whatever the process did before
    again = stages.prepare(cfg, ["reward_model"]).reward_model.path
    assert again != first and (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
