"""CPU smoke runs composed through Hydra: every algorithm, LoRA, a multirun, bad input, the run-dir contract.

They use the committed world with ``experiment=smoke`` (a few steps, tiny stages), through the real
``zoo`` command, so they check wiring and contracts, not results (results: tests marked slow and
the measured numbers in docs/).
"""

import json
import re

import pytest
import torch
from zoo_cli import zoo

RUN_FILES = ("config.yaml", "log.jsonl", "metrics.json", "samples.jsonl")
METRICS = ("gold_reward", "kl_to_ref", "win_rate_vs_ref", "mean_length", "distinct_2", "fluency",
           "train_seconds", "peak_memory_mb", "samples_per_second", "status")


def check_run_dir(run_dir, algo):
    for name in RUN_FILES:
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["algo"] == algo
    for key in METRICS:
        assert key in metrics, key
    assert 0.0 <= metrics["win_rate_vs_ref"] <= 1.0
    assert metrics["gold_reward"]["ci95_low"] <= metrics["gold_reward"]["mean"] <= metrics["gold_reward"]["ci95_high"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and "loss" in log[0] and log[-1]["step"] == 3
    # paths are portable (run dirs can be copied anywhere): the world's assets and the stage cache by name,
    # never the absolute paths of this machine; only the cache setting itself is as it was given
    assert metrics["reference"].startswith("${stages.cache_dir}/sft-")
    for name in ("metrics.json", "config.yaml"):
        absolute = [line.strip() for line in (run_dir / name).read_text().splitlines()
                    if re.search(r"""(^|[\s"'=:(])/\w""", line)]
        assert all(line.startswith("cache_dir:") for line in absolute), absolute
    return metrics, log


@pytest.mark.parametrize("algo", ["sft", "dpo", "ipo", "kto", "orpo", "simpo", "cpo"])  # ppo: test_ppo_runs
def test_each_algorithm_runs(algo, cache, tmp_path):
    zoo("train", f"algo={algo}", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics, log = check_run_dir(tmp_path, algo)
    if algo in ("dpo", "ipo", "orpo", "simpo", "cpo"):
        assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"} <= set(log[0])
    if algo == "orpo":
        assert {"log_odds_ratio", "log_odds_chosen", "nll_loss"} <= set(log[0])
        assert metrics["policy_init"] != metrics["reference"]  # ORPO starts from the base model, not the SFT policy
    if algo == "kto":
        assert "kl" in log[0] and ({"rewards/chosen", "rewards/rejected"} & set(log[0]))
    if algo == "cpo":
        assert "nll_loss" in log[0]
    if algo in ("dpo", "ipo", "kto", "simpo", "cpo"):
        assert metrics["policy_init"] == metrics["reference"]
    if algo != "sft":
        assert (tmp_path / "checkpoints" / "step_2").is_dir()
    assert (tmp_path / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_reward_model_runs(peft, cache, tmp_path):
    zoo("train", "algo=reward", f"peft={peft}", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["num_eval_pairs"] >= 1
    for key in ("rm_accuracy_vs_labels", "rm_accuracy_vs_gold", "rm_spearman_gold"):
        assert key in metrics
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"loss", "rewards/margins", "rewards/accuracies"} <= set(log[0])


PPO_LOG_KEYS = {"objective/kl", "objective/entropy", "objective/scores", "objective/gold", "policy/approxkl",
                "policy/clipfrac", "val/vf_loss", "val/clipfrac", "val/explained_variance"}


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_ppo_runs(peft, cache, tmp_path):
    """PPO through Hydra: reward stage -> rollouts -> PPO updates; under LoRA the RM is an adapter of the one base."""
    zoo("train", "algo=ppo", f"peft={peft}", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics, log = check_run_dir(tmp_path, "ppo")
    assert PPO_LOG_KEYS <= set(log[0]) and PPO_LOG_KEYS <= set(log[-1])
    assert metrics["reward_model_shares_base"] is (peft == "lora")
    assert (tmp_path / "checkpoints" / "step_2").is_dir()  # smoke rollouts: 2 optimizer steps each
    if peft == "lora":  # the saved model is the policy's adapter only, not the value / reward adapters
        assert (tmp_path / "model" / "adapter_model.safetensors").exists()
        assert not (tmp_path / "model" / "value").exists() and not (tmp_path / "model" / "reward").exists()


CRITIC_FREE_LOG_KEYS = {"objective/kl", "objective/entropy", "objective/scores", "objective/gold", "policy/approxkl",
                       "policy/clipfrac", "policy/pg_loss", "rollout/frac_reward_zero_std"}


@pytest.mark.parametrize(("algo", "peft"), [("rloo", "none"), ("grpo", "lora")])
def test_critic_free_algos_run(algo, peft, cache, tmp_path):
    """RLOO and GRPO through Hydra: reward stage -> k rollouts per prompt -> updates of the policy alone (no value
    model, so no val/ metrics and no value_init); under LoRA the RM is an adapter of the one base."""
    zoo("train", f"algo={algo}", f"peft={peft}", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    metrics, log = check_run_dir(tmp_path, algo)
    assert CRITIC_FREE_LOG_KEYS <= set(log[0]) and CRITIC_FREE_LOG_KEYS <= set(log[-1])
    assert not any(key.startswith("val/") for key in log[0]) and "value_init" not in metrics
    assert ("policy/kl_loss" in log[0]) is (algo == "grpo")  # GRPO's KL is a loss term, RLOO's a reward penalty
    assert metrics["reward_model_shares_base"] is (peft == "lora")
    assert (tmp_path / "checkpoints" / "step_2").is_dir()
    if peft == "lora":
        assert (tmp_path / "model" / "adapter_model.safetensors").exists()


def test_lora_saves_only_the_adapter(cache, tmp_path):
    zoo("train", "algo=dpo", "peft=lora", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache)
    check_run_dir(tmp_path, "dpo")
    assert (tmp_path / "model" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_multirun_sweep(cache, tmp_path):
    zoo("train", "-m", "algo=dpo,ipo", "seed=0,1", "experiment=smoke", "eval.num_prompts=4",
        f"hydra.sweep.dir={tmp_path}", cache=cache)
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").exists())
    assert len(runs) == 4 and {r.split("-")[0] for r in runs} == {"dpo", "ipo"}


def test_local_file_trains_the_given_model(cache, tmp_path):
    """`data=local data.path=FILE model.name_or_path=DIR`: no stages; policy and reference start from DIR."""
    from zoo.world import paths

    rows = [{"chosen": f"The plot was great number {i}.", "rejected": f"The plot was awful number {i}."}
            for i in range(40)]  # implicit prompt, standard format
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    zoo("train", "algo=dpo", "data=local", f"data.path={data}", f"model.name_or_path={paths.MODEL}",
        "trainer=cpu_smoke", "eval.num_prompts=4", "eval.max_new_tokens=8", f"hydra.run.dir={run_dir}", cache=cache)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["reference"] == "${world_asset:model}"  # portable
    assert metrics["data_source"] == str(data) and "gold_reward" not in metrics  # no world gold on local data


def test_bad_dataset_fails_with_one_paragraph(cache, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n"
                    + json.dumps({"prompt": "a", "chosen": 7, "rejected": "c"}) + "\n")
    run_dir = tmp_path / "run"
    proc = zoo("train", "data=local", f"data.path={data}", "trainer=cpu_smoke", f"hydra.run.dir={run_dir}",
               cache=cache, check=False)
    assert proc.returncode != 0
    assert "row 1" in proc.stderr and "'chosen'" in proc.stderr and "Traceback" not in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "row 1" in metrics["error"]


def test_a_failed_run_does_not_stop_the_sweep(cache, tmp_path):
    """beta=-1 is a bad config value: that run fails with its error recorded, the other finishes, exit 1."""
    proc = zoo("train", "-m", "algo=dpo", "algo.loss.beta=0.1,-1", "experiment=smoke", "eval.num_prompts=4",
               f"hydra.sweep.dir={tmp_path}", cache=cache, check=False)
    stderr = " ".join(proc.stderr.split())  # the one-paragraph error is wrapped at 100 columns
    assert proc.returncode == 1 and "algo.loss.beta must be > 0" in stderr and "Traceback" not in stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.rglob("metrics.json"))
    assert statuses == ["failed", "finished"]


def test_qlora_runs_where_bitsandbytes_does(cache, tmp_path):
    """quant=4bit (QLoRA: NF4 base + LoRA) trains on this machine's device when bitsandbytes runs 4-bit layers
    there (0.50 does on the CPU), and the run says what it measured: nothing is skipped."""
    from zoo.models import bitsandbytes_problem

    proc = zoo("train", "quant=4bit", "peft=lora", "experiment=smoke", f"hydra.run.dir={tmp_path}", cache=cache,
               check=False)
    if bitsandbytes_problem(4, "cuda" if torch.cuda.is_available() else "cpu") is None:
        assert proc.returncode == 0, proc.stderr[-2000:]
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["steps"] == 3
    else:
        assert proc.returncode == 1 and "use quant=none" in " ".join(proc.stderr.split())


def test_quantization_without_a_backend_fails_clearly(monkeypatch):
    from zoo import models

    monkeypatch.setattr(models, "bitsandbytes_problem", lambda bits, device: "no backend for this device")
    with pytest.raises(RuntimeError, match="cannot run 4-bit layers on this machine's .*use quant=none"):
        models.quantization_config(4, torch.float32)
    with pytest.raises(ValueError, match="must be 4, 8 or null"):
        models.quantization_config(3, torch.float32)


def test_mistyped_key_fails_at_compose_time(cache, tmp_path):
    proc = zoo("train", "trainer.max_stepz=3", f"hydra.run.dir={tmp_path}", cache=cache, check=False)
    assert proc.returncode != 0 and "max_stepz" in proc.stderr


@pytest.mark.parametrize("command", [["train"], ["compare"], ["label"], ["report"], ["model", "fetch"],
                                     ["world", "build"], ["data", "check"], ["export"]], ids=lambda c: " ".join(c))
def test_every_command_answers_help(command, tmp_path):
    """DESIGN sec. 4: each command answers --help (exit 0, its usage or Hydra's on stdout, nothing run)."""
    proc = zoo(*command, "--help", cache=tmp_path)
    assert proc.returncode == 0 and ("usage" in proc.stdout.lower() or "Powered by Hydra" in proc.stdout)
    assert not list(tmp_path.iterdir())  # no stage was built
