"""Two CPU processes (torchrun, gloo) train like one process with the same global batch, and one of them writes.

accelerate reads CPU processes as one distributed run only when told ``cpu=True``; before zoo said so, each
torchrun process trained alone on all the data and wrote its own copy of every log line. The data shard
(process i takes micro-batches i, i + 2, ...), the gradient average, the metrics gathered over processes and
the learning-rate schedule (accelerate steps a prepared scheduler once per process) must all line up for the
loss trajectories to agree.
"""

import json

import pytest

from zoo_cli import zoo

# 24 smoke pairs (48 KTO rows): a global batch of 8 divides them, so both runs see the same rows every step
COMMON = ["experiment=smoke", "trainer.max_steps=5", "trainer.warmup_steps=3", "trainer.save_every=0",
          "eval.num_prompts=0", "trainer.log_every=1", "trainer.cpu_threads=1"]


def losses(run_dir):
    return [(row["step"], row["loss"], row["lr"]) for row in map(json.loads, open(run_dir / "log.jsonl"))]


@pytest.mark.parametrize("algo", ["dpo", "kto"])
def test_two_processes_follow_the_one_process_run_with_the_same_global_batch(algo, cache, tmp_path):
    zoo("train", f"algo={algo}", *COMMON, "trainer.batch_size=8", f"hydra.run.dir={tmp_path / 'one'}", cache=cache)
    two_procs = zoo("train", f"algo={algo}", *COMMON, "trainer.batch_size=4", "eval.num_prompts=4",
                    f"hydra.run.dir={tmp_path / 'two'}", cache=cache, processes=2)
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
