"""Every hub model config (``zoo/conf/model/hub/``) loads a shrunken copy of its model, written as the hub
writes it (``tests/hub_models.py``), through the real loading code, and takes a LoRA DPO step on
conversational pairs: its dtype, PAD, EOS, chat template and LoRA targets all do what the config says."""

import json
import math

import pytest
import torch
from hub_models import HUB_MODELS, write_model
from omegaconf import OmegaConf
from safetensors.torch import load_file
from scratch_model import conversational_pairs
from test_configs import CONF, compose_train

from zoo import run
from zoo.data.tokenize import tokenize_completion
from zoo.models import load_causal_lm, model_tokenizer

HUB_CONFIGS = sorted(p.stem for p in (CONF / "model" / "hub").glob("*.yaml"))


def test_every_hub_model_config_has_a_shrunken_copy():
    assert HUB_CONFIGS == sorted(HUB_MODELS)
    assert len(HUB_CONFIGS) == 11


@pytest.mark.parametrize("name", HUB_CONFIGS)
def test_hub_model_config_takes_a_lora_dpo_step(name, tmp_path):
    spec = HUB_MODELS[name]
    model_dir = write_model(spec, tmp_path / "hub" / name)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in conversational_pairs()[:4]))
    cfg = compose_train([f"model=hub/{name}", f"model.name_or_path={model_dir}", "data=local", f"data.path={pairs}",
                         "algo=dpo", "peft=lora", "trainer.max_steps=1", "trainer.batch_size=2",
                         "trainer.warmup_steps=0", "trainer.log_every=1", "eval.num_prompts=0",
                         f"stages.cache_dir={tmp_path / 'cache'}"])
    assert cfg.model.name_or_path == str(model_dir)
    m = OmegaConf.load(CONF / "model" / "hub" / f"{name}.yaml")
    assert m.name_or_path == spec.hub_id  # the config loads the hub id; the test points it at the copy

    # the tokenizer as the config sets it up: a PAD, an EOS that ends the template's assistant turn
    tokenizer = model_tokenizer(cfg.model)
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token_id is not None
    if m.pad_token is not None:
        assert tokenizer.pad_token_id == spec.special[m.pad_token] != tokenizer.eos_token_id
    prompt = [{"role": "user", "content": "Write a review."}]
    prompt_ids, completion_ids = tokenize_completion(tokenizer, prompt, "great film")
    assert tokenizer.eos_token_id in completion_ids[-2:]  # the reply ends with the EOS (ChatML adds a newline)
    assert prompt_ids[-1] != tokenizer.eos_token_id  # the prompt ends with the assistant's turn opening
    if tokenizer.bos_token_id is not None and spec.prepends_bos:
        assert prompt_ids[0] == tokenizer.bos_token_id and prompt_ids.count(tokenizer.bos_token_id) == 1
    rendered = tokenizer.decode(prompt_ids)
    assert "Today Date" not in rendered or "26 Jul 2024" in rendered  # never today's date (llama3)

    policy = load_causal_lm(str(model_dir), cfg.model.dtype, attn_implementation=cfg.model.attn_implementation)
    assert next(policy.parameters()).dtype == getattr(torch, cfg.model.dtype)
    assert policy.config.vocab_size == spec.config_json["vocab_size"]
    assert policy.config.tie_word_embeddings == spec.config_json["tie_word_embeddings"]
    del policy

    metrics = run.train(cfg, tmp_path / "run")
    assert metrics["status"] == "finished" and metrics["steps"] == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert math.isfinite(log[0]["loss"]) and log[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy = ref
    adapter = json.loads((tmp_path / "run" / "model" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(m.lora_target_modules)
    weights = load_file(str(tmp_path / "run" / "model" / "adapter_model.safetensors"))
    lora_b = [w for k, w in weights.items() if "lora_B" in k]
    assert lora_b and any(w.abs().max() > 0 for w in lora_b)  # B starts at zero: the step trained the adapters
    saved = model_tokenizer(OmegaConf.create({"name_or_path": str(tmp_path / "run" / "model"),
                                              "trust_remote_code": False}))
    assert (saved.eos_token, saved.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    assert saved.chat_template == tokenizer.chat_template  # the run's model/ tokenizes as the run did


def test_tokenizer_settings_are_checked_against_the_vocabulary(tmp_path):
    """zoo never adds a token: a PAD or EOS the vocabulary lacks, or a template whose turn end is not the EOS,
    is an error naming the key to set."""
    from zoo.models import load_tokenizer

    model_dir = write_model(HUB_MODELS["smollm2-135m"], tmp_path / "smollm2")
    with pytest.raises(ValueError, match=r"model.chat_template=chatml ends a reply with <\|im_end\|>, but the EOS "
                                         r"would be <\|endoftext\|>: set model.eos_token=<\|im_end\|>"):
        load_tokenizer(str(model_dir), chat_template="chatml")
    with pytest.raises(ValueError, match="model.pad_token='<pad>' is not in the vocabulary"):
        load_tokenizer(str(model_dir), pad_token="<pad>")
    with pytest.raises(ValueError, match="not one of zoo's templates"):
        load_tokenizer(str(model_dir), chat_template="vicuna")
    tokenizer = load_tokenizer(str(model_dir))  # no settings: the tokenizer as shipped, PAD falling back to EOS
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_a_hub_revision_is_pinned_with_an_at_sign_and_a_path_is_left_alone(tmp_path):
    from zoo.models import hub_ref

    assert hub_ref("trl-lib/pythia-1b-deduped-tldr-rm@refs/pr/1") == ("trl-lib/pythia-1b-deduped-tldr-rm",
                                                                     {"revision": "refs/pr/1"})
    assert hub_ref("gpt2@a1b2c3") == ("gpt2", {"revision": "a1b2c3"})
    assert hub_ref("Qwen/Qwen2.5-0.5B") == ("Qwen/Qwen2.5-0.5B", {})
    for path in ("/tmp/x@y/model", "outputs/run@3/model", "./run@2"):  # paths, existing or not
        assert hub_ref(path) == (path, {})
    existing = tmp_path / "org" / "name@v1"
    existing.mkdir(parents=True)
    assert hub_ref(str(existing)) == (str(existing), {})
