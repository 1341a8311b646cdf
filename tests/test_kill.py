"""SIGKILL anywhere: a `zoo train` killed at a named point (``ZOO_KILL_AT``, ``zoo.files.kill_point``) and run
again with the same command in the same run directory completes, with the final metrics of a run never
killed; nothing half-written is read back (a torn line of a log or of the judge's cache is skipped and
counted). One fast case runs by default; the rest of the harness is ``slow``."""

import csv
import json
import os
import signal
import subprocess
import time

import pytest

from zoo.files import read_jsonl
from zoo_cli import results_of, zoo, zoo_command

COMMON = ["experiment=smoke", "trainer.max_steps=6", "trainer.save_every=2", "trainer.log_every=1",
          "eval.num_prompts=4"]
def killed_then_rerun(args, run_dir, cache, kill_at):
    """``zoo train ARGS`` SIGKILLed at ``kill_at``, then the same command again; the rerun's output."""
    argv, env = zoo_command("train", *args, f"hydra.run.dir={run_dir}", cache=cache)
    killed = subprocess.run(argv, env={**env, "ZOO_KILL_AT": kill_at}, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, f"never reached {kill_at}:\n{killed.stderr[-2000:]}"
    return zoo("train", *args, f"hydra.run.dir={run_dir}", cache=cache)


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    """The results of runs never killed, per algorithm (stages built here, so a kill case finds them)."""
    done = {}

    def get(algo):
        if algo not in done:
            run_dir = tmp_path_factory.mktemp(f"straight-{algo}")
            zoo("train", f"algo={algo}", *COMMON, f"hydra.run.dir={run_dir}", cache=cache)
            done[algo] = results_of(run_dir)
        return done[algo]
    return get


def test_killed_while_writing_a_checkpoint_then_rerun_equals_the_uninterrupted_run(uninterrupted, cache, tmp_path):
    """Killed with the step-4 checkpoint saved but not yet marked complete nor renamed: the rerun resumes from
    step 2's and ends where the run never killed ended."""
    expected = uninterrupted("dpo")
    killed_then_rerun(["algo=dpo", *COMMON], tmp_path, cache, "checkpoint:2")
    assert results_of(tmp_path) == expected
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 3, 4, 5, 6]  # resumed from step_2: steps 3-4 again


SLOW_CASES = [
    ("dpo", "log:3"),  # a torn log.jsonl line (half of step 3's)
    ("dpo", "metrics"),  # metrics.json half-written (to its temporary file): the run counts as unfinished
    ("kto", "checkpoint:1"),
    ("ppo", "rollout:2"),  # mid-rollout: sampled, not yet scored
    ("online_dpo", "judge-cache:2"),  # a torn line at the end of the judge's cache (a cache of its own: cold)
    ("online_dpo", "log:4"),
    ("ppo", "metrics"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("algo", "kill_at"), SLOW_CASES, ids=[f"{a}-{k}" for a, k in SLOW_CASES])
def test_killed_at_a_named_point_then_rerun_equals_the_uninterrupted_run(algo, kill_at, uninterrupted, cache,
                                                                       tmp_path):
    expected = uninterrupted(algo)
    own_judge_cache = [f"feedback.source.cache_dir={tmp_path / 'judge'}"] if kill_at.startswith("judge") else []
    rerun = killed_then_rerun([f"algo={algo}", *COMMON, *own_judge_cache], tmp_path / "run", cache, kill_at)
    assert results_of(tmp_path / "run") == expected
    if own_judge_cache:
        assert "skipped 1 unreadable line(s)" in rerun.stdout
    if kill_at.startswith("log"):  # the torn line alone is lost: the resumed run's lines after it are whole
        rows, torn = read_jsonl(tmp_path / "run" / "log.jsonl")
        assert torn == 1 and [row["step"] for row in rows][-4:] == [3, 4, 5, 6]


@pytest.mark.slow
def test_killed_while_building_a_stage_then_rerun_builds_it(tmp_path):
    """A cold cache: killed with the SFT reference built into its temporary directory, not yet renamed."""
    cache = tmp_path / "cache"
    killed_then_rerun(["algo=dpo", *COMMON], tmp_path / "run", cache, "stage")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "finished"
    assert not list(cache.glob("*.tmp"))  # the rerun cleared the half-built stage and built it whole


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [1.5, 3.0, 4.5, 6.0, 7.5])
def test_killed_at_a_moment_then_rerun_equals_the_uninterrupted_run(seconds, uninterrupted, cache, tmp_path):
    """SIGKILL after a fixed time (wherever the run is then: start-up, training, a checkpoint, evaluation)."""
    expected = uninterrupted("dpo")
    argv, env = zoo_command("train", "algo=dpo", *COMMON, f"hydra.run.dir={tmp_path}", cache=cache)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.kill()
    proc.wait()
    zoo("train", "algo=dpo", *COMMON, f"hydra.run.dir={tmp_path}", cache=cache)
    assert results_of(tmp_path) == expected
    assert os.path.exists(tmp_path / "model" / "model.safetensors")


@pytest.mark.slow
def test_zoo_compare_rerun_in_its_directory_keeps_finished_runs_and_completes_the_rest(cache, tmp_path):
    """Killed (the whole process group) once its first run has finished, `zoo compare` run again with the same
    compare.out keeps that run as it was, runs the other and reports both."""
    out = tmp_path / "compare"
    args = ["compare", "experiment=smoke", 'compare.sweeps=[["arm=dpo,ipo"]]', "compare.seeds=[0]",
            "compare.best_of_n=[]", "compare.n_jobs=1", f"compare.out={out}"]
    argv, env = zoo_command(*args, cache=cache)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 300

    def finished():
        return [p for p in out.glob("runs/*/*/metrics.json") if '"finished"' in p.read_text()]
    while not finished() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [first] = finished()
    kept = first.stat().st_mtime_ns, first.read_text()
    rerun = zoo(*args, cache=cache)
    assert (first.stat().st_mtime_ns, first.read_text()) == kept  # not trained again
    assert "finished: kept" in (out / "logs" / "sweep0.log").read_text(), rerun.stdout[-2000:]
    with open(out / "results.csv") as f:
        assert sorted(row["algo"] for row in csv.DictReader(f)) == ["dpo", "ipo"]
