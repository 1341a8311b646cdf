"""Model cards and ``zoo export``: every saved model/ carries a hub-format card; an exported model loads with
plain ``from_pretrained`` and gives the run's trained policy's log-probs on fixed text."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from zoo.export import export, resolve_portable
from zoo.models import load_causal_lm
from zoo_cli import zoo

TEXT = "The film was a delight from start to finish, and the cast"


def logps(model, tokenizer):
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


@pytest.fixture(scope="module")
def lora_run(cache, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lora-run")
    zoo("train", "algo=dpo", "peft=lora", "experiment=smoke", "eval.num_prompts=4", f"hydra.run.dir={run_dir}",
        cache=cache)
    return run_dir


def card_header(path):
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_the_saved_model_has_a_card_with_the_run(lora_run):
    header, text = card_header(lora_run / "model" / "README.md")
    assert header["library_name"] == "peft" and "dpo" in header["tags"]
    assert "| loss.beta | 0.1 |" in text and "| LoRA | r=8, alpha=16" in text
    assert "gold reward" in text and "zoo train" in text and "commit" in text
    assert "| base model | `${world_asset:model}` |" in text  # portable: no absolute path of this machine
    assert "| trained from | `${stages.cache_dir}/sft-" in text and "the weights the adapter sits on" in text


def test_merged_export_loads_with_from_pretrained_alone_and_gives_the_policys_logps(lora_run, cache, tmp_path):
    from peft import PeftModel

    out = export(lora_run, tmp_path / "merged", merge=True, cache_dir=str(cache))
    assert not (out / "adapter_config.json").exists() and (out / "generation_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: no peft, no zoo
    tokenizer = AutoTokenizer.from_pretrained(out)
    metrics = json.loads((lora_run / "metrics.json").read_text())
    base = load_causal_lm(resolve_portable(metrics["policy_init"], str(cache)))
    trained = PeftModel.from_pretrained(base, str(lora_run / "model"))
    torch.testing.assert_close(logps(exported, tokenizer), logps(trained, tokenizer), rtol=0, atol=1e-5)
    with trained.disable_adapter():  # the base alone: training moved it, so the match above is not trivial
        assert not torch.allclose(logps(exported, tokenizer), logps(trained, tokenizer), atol=1e-4)
    header, _ = card_header(out / "README.md")
    assert header["library_name"] == "transformers"


def test_adapter_export_and_cli(lora_run, cache, tmp_path):
    proc = zoo("export", str(lora_run), "--out", str(tmp_path / "adapter"), cache=cache)
    assert "exported" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) >= ["README.md", "adapter_config.json",
                                                                         "adapter_model.safetensors"]
    again = zoo("export", str(lora_run), "--out", str(tmp_path / "adapter"), cache=cache, check=False)
    assert again.returncode == 1 and "is not empty" in " ".join(again.stderr.split())  # wrapped at 100 columns
