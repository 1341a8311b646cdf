"""Determinism: for each algorithm, the same config and seed run twice on the CPU give identical metrics.json
(timings, memory and cache hit counts aside). Slow: two runs per algorithm (measured time in
docs/correctness.md)."""

import pytest

from zoo_cli import results_of, zoo

ALGOS = ["sft", "dpo", "ipo", "kto", "orpo", "simpo", "cpo", "reward", "ppo", "rlaif", "d_rlaif", "online_dpo",
         "rloo", "grpo"]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_the_same_config_and_seed_twice_give_identical_metrics(algo, cache, tmp_path):
    for name in ("first", "second"):
        zoo("train", f"algo={algo}", "experiment=smoke", "eval.num_prompts=8", f"hydra.run.dir={tmp_path / name}",
            cache=cache)
    first, second = results_of(tmp_path / "first"), results_of(tmp_path / "second")
    assert first["status"] == "finished" and first == second
