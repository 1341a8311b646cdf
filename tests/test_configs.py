"""Every YAML under conf/ composes; typos fail at compose time; the stable override keys exist."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from zoo.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"
GROUP_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)
EXPECTED_YAML_FILES = 38  # update when a config is added: the glob must not silently find nothing


def compose_train(overrides=()):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_yaml_count():
    assert len(list(CONF.rglob("*.yaml"))) == EXPECTED_YAML_FILES


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: str(p.relative_to(CONF)))
def test_every_group_file_composes(path):
    group = str(path.parent.relative_to(CONF))
    cfg = compose_train([f"{group}={path.stem}", "data.path=some.jsonl"])
    OmegaConf.to_container(cfg.algo, resolve=True)  # interpolations resolve
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("path", sorted((CONF / "algo").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_algo_loss_instantiates(path):
    """Every algo YAML's loss keys are its class's constructor arguments: a mistyped key fails here, not
    after a comparison's stages have run."""
    from hydra.utils import instantiate

    from zoo.losses import Loss

    loss = instantiate(compose_train([f"algo={path.stem}"]).algo.loss)
    assert isinstance(loss, Loss)


def test_reward_model_has_its_own_trainer_preset():
    """algo=reward trains at its own lr (5e-4), not the shared default that left the world RM at 0.665."""
    assert compose_train(["algo=reward"]).trainer.learning_rate == 5e-4
    assert compose_train(["algo=reward", "trainer.learning_rate=1e-4"]).trainer.learning_rate == 1e-4


def test_defaults():
    cfg = compose_train()
    assert (cfg.algo.name, cfg.model.name, cfg.data.name, cfg.feedback.name) == ("dpo", "tiny", "world", "gold")
    assert cfg.peft.enabled is False and cfg.quant.bits is None
    assert Path(cfg.model.name_or_path).name == "model"


def test_stable_override_keys():
    cfg = compose_train(["algo=ipo", "seed=3", "trainer.max_steps=7", "trainer.learning_rate=0.5",
                         "trainer.batch_size=2", "trainer.grad_accum_steps=4", "eval.num_prompts=0",
                         "algo.loss.beta=0.3", "data=local", "data.path=x.jsonl", "data.max_length=64",
                         "model.name_or_path=/m"])
    assert (cfg.seed, cfg.trainer.max_steps, cfg.trainer.learning_rate, cfg.trainer.batch_size) == (3, 7, 0.5, 2)
    assert (cfg.trainer.grad_accum_steps, cfg.eval.num_prompts, cfg.algo.loss.beta) == (4, 0, 0.3)
    assert (cfg.data.path, cfg.data.max_length, cfg.model.name_or_path) == ("x.jsonl", 64, "/m")


@pytest.mark.parametrize("typo", ["trainer.max_stepz=3", "data.pth=x", "eval.num_promts=1"])
def test_typo_fails_at_compose_time(typo):
    with pytest.raises(ConfigCompositionException):
        compose_train([typo])


def test_wrong_type_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException):
        compose_train(["trainer.max_steps=many"])


def test_algo_ppo_brings_its_trainer_preset_and_the_command_line_still_wins():
    """algo=ppo selects trainer/ppo through its defaults list; trainer=... or trainer.* on the command line override it."""
    assert compose_train(["algo=ppo"]).trainer.max_steps == 960
    assert compose_train(["algo=dpo"]).trainer.max_steps == 250
    assert compose_train(["algo=ppo", "trainer=cpu_smoke"]).trainer.max_steps == 3
    assert compose_train(["algo=ppo", "trainer.learning_rate=1e-6"]).trainer.learning_rate == 1e-6


def test_algo_orpo_brings_its_trainer_preset():
    """ORPO replaces SFT + preference step in one stage from the base model: its own steps and lr."""
    cfg = compose_train(["algo=orpo"])
    assert (cfg.trainer.max_steps, cfg.trainer.learning_rate, cfg.algo.init) == (500, 3e-4, "base")
