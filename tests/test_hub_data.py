"""Every hub dataset config (``zoo/conf/data/hub/``) reads a local copy of its dataset, written in the hub
repository's own files and column types (``tests/hub_datasets.py``), through ``datasets.load_dataset``, into
the standard schema: training rows, evaluation prompts from its test split, and the prompts stage PPO and
the preference stage sample from. Then the PPO / RLAIF recipe: which reward model and judge each config
names, and the errors when there is none."""

import json
import math

import pytest
import torch
from hub_datasets import HH, HUB_DATASETS, IMDB, TLDR, ULTRAFEEDBACK, ULTRAFEEDBACK_TEST
from hub_models import HUB_MODELS, write_model
from omegaconf import OmegaConf
from test_configs import CONF, compose_train

from zoo import run
from zoo.data.formats import clean_review, hh_transcript
from zoo.data.load import read_rows
from zoo.data.prompts import prompts_file
from zoo.data.schema import DataError
from zoo.data.split import resolve_data
from zoo.models import model_tokenizer
from zoo.stages import Prepared, prepare

HUB_DATA_CONFIGS = sorted(p.stem for p in (CONF / "data" / "hub").glob("*.yaml"))


def sorted_prompts(prompts) -> list[str]:
    return sorted(json.dumps(p) for p in prompts)


