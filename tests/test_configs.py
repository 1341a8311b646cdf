"""Every YAML under conf/ composes; typos fail at compose time; the stable override keys exist."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from zoo.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"
GROUP_FILES = sorted(p for p in CONF.rglob("*.yaml") if p.parent != CONF)
EXPECTED_YAML_FILES = 103  # update when a config is added: the glob must not silently find nothing


def compose_train(overrides=()):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_yaml_count():
    assert len(list(CONF.rglob("*.yaml"))) == EXPECTED_YAML_FILES


# not zoo train's groups: comparison plans and tuning (below), accelerate's launch configs (test_launch_configs.py),
# Hydra launcher presets (test_launchers.py)
@pytest.mark.parametrize("path", [p for p in GROUP_FILES
                                  if p.relative_to(CONF).parts[0] not in ("compare", "tuning", "accelerate", "hydra")],
                         ids=lambda p: str(p.relative_to(CONF)))
def test_every_group_file_composes(path):
    group, *option = path.relative_to(CONF).with_suffix("").parts  # model/hub/gpt2.yaml: model=hub/gpt2
    added = "+" if group == "rollout" else ""  # not in train.yaml's defaults: an algo's defaults or +rollout=NAME
    cfg = compose_train([f"{added}{group}={'/'.join(option)}", "data.path=some.jsonl"])
    OmegaConf.to_container(cfg.algo, resolve=True)  # interpolations resolve
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("path", sorted((CONF / "compare").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_comparison_plan_composes_and_names_existing_arms(path):
    """compare/*.yaml compose from compare.yaml (not train.yaml); every sweep names an arm or an algo (one with
    no comparison arm runs at its single-run budget), and every arm it names exists."""
    from zoo.compare import split_top_level, sweep_size
    from zoo.config import compose_compare_config

    plan = compose_compare_config([f"compare={path.stem}"])
    sweeps = OmegaConf.to_container(plan.sweeps, resolve=False)
    assert sweeps and all(sweep_size(sweep) for sweep in sweeps)
    arms = {arm for sweep in sweeps for o in sweep if o.startswith("arm=") for arm in split_top_level(o[4:])}
    assert all(any(o.startswith(("arm=", "algo=")) for o in sweep) for sweep in sweeps)
    assert all((CONF / "compare" / "arm" / f"{arm}.yaml").exists() for arm in arms)


ARMS = CONF / "compare" / "arm"


@pytest.mark.parametrize("path", sorted(ARMS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(ARMS).with_suffix("")))
def test_every_arm_composes_as_the_comparison_launches_it(path):
    """An arm is a `zoo train` override file the runs find on Hydra's search path (zoo.compare.sweep_command);
    arm=smollm2/dpo is arm/smollm2/dpo.yaml."""
    arm = path.relative_to(ARMS).with_suffix("").as_posix()
    cfg = compose_train([f"+arm={arm}", f"hydra.searchpath=[file://{CONF / 'compare'}]"])
    assert cfg.algo.name == path.stem and cfg.trainer.max_steps < compose_train([f"algo={path.stem}"]).trainer.max_steps


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


def test_ppo_and_online_feedback_keys_live_in_their_own_schemas():
    """PPO's and online feedback's keys are not every algorithm's: setting one on DPO fails at compose time."""
    dpo = compose_train(["algo=dpo"])
    assert not {"value_init", "reward_model", "direct_judge", "online_feedback"} & set(dpo.algo)
    with pytest.raises(ConfigCompositionException):
        compose_train(["algo=dpo", "algo.value_init=reference"])
    assert compose_train(["algo=rlaif", "algo.value_init=reference"]).algo.value_init == "reference"
    assert compose_train(["algo=online_dpo"]).algo.online_feedback is True


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_critic_free_algos_take_rollout_keys_but_no_value_keys(algo):
    """RLOO and GRPO score rollouts as PPO does (reward_model, direct_judge) but have no value model: PPO's value
    keys fail at compose time. They pick one update per rollout batch, which the command line can still change."""
    cfg = compose_train([f"algo={algo}"])
    assert {"reward_model", "direct_judge"} <= set(cfg.algo)
    assert not {"value_init", "value_checkpointing"} & set(cfg.algo)
    assert (cfg.rollout.num_minibatches, cfg.rollout.ppo_epochs) == (1, 1)
    assert compose_train([f"algo={algo}", "rollout.ppo_epochs=2"]).rollout.ppo_epochs == 2
    assert compose_train(["algo=ppo"]).rollout.ppo_epochs == 4  # PPO keeps its own
    with pytest.raises(ConfigCompositionException):
        compose_train([f"algo={algo}", "algo.value_init=reference"])


@pytest.mark.parametrize("path", sorted((CONF / "algo").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_algo_declares_known_stages(path):
    from zoo.stages import STAGE_NAMES

    stages = list(compose_train([f"algo={path.stem}"]).algo.stages)
    assert "reference" in stages and set(stages) <= set(STAGE_NAMES)


def test_lora_presets_apply_only_under_lora_and_yield_to_the_command_line():
    """conf/tuning/lora/<algo>.yaml is merged when peft=lora (after the trainer and algo groups): each preset's
    learning rate is the one the run gets; peft=none keeps the trainer's; the command line still wins."""
    presets = sorted((CONF / "tuning" / "lora").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"sft", "dpo", "ipo", "kto", "orpo", "reward", "ppo", "rlaif", "online_dpo",
                                         "d_rlaif"}
    for preset in presets:
        wanted = OmegaConf.load(preset).trainer.learning_rate
        full = compose_train([f"algo={preset.stem}"]).trainer.learning_rate
        assert compose_train([f"algo={preset.stem}", "peft=lora"]).trainer.learning_rate == wanted != full
        assert compose_train([f"algo={preset.stem}", "peft=lora", "trainer.learning_rate=0.5"]).trainer.learning_rate == 0.5
