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
    reference = stages.sft_stage(cfg, cfg.data.demonstrations_path)
    pairs = stages.preference_stage(cfg, reference, cfg.data.prompts_path)
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert rows and {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"} <= set(rows[0])
    reward = stages.reward_stage(cfg, reference, pairs)
    info = json.loads((reward.parent / "stage.json").read_text())
    assert info["steps"] == 3 and "rm_accuracy_vs_gold" in info and "rm_accuracy_vs_labels" in info
    assert AutoModelForSequenceClassification.from_pretrained(reward).config.num_labels == 1

    # A second request with the same config is a cache hit: nothing is rebuilt.
    monkeypatch.setattr(stages, "fit", lambda *a, **k: pytest.fail("a cached stage was rebuilt"))
    assert stages.sft_stage(cfg, cfg.data.demonstrations_path) == reference
    assert stages.preference_stage(cfg, reference, cfg.data.prompts_path) == pairs
    assert stages.reward_stage(cfg, reference, pairs) == reward
    assert not list(tmp_path.glob("*.tmp"))  # no half-built stage left behind


def test_changing_a_stage_setting_changes_its_key(cfg):
    reference = stages.sft_stage(cfg, cfg.data.demonstrations_path)
    cfg.stages.preferences.num_prompts = 12
    other = stages.preference_stage(cfg, reference, cfg.data.prompts_path)
    assert len(other.read_text().splitlines()) <= 12