@pytest.fixture(scope="module")
def local_copies(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_data")
    return {name: write(root / name) for name, (write, _) in HUB_DATASETS.items()}


def hub_cfg(name, local_copies, tmp_path, *overrides):
    key = HUB_DATASETS[name][1]
    return compose_train([f"data=hub/{name}", f"data.{key}={local_copies[name]}", f"stages.cache_dir={tmp_path}",
                          *overrides])


def test_every_hub_data_config_has_a_local_copy():
    assert HUB_DATA_CONFIGS == sorted(HUB_DATASETS)
    hub_ids = {"ultrafeedback_binarized": "trl-lib/ultrafeedback_binarized", "hh-rlhf": "Anthropic/hh-rlhf",
               "kto-mix-14k": "trl-lib/kto-mix-14k", "tldr-preference": "trl-lib/tldr-preference",
               "imdb": "stanfordnlp/imdb"}
    for name in HUB_DATA_CONFIGS:  # the config reads the hub id; the tests point it at the copy
        data = OmegaConf.load(CONF / "data" / "hub" / f"{name}.yaml")
        assert data[HUB_DATASETS[name][1]] == hub_ids[name]


def test_ultrafeedback_reads_conversational_pairs_with_an_implicit_prompt(local_copies, tmp_path):
    cfg = hub_cfg("ultrafeedback_binarized", local_copies, tmp_path, "eval.num_prompts=100")
    data = resolve_data(cfg, "pairs", Prepared())
    assert len(data.rows) == len(ULTRAFEEDBACK)
    first = data.rows[0]
    assert first["prompt"] == [{"role": "user", "content": "Name a color of the sky."}]
    assert first["chosen"] == [{"role": "assistant", "content": "Blue, on a clear day."}]
    assert first["rejected"] == [{"role": "assistant", "content": "Cheese."}]
    # evaluation: the test split's distinct prompts (shuffled once), none of them trained on
    assert sorted_prompts(data.eval_items) == sorted_prompts(row["chosen"][:1] for row in ULTRAFEEDBACK_TEST)
    assert data.eval_source.startswith("data.eval_split=test")
    # PPO's prompts: the train split's, through the prompts stage, in a seeded shuffled order
    prompts = [r["prompt"] for r in read_rows(prompts_file(cfg))]
    assert sorted_prompts(prompts) == sorted_prompts(row["chosen"][:1] for row in ULTRAFEEDBACK)
    assert prompts != [row["chosen"][:1] for row in ULTRAFEEDBACK]  # not the file's order (4! orders, seeded)
    assert resolve_data(cfg, "prompts", Prepared()).rows == [{"prompt": p} for p in prompts]


def test_ultrafeedback_pairs_unpair_for_kto(local_copies, tmp_path):
    rows = resolve_data(hub_cfg("ultrafeedback_binarized", local_copies, tmp_path), "unpaired", Prepared()).rows
    assert [r["label"] for r in rows] == [True] * 4 + [False] * 4
    assert rows[0]["completion"] == [{"role": "assistant", "content": "Blue, on a clear day."}]


def test_hh_rlhf_transcripts_become_conversational_pairs(local_copies, tmp_path):
    cfg = hub_cfg("hh-rlhf", local_copies, tmp_path)
    data = resolve_data(cfg, "pairs", Prepared())
    assert len(data.rows) == sum(len(train) for train, _ in HH.values())  # the red-team file is no split's
    multi = next(r for r in data.rows if len(r["prompt"]) > 1)
    assert multi["prompt"] == [{"role": "user", "content": "Say something rude."},
                               {"role": "assistant", "content": "I'd rather not."},
                               {"role": "user", "content": "Please, just one word."}]
    assert multi["chosen"] == [{"role": "assistant", "content": "I'll keep things kind."}]
    assert multi["rejected"] == [{"role": "assistant", "content": "Idiot."}]
    assert len(data.eval_items) == 2 and len(data.eval_items[1]) == 3  # the test split, a multi-turn prompt
    prompts = [r["prompt"] for r in read_rows(prompts_file(cfg))]
    assert len(prompts) == len(data.rows) - 1  # the cat-name prompt is asked twice: kept once


def test_hh_transcript_errors_name_the_row_and_field(tmp_path):
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: other\n\nAssistant: c"}
    with pytest.raises(ValueError, match="differ before their final Assistant turn"):
        hh_transcript(bad)
    with pytest.raises(ValueError, match="field 'chosen' has text before its first"):
        hh_transcript({"chosen": "oops\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"})
    with pytest.raises(ValueError, match="field 'rejected' must start with a Human turn and end with an Assistant"):
        hh_transcript({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a"})
    path = tmp_path / "hh.jsonl"
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    cfg = compose_train(["data=local", f"data.path={path}", "data.row_format=hh_transcript", "eval.num_prompts=0"])
    with pytest.raises(DataError, match=rf"{path}: row 1: fields 'chosen' and 'rejected' differ"):
        resolve_data(cfg, "pairs", Prepared())
    cfg = compose_train(["data=local", f"data.path={path}", "data.row_format=hh_transcript", "eval.num_prompts=0",
                         "data.skip_bad_rows=true"])
    data = resolve_data(cfg, "pairs", Prepared())
    assert len(data.rows) == 1 and data.skipped == 1


def test_kto_mix_reads_unpaired_conversational_rows(local_copies, tmp_path):
    cfg = hub_cfg("kto-mix-14k", local_copies, tmp_path)
    data = resolve_data(cfg, "unpaired", Prepared())
    assert [r["label"] for r in data.rows] == [True, False, True, False]
    assert data.rows[1]["completion"] == [{"role": "assistant", "content": "Cheese."}]
    assert data.eval_items == [[{"role": "user", "content": "Name a planet."}]]
    assert len(read_rows(prompts_file(cfg))) == 3  # the sky prompt has a desirable and an undesirable row
    with pytest.raises(DataError, match="all 4 rows are invalid as pairs; the first: .*row 0: field 'chosen' is missing"):
        resolve_data(cfg, "pairs", Prepared())


def test_tldr_reads_standard_string_pairs(local_copies, tmp_path):
    cfg = hub_cfg("tldr-preference", local_copies, tmp_path)
    data = resolve_data(cfg, "pairs", Prepared())
    assert data.rows[0] == {k: TLDR[0][k] for k in ("prompt", "chosen", "rejected")}
    assert data.rows[0]["prompt"].endswith("TL;DR:")
    assert len(data.eval_items) == 1 and data.eval_source.startswith("data.eval_split=validation")


def test_imdb_prompts_are_review_openings_of_2_to_8_tokens(local_copies, tmp_path):
    cfg = hub_cfg("imdb", local_copies, tmp_path)  # model=tiny: the world's tokenizer cuts the prefixes
    tokenizer = model_tokenizer(cfg.model)
    train = [r["prompt"] for r in read_rows(prompts_file(cfg))]
    test = [r["prompt"] for r in read_rows(prompts_file(cfg, "test"))]
    for prompts, split in ((train, "train"), (test, "test")):
        reviews = [clean_review(text) for text, _ in IMDB[split]]
        assert len(prompts) == len(reviews)  # one opening per review (shuffled: the hub's splits come by label)
        for prompt in prompts:
            assert 2 <= len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) <= 8
            assert sum(review.startswith(prompt) for review in reviews) >= 1 and "<br" not in prompt
    assert len({len(p) for p in train + test}) > 1  # seeded lengths, not one fixed cut
    assert prompts_file(cfg) == prompts_file(cfg)  # cached: the same stage, the same prompts
    data = resolve_data(cfg, "prompts", Prepared())
    assert [r["prompt"] for r in data.rows] == train and data.eval_items == test


def test_imdb_dpo_samples_labels_and_trains_offline(local_copies, tmp_path):
    """The DPO paper's task end to end on the tiny model: prompts stage -> reference samples -> gold labels -> DPO."""
    cfg = hub_cfg("imdb", local_copies, tmp_path, "algo=dpo", "trainer.max_steps=1", "trainer.batch_size=2",
                  "trainer.warmup_steps=0", "stages.preferences.max_new_tokens=8", "eval.num_prompts=2",
                  "eval.max_new_tokens=8")
    metrics = run.train(cfg, tmp_path / "run")
    assert metrics["status"] == "finished" and metrics["train_rows"] >= 1
    assert "feedback_agreement_with_gold" in metrics and "gold_reward" in metrics
    assert metrics["eval_source"] == "data.eval_split=test (2 prompts)"
    # a reward model on IMDb's labelled pairs is scored on a tenth of them (the dataset has no pairs of its own)
    reward_cfg = hub_cfg("imdb", local_copies, tmp_path, "algo=reward", "stages.preferences.max_new_tokens=8")
    stages = prepare(reward_cfg, reward_cfg.algo.stages)
    data = resolve_data(reward_cfg, "pairs", stages, eval_on_rows=True)
    assert data.eval_source.startswith("data.eval_fraction=0.1") and data.eval_items and "chosen" in data.eval_items[0]


def test_eval_split_of_a_local_file_is_refused(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n")
    cfg = compose_train(["data=local", f"data.path={path}", "data.eval_split=test"])
    with pytest.raises(DataError, match="data.eval_split=test reads a split of a hub dataset, but .* is a file"):
        resolve_data(cfg, "pairs", Prepared())


# ------------------------------------------------------------------------------ PPO / RLAIF on hub data

EXPECTED_RM = {"ultrafeedback_binarized": "trl-lib/Qwen2-0.5B-Reward", "hh-rlhf": "Ray2333/gpt2-large-helpful-reward_model",
               "kto-mix-14k": "trl-lib/Qwen2-0.5B-Reward", "tldr-preference": "trl-lib/pythia-1b-deduped-tldr-rm@refs/pr/1",
               "imdb": None}


@pytest.mark.parametrize("name", sorted(EXPECTED_RM))
def test_each_hub_data_config_names_its_reward_model_and_judge(name, local_copies, tmp_path):
    ppo = hub_cfg(name, local_copies, tmp_path, "algo=ppo")
    assert ppo.algo.reward_model == EXPECTED_RM[name]  # the data config's, unless algo.reward_model is given
    rlaif = hub_cfg(name, local_copies, tmp_path, "algo=rlaif", "feedback=hub_judge")
    assert rlaif.algo.reward_model is None and "samples" in rlaif.algo.stages  # always the judge's labels
    assert rlaif.feedback.source.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert rlaif.feedback.source.principle == rlaif.data.judge_principle and rlaif.data.judge_principle


def test_ppo_without_a_reward_model_says_how_to_give_one(local_copies, tmp_path):
    cfg = hub_cfg("tldr-preference", local_copies, tmp_path, "algo=ppo", "data.reward_model=null")
    with pytest.raises(DataError, match=r"algo=ppo needs a reward model and data=tldr-preference names none.*"
                                        r"set algo\.reward_model=ID_OR_DIR"):
        prepare(cfg, cfg.algo.stages)


def test_hub_judge_without_a_judge_model_says_how_to_give_one(local_copies, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = hub_cfg("tldr-preference", local_copies, tmp_path, "feedback=hub_judge", "data.judge_model=null")
    with pytest.raises(InstantiationException, match="names no judge for its task.*feedback.source.model=HUB_ID_OR_DIR"):
        instantiate(cfg.feedback.source)


def test_ppo_on_ultrafeedback_scores_rollouts_with_the_data_configs_reward_model(local_copies, tmp_path):
    """A Qwen2.5 policy on UltraFeedback prompts, its rollouts scored by a reward model of another family with
    its own tokenizer (a shrunken GPT-2 RM, which reads them as HH transcripts): PPO rollouts and updates, LoRA;
    value_init=reward is refused for it before any model loads."""
    policy = write_model(HUB_MODELS["qwen2.5-0.5b-instruct"], tmp_path / "policy")
    rm_dir = _reward_model_copy("gpt2", tmp_path / "reward_model")
    cfg = hub_cfg("ultrafeedback_binarized", local_copies, tmp_path, "model=hub/qwen2.5-0.5b-instruct",
                  f"model.name_or_path={policy}", f"data.reward_model={rm_dir}", "algo=ppo", "peft=lora",
                  "algo.value_init=reference", "trainer.max_steps=2", "trainer.batch_size=2",
                  "trainer.warmup_steps=0", "rollout.num_minibatches=1", "rollout.ppo_epochs=1",
                  "rollout.max_new_tokens=4", "eval.num_prompts=2", "eval.max_new_tokens=4")
    metrics = run.train(cfg, tmp_path / "run")
    assert metrics["status"] == "finished" and metrics["reward_model"].endswith("/reward_model")
    assert metrics["eval_source"] == "data.eval_split=test (2 prompts)"
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(entry["objective/scores"]) for entry in log)
    refused = OmegaConf.merge(cfg, {"algo": {"value_init": "reward"}, "peft": {"enabled": False}})
    with pytest.raises(ValueError, match="set algo.value_init=reference"):
        run.train(refused, tmp_path / "refused")


def _reward_model_copy(spec_name: str, out):
    """A shrunken random sequence-classification reward model with ``spec_name``'s config and tokenizer files."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    write_model(HUB_MODELS[spec_name], out)
    config = AutoConfig.from_pretrained(out, num_labels=1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out, safe_serialization=True)
    return out


def test_a_reward_model_without_a_chat_template_reads_hh_transcripts(local_copies, tmp_path):
    """GPT-2 reward models trained on HH-RLHF (the hh-rlhf config's) have no chat template: a conversation is
    scored as the raw transcript they were trained on, its score read at the reply's last token."""
    from zoo.builders import reward_model_scorer
    from zoo.models import load_causal_lm

    rm_dir = _reward_model_copy("gpt2", tmp_path / "rm")
    policy_dir = write_model(HUB_MODELS["qwen2.5-0.5b-instruct"], tmp_path / "policy")
    cfg = hub_cfg("hh-rlhf", local_copies, tmp_path, "algo=ppo", f"model.name_or_path={policy_dir}")
    policy = load_causal_lm(str(policy_dir))
    scorer = reward_model_scorer(cfg, policy, str(rm_dir), model_tokenizer(cfg.model))
    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    text = scorer.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "Ten minutes."}],
                                                tokenize=False)
    assert text == "\n\nHuman: How do I boil an egg?\n\nAssistant: Ten minutes."  # unterminated, as trained
    scores = scorer([prompt, prompt], ["Ten minutes.", "No idea."], "cpu")
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all()) and scores[0] != scores[1]


