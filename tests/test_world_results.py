"""End-to-end results on the world with default settings (slow: minutes each; run with `pytest -m slow`).

These check that each method moves gold reward the right way, as docs/algorithms.md and docs/ai-feedback.md report for 3 seeds:
the policy beats its SFT reference (win rate >= 0.6) at a finite KL, within the time budget
(PPO: its whole run, rollouts included, under 10 minutes).
"""

import json
import math
import subprocess
import sys
import time

import pytest


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "max_train_seconds"), [
    (["algo=dpo"], 300), (["algo=ipo"], 300), (["algo=ppo"], 600),
    (["algo=dpo", "feedback=judge"], 300), (["algo=rlaif"], 600),  # AI feedback: the world's judge labels
])
def test_default_run_beats_the_reference(overrides, max_train_seconds, tmp_path):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo.cli", "train", *overrides, f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=1800)
    wall_seconds = time.perf_counter() - started  # the whole command: stages (if not cached), training, eval
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["win_rate_vs_ref"] >= 0.6
    assert m["gold_reward"]["mean"] > m["ref_gold_reward"]["mean"]
    assert math.isfinite(m["kl_to_ref"]["mean"]) and m["kl_to_ref"]["mean"] > 0
    assert m["train_seconds"] < max_train_seconds
    assert wall_seconds < 600
