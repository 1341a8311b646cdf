"""RLAIF: the label stage and ``zoo label``, the world judge asset, the real-judge config on a local
model, and Hydra smoke runs of feedback=judge with every kind of loss, algo=rlaif and algo=online_dpo."""

import json
import shutil
from pathlib import Path

import pytest
from zoo_cli import zoo

from zoo import stages
from zoo.config import compose_train_config
from zoo.world import paths

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PAIRS = [{"prompt": "The movie was", "chosen": " a dull mess. I hated it.", "rejected": " a wonderful film. I loved it."},
         {"prompt": "The acting was", "chosen": " superb and moving.", "rejected": " awful and boring."},
         {"prompt": "The plot was", "chosen": " fine.", "rejected": " fine."}]


def test_world_judge_asset_is_shipped_and_measured():
    """The world's judge loads like a hub model and its measured agreement with gold is in the issue's band."""
    info = json.loads((paths.JUDGE / "judge_info.json").read_text())
    assert 0.70 <= info["agreement_with_gold"] <= 0.90, info["agreement_with_gold"]
    assert abs(info["position_bias"]) < 0.1 and info["pairs"] >= 300
    from zoo.world.judge_train import world_judge

    judge = world_judge()
    out = judge.judge(["The movie was"] * 2, [" a wonderful, moving film. I loved it.", " a dull, awful mess."],
                      [" a dull, awful mess.", " a wonderful, moving film. I loved it."])
    assert out.prob_first[0] > 0.5 > out.prob_first[1]  # an easy pair, both ways round


def test_instructions_inside_a_response_do_not_make_it_win():
    """Prompt injection on the world judge: gold-worse responses told to say "answer A" / "answer B" or
    carrying a fake assistant turn win no more often than with a neutral sentence appended (the
    control for merely adding text). The rates are printed; docs/ai-feedback.md reports the full-size ones."""
    from zoo.world.injection import injection_rates
    from zoo.world.judge_train import judge_pairs, world_judge

    pairs = judge_pairs(paths.MODEL, 160, seed=99)  # prompts of a seed neither the judge nor the data used
    rates = injection_rates(world_judge(), pairs)
    print(rates)
    assert rates["pairs"] >= 60
    for attack in ("ignore_answer_a", "ignore_answer_b", "fake_turn"):
        assert rates[attack] <= rates["neutral_suffix"] + 0.1, (attack, rates)


def test_label_stage_relabels_pairs_with_the_judge_and_caches(tmp_path, monkeypatch):
    cfg = compose_train_config(["feedback=judge", "experiment=smoke", f"stages.cache_dir={tmp_path / 'cache'}"])
    source = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    labelled = stages.label_stage(cfg, source).path
    rows = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert len(rows) == 2  # the identical pair is dropped
    # the judge overturns the file's (deliberately wrong) labels: the positive response is chosen
    assert [r["chosen"] for r in rows] == [" a wonderful film. I loved it.", " superb and moving."]
    assert all(0.5 < r["confidence"] <= 1.0 for r in rows)
    info = json.loads((labelled.parent / "stage.json").read_text())
    assert info["stage"] == "labels" and info["agreement_with_gold"] == 1.0 and "position_bias" in info

    from zoo.feedback import judge as judge_module

    monkeypatch.setattr(judge_module.LMJudge, "__init__", lambda *a, **k: pytest.fail("a cached label stage was rebuilt"))
    assert stages.label_stage(cfg, source).path == labelled


def test_a_judge_can_abstain_below_a_confidence(tmp_path):
    """feedback.min_confidence: pairs the judge labels with P(chosen > rejected) below it are dropped
    and counted; an impossible threshold is refused."""
    cache = f"stages.cache_dir={tmp_path / 'cache'}"
    source = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:2])
    everything = stages.label_stage(compose_train_config(["feedback=judge", cache]), source).path
    confidences = sorted(json.loads(line)["confidence"] for line in everything.read_text().splitlines())
    threshold = (confidences[0] + confidences[1]) / 2  # between the two pairs' confidences
    kept = stages.label_stage(compose_train_config(["feedback=judge", cache, f"feedback.min_confidence={threshold}"]),
                              source).path
    assert [json.loads(line)["confidence"] for line in kept.read_text().splitlines()] == [confidences[1]]
    assert json.loads((kept.parent / "stage.json").read_text())["abstained"] == 1
    with pytest.raises(ValueError, match="min_confidence"):
        stages.label_stage(compose_train_config(["feedback=judge", cache, "feedback.min_confidence=1.5"]), source)


def test_label_stage_key_follows_the_judge_files(tmp_path):
    """A judge retrained in place (same path, new weights) is new feedback: a new key, never stale labels."""
    judge_dir = tmp_path / "judge"
    shutil.copytree(paths.JUDGE, judge_dir)
    cfg = compose_train_config(["feedback=judge", f"feedback.source.model={judge_dir}"])
    before = stages.config_identity(cfg.feedback)
    (judge_dir / "config.json").write_text((judge_dir / "config.json").read_text() + " ")
    assert stages.config_identity(cfg.feedback) != before
    cfg.feedback.source.cache_dir = str(tmp_path / "elsewhere")  # where judgements are cached changes nothing
    assert stages.config_identity(cfg.feedback) == stages.config_identity(
        compose_train_config(["feedback=judge", f"feedback.source.model={judge_dir}"]).feedback)