def test_value_model_from_a_reward_model_of_another_vocabulary_is_refused(tmp_path):
    from zoo.builders import _check_same_vocabulary
    from zoo.models import load_tokenizer

    qwen = load_tokenizer(str(write_model(HUB_MODELS["qwen2.5-0.5b"], tmp_path / "qwen")))
    gpt2 = load_tokenizer(str(write_model(HUB_MODELS["gpt2"], tmp_path / "gpt2")))
    _check_same_vocabulary(qwen, qwen, "same")  # the same vocabulary: the value model may start from the RM
    with pytest.raises(ValueError, match="have another id or none in .*gpt2's vocabulary: set algo.value_init=reference"):
        _check_same_vocabulary(qwen, gpt2, str(tmp_path / "gpt2"))


def test_every_gpu_command_in_the_docs_composes():
    """docs/hub.md's copy-paste commands compose as written (the configs, keys and values exist), and the ones
    for PPO with a hub reward model of another family start the value model from the reference."""
    import re
    import shlex

    text = (CONF.parents[1] / "docs" / "hub.md").read_text()
    block = text.split("## Commands for a GPU", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [shlex.split(c) for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.startswith("zoo train")]
    assert len(commands) >= 10
    for argv in commands:
        overrides = [a for a in argv[2:] if not a.startswith("hydra.")]
        cfg = compose_train(overrides)
        OmegaConf.to_container(cfg, resolve=True)
        assert cfg.model.name.startswith(("smollm2", "qwen", "pythia", "llama", "gpt2"))
        if cfg.algo.name == "ppo" and cfg.algo.reward_model:  # a hub RM: another family's trunk cannot be the value
            assert cfg.algo.value_init == "reference"
