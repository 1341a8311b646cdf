"""Two CPU processes (torchrun, gloo) train like one process with the same global batch, and one of them writes.

accelerate reads CPU processes as one distributed run only when told ``cpu=True``; before zoo said so, each
torchrun process trained alone on all the data and wrote its own copy of every log line. The data shard
(process i takes micro-batches i, i + 2, ...), the gradient average, the metrics gathered over processes and
the learning-rate schedule (accelerate steps a prepared scheduler once per process) must all line up for the
loss trajectories to agree.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from zoo_cli import log_of, zoo, zoo_command

# 24 smoke pairs (48 KTO rows): a global batch of 8 divides them, so both runs see the same rows every step
COMMON = ["experiment=smoke", "trainer.max_steps=5", "trainer.warmup_steps=3", "trainer.save_every=0",
          "eval.num_prompts=0", "trainer.log_every=1", "trainer.cpu_threads=1"]


def losses(run_dir):
    return [(row["step"], row["loss"], row["lr"]) for row in map(json.loads, open(run_dir / "log.jsonl"))]


# launched with the shipped accelerate configs: DDP as it is, and FSDP, which accelerate runs on GPUs only: on
# CPU processes it trains data-parallel, and zoo says so
@pytest.mark.parametrize(("algo", "launch_config"), [("dpo", "ddp"), ("kto", "fsdp_full"), ("simpo", None),
                                                     ("cpo", None)])
def test_two_processes_follow_the_one_process_run_with_the_same_global_batch(algo, launch_config, cache, tmp_path):
    zoo("train", f"algo={algo}", *COMMON, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}", cache=cache)
    two_procs = zoo("train", f"algo={algo}", *COMMON, "trainer.batch_size=4", "eval.num_prompts=4",
                    f"hydra.run.dir={tmp_path / 'two'}", cache=cache, processes=2, accelerate_config=launch_config)
    assert ("asks for FSDP, which accelerate runs on GPUs only" in two_procs.stdout) == (launch_config == "fsdp_full")
    # (SimPO and CPO under torchrun; CPO's NLL is a token mean over both processes' chosen tokens)
    # one writer: the main process alone evaluates, saves the model and writes metrics.json and the summary
    assert two_procs.stdout.count(f"[zoo] {algo} seed 0 ->") == 1, two_procs.stdout[-2000:]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["num_eval_prompts"] == 4 and "gold_reward" in metrics
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _, _ in two] == [1, 2, 3, 4, 5]  # one writer: each step logged once, not once per process
    assert [lr for _, _, lr in two] == [lr for _, _, lr in one]  # the warm-up counts updates, not process steps
    for (step, a, _), (_, b, _) in zip(one, two):
        assert b == pytest.approx(a, abs=2e-6), f"step {step}: {a} vs {b}"
    assert one[-1][1] != pytest.approx(one[0][1], abs=1e-4)  # the runs moved: equal because trained alike


PPO = ["algo=ppo", "experiment=smoke", "trainer.batch_size=4", "trainer.save_every=2", "eval.num_prompts=0",
       "trainer.log_every=1", "trainer.cpu_threads=1", "algo.loss.adaptive_kl_target=0.01",
       "algo.loss.whiten_advantages=false"]  # unwhitened, advantages carry the RM-score normalisation
ROLLOUT_METRICS = ("objective/scores", "objective/gold", "rollout/length", "rollout/eos_rate", "objective/entropy")



def test_two_process_ppo_builds_its_stages_once_reduces_its_rollouts_and_resumes_after_a_kill(tmp_path):
    cache = tmp_path / "cache"  # cold: one process builds the stages (SFT, samples, labels, RM) while the other waits
    zoo("train", *PPO, "trainer.max_steps=12", f"hydra.run.dir={tmp_path / 'straight'}", cache=cache, processes=2)
    straight = log_of(tmp_path / "straight")
    assert [row["step"] for row in straight] == list(range(1, 13))

    # process i samples with seed + 7919 i; a 1-process run with that seed draws the same first rollout (the
    # policy starts as the reference, the value head at zero), so the 2-process step 1 must log their mean
    alone = []
    for seed in (0, 7919):
        zoo("train", *PPO, "trainer.max_steps=1", f"seed={seed}", f"hydra.run.dir={tmp_path / f'alone{seed}'}",
            cache=cache)
        alone.append(log_of(tmp_path / f"alone{seed}")[0])
    for name in ROLLOUT_METRICS:
        assert straight[0][name] == pytest.approx((alone[0][name] + alone[1][name]) / 2, abs=1e-6), name
    assert alone[0]["objective/scores"] != pytest.approx(alone[1]["objective/scores"], abs=1e-4)  # not trivially
    # the adaptive KL coefficient moves with the KL of the whole rollout batch, alike on both processes
    assert straight[-1]["objective/kl_coef"] != straight[0]["objective/kl_coef"]

    # SIGKILL both processes (and torchrun) after the step-4 checkpoint, rerun the command: it resumes exactly
    argv, env = zoo_command("train", *PPO, "trainer.max_steps=12", f"hydra.run.dir={tmp_path / 'killed'}",
                            cache=cache, processes=2)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoint = tmp_path / "killed" / "checkpoints" / "step_4" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (tmp_path / "killed" / "model").exists()  # killed mid-run
    zoo("train", *PPO, "trainer.max_steps=12", f"hydra.run.dir={tmp_path / 'killed'}", cache=cache, processes=2)
    resumed = log_of(tmp_path / "killed")
    assert resumed[-1]["step"] == 12
    assert resumed[-1]["objective/kl_coef"] == pytest.approx(straight[-1]["objective/kl_coef"], rel=1e-9)
    for name in ("loss", *ROLLOUT_METRICS):
        assert resumed[-1][name] == pytest.approx(straight[-1][name], abs=1e-6), name
    weights = [load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("straight", "killed")]
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=0, atol=1e-6, msg=name)


def test_two_process_online_dpo_logs_the_pairs_of_both_processes(cache, tmp_path):
    """Online DPO samples and labels its pairs on each process; step 1 (the reference's pairs, as in a 1-process
    run with process i's seed, seed + 7919 i) logs the mean of both processes' pair metrics."""
    online = ["algo=online_dpo", "experiment=smoke", "trainer.batch_size=4", "eval.num_prompts=0",
              "trainer.log_every=1", "trainer.cpu_threads=1", "trainer.save_every=0"]
    zoo("train", *online, "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'two'}", cache=cache, processes=2)
    two = log_of(tmp_path / "two")
    assert [row["step"] for row in two] == [1, 2, 3]
    alone = []
    for seed in (0, 7919):
        zoo("train", *online, "trainer.max_steps=1", f"seed={seed}", f"hydra.run.dir={tmp_path / f'alone{seed}'}",
            cache=cache)
        alone.append(log_of(tmp_path / f"alone{seed}")[0])
    for name in ("online/label_confidence", "online/chosen_length", "online/gold_margin", "logps/chosen"):
        assert two[0][name] == pytest.approx((alone[0][name] + alone[1][name]) / 2, abs=1e-5), name
    assert alone[0]["online/label_confidence"] != pytest.approx(alone[1]["online/label_confidence"], abs=1e-6)


# RLOO's run differs from GRPO's in the loss alone (unit-tested); it is in the slow set to keep the suite's time
@pytest.mark.parametrize("algo", [pytest.param("rloo", marks=pytest.mark.slow), "grpo"])
def test_two_process_critic_free_rollouts_keep_each_group_on_its_process(algo, cache, tmp_path):
    """RLOO and GRPO: each process samples k completions for each of its own prompts, so a group (and its
    baseline) lives on one process, as in a 1-process run with that process's seed (seed + 7919 i); step 1 (the
    reference's rollouts) logs the mean of the two 1-process runs' rollout metrics and loss. The RM scores are
    left unnormalised: their normalisation is over every process's first rollout (as PPO's), which a 1-process
    run cannot reproduce, and it would move the advantages of the rows that end with EOS."""
    common = [f"algo={algo}", "experiment=smoke", "trainer.batch_size=4", "eval.num_prompts=0", "trainer.log_every=1",
              "trainer.cpu_threads=1", "trainer.save_every=0", "algo.loss.normalize_scores=false"]
    zoo("train", *common, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'two'}", cache=cache, processes=2)
    two = log_of(tmp_path / "two")
    assert [row["step"] for row in two] == [1, 2]
    alone = []
    for seed in (0, 7919):
        zoo("train", *common, "trainer.max_steps=1", f"seed={seed}", f"hydra.run.dir={tmp_path / f'alone{seed}'}",
            cache=cache)
        alone.append(log_of(tmp_path / f"alone{seed}")[0])
    for name in ("loss", "objective/kl", "rollout/frac_reward_zero_std", *ROLLOUT_METRICS):
        assert two[0][name] == pytest.approx((alone[0][name] + alone[1][name]) / 2, abs=1e-5), name
    assert alone[0]["objective/scores"] != pytest.approx(alone[1]["objective/scores"], abs=1e-4)  # not trivially