def test_zoo_label_writes_a_preference_dataset(cache, tmp_path):
    source = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "judged.jsonl"
    proc = zoo("label", "--input", str(source), "--out", str(out), "feedback=judge", cache=cache)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"prompt", "chosen", "rejected", "confidence"} <= set(rows[0]) and len(rows) == 2
    assert "agreement_with_gold" in proc.stdout
    from zoo.data.load import load_rows

    load_rows("pairs", str(out), rows)  # the output is a valid paired dataset for every loss


def test_zoo_label_names_the_bad_row_and_field(cache, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [PAIRS[0], {"prompt": "The plot was", "first": " good.", "second": ""}])
    proc = zoo("label", "--input", str(bad), "feedback=judge", cache=cache, check=False)
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode == 1 and "bad.jsonl: row 1" in stderr and "Traceback" not in stderr


@pytest.fixture(scope="module")
def local_chat_llm(tmp_path_factory):
    """A tiny random Qwen2 with a ChatML template, saved like a hub download (no network)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    out = tmp_path_factory.mktemp("qwen_like")
    tokenizer = AutoTokenizer.from_pretrained(paths.MODEL)
    tokenizer.chat_template = CHATML
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def test_llm_judge_config_runs_on_a_local_chat_model(local_chat_llm, cache, tmp_path):
    """feedback=llm_judge (Qwen2.5-1.5B-Instruct by default) on a locally saved chat model: the chat
    template is applied and the labels come out in the dataset schema; nothing is downloaded."""
    cfg = compose_train_config(["feedback=llm_judge"])
    assert cfg.feedback.source.model == "Qwen/Qwen2.5-1.5B-Instruct" and not cfg.feedback.source.trust_remote_code
    source = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "judged.jsonl"
    zoo("label", "--input", str(source), "--out", str(out), "feedback=llm_judge",
        f"feedback.source.model={local_chat_llm}", "feedback.source.dtype=float32", cache=cache)
    assert len(out.read_text().splitlines()) == 2
    from zoo.feedback.judge import LMJudge

    judge = LMJudge(str(local_chat_llm), cache_dir=None)
    assert judge.chat and judge.render("p", "x", "y").endswith("<|im_start|>assistant\n")


RLAIF_METRICS = ("judge_win_rate_vs_ref", "judge_position_bias", "feedback_agreement_with_gold",
                 "feedback_position_bias", "win_rate_vs_ref")


@pytest.mark.parametrize("algo", ["dpo", "kto", pytest.param("orpo", marks=pytest.mark.slow),
                                  pytest.param("ipo", marks=pytest.mark.slow)])
def test_any_loss_learns_from_the_judge(algo, cache, tmp_path):
    """A paired and an unpaired loss on judge labels in the default run; ORPO and IPO with -m slow."""
    zoo("train", f"algo={algo}", "feedback=judge", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["feedback"] == "judge"
    for key in RLAIF_METRICS:
        assert key in metrics, key


def test_rlaif_runs_judge_labels_reward_model_ppo(cache, tmp_path):
    zoo("train", "algo=rlaif", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and (metrics["algo"], metrics["feedback"]) == ("rlaif", "judge")
    for key in RLAIF_METRICS:
        assert key in metrics, key
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "objective/scores" in log[0] and "policy/clipfrac" in log[0]  # the PPO machinery


def test_online_dpo_samples_and_judges_pairs_each_step(cache, tmp_path):
    zoo("train", "algo=online_dpo", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["online_feedback"] == "judge"
    assert metrics["data_source"] == "${world_asset:data/preference_prompts.jsonl}"  # prompts only: pairs come online
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "online/label_confidence" in log[0] and "rewards/margins" in log[0]


def test_online_feedback_refuses_an_unpaired_loss(cache, tmp_path):
    proc = zoo("train", "algo=online_dpo", "algo.loss._target_=zoo.losses.KTOLoss", "~algo.loss.label_smoothing",
               "experiment=smoke",
               f"hydra.run.dir={tmp_path}", cache=cache, check=False)
    assert proc.returncode == 1 and "needs a paired loss" in " ".join(proc.stderr.split())


def test_direct_rlaif_rewards_rollouts_with_the_judge_rating(cache, tmp_path):
    """algo=d_rlaif: PPO scored by the judge's expected 1-10 rating; no reward model is built or loaded."""
    own_cache = tmp_path / "cache"  # a fresh cache, to see that no reward stage is built
    zoo("train", "algo=d_rlaif", "experiment=smoke", f"hydra.run.dir={tmp_path / 'run'}", cache=own_cache)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["reward_model"] == "judge rating (judge)"
    assert list(own_cache.glob("sft-*")) and not list(own_cache.glob("*reward-*"))
    # the rollouts were scored in score mode: ratings (> 1) sit in the judge's cache next to the eval's
    # pairwise P(A) values (<= 1)
    values = [json.loads(line)["value"] for line in (own_cache / "judge" / "judge_cache.jsonl").read_text().splitlines()]
    assert sum(v > 1.0 for v in values) >= 8  # at least one rollout of 8 rated (a repeated text is a cache hit)


def test_direct_rlaif_needs_a_judge(cache, tmp_path):
    proc = zoo("train", "algo=d_rlaif", "feedback=gold", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache,
               check=False)
    assert proc.returncode == 1 and "score mode" in " ".join(proc.stderr.split())
