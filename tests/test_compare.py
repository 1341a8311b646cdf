"""``zoo compare``: a shrunken comparison end to end (every algorithm, two seeds, best-of-N, a run that fails),
its helpers, and the notebook executed against its output."""

import csv
import json
import os
import re
import sys
from pathlib import Path

import pytest

from zoo_cli import zoo
from zoo.best_of_n import kl_bound
from zoo.compare import is_hydra_override, launcher_of, run_overrides, split_top_level, sweep_command, sweep_size

ALGOS = ("ppo", "rlaif", "orpo", "dpo", "ipo", "kto")
NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "explore.ipynb"


def test_split_top_level_keeps_brackets_and_quotes_whole():
    assert split_top_level("a,b,[c,d],'e,f'") == ["a", "b", "[c,d]", "'e,f'"]
    assert split_top_level("dpo") == ["dpo"]


def test_sweep_size_is_the_product_of_the_comma_lists():
    assert sweep_size(["arm=ppo,dpo,ipo", "seed=0,1,2"]) == 9
    assert sweep_size(["arm=dpo", "algo.loss.beta=0.1,0.3", "tag=beta${algo.loss.beta}", "seed=0"]) == 2
    assert sweep_size(["seed=range(3)"]) is None  # a sweep function: the bar shows a count, not a total


def test_run_overrides_drop_only_the_compare_plan():
    assert run_overrides(["experiment=smoke", "compare=frontier", "compare.n_jobs=1", "+compare.x=1",
                          "trainer.max_steps=5"]) == ["experiment=smoke", "trainer.max_steps=5"]


def test_the_plan_is_composed_apart_from_the_runs_config():
    """The plan is compare.yaml's; no run's config carries it, and sweep tags are written unescaped."""
    from omegaconf import OmegaConf

    from zoo.config import compose_compare_config, compose_train_config

    frontier = compose_compare_config(["compare=frontier", "compare.seeds=[5]"])
    sweeps = OmegaConf.to_container(frontier.sweeps, resolve=False)  # resolved in each run, not in the plan
    assert list(frontier.seeds) == [5] and "tag=beta${algo.loss.beta}" in sweeps[0]
    assert "compare" not in compose_train_config(["experiment=smoke"])


def test_arms_are_the_comparisons_and_reach_the_runs_through_the_search_path(tmp_path):
    command = sweep_command(["arm=dpo,ipo", "eval.num_prompts=8"], [0], [], tmp_path, "basic", 2)
    assert "+arm=dpo,ipo" in command and "eval.num_prompts=8" in command
    searchpath = next(o for o in command if o.startswith("hydra.searchpath="))
    arms = Path(searchpath.split("file://")[1].rstrip("]")) / "arm"
    assert sorted(p.stem for p in arms.glob("*.yaml")) == ["cpo", "dpo", "grpo", "ipo", "kto", "orpo", "ppo", "rlaif", "rloo",
                                                              "simpo"]
    assert not any(o.startswith("hydra.searchpath") for o in sweep_command(["algo=dpo"], [0], [], tmp_path,
                                                                           "basic", 2))


def test_sweep_command_shares_the_cores_between_parallel_runs(tmp_path):
    command = sweep_command(["arm=dpo,ipo"], [0, 1, 2], ["experiment=smoke"], tmp_path, "joblib", 2)
    assert command[:5] == [sys.executable, "-m", "zoo.cli", "train", "-m"]
    assert "seed=0,1,2" in command and f"hydra.sweep.dir={tmp_path}" in command
    assert "hydra/launcher=joblib" in command and "hydra.launcher.n_jobs=2" in command
    assert f"trainer.cpu_threads={max(1, (os.cpu_count() or 1) // 2)}" in command
    # a sweep that sets its own seeds keeps them; the basic launcher gets no joblib keys
    basic = sweep_command(["arm=dpo", "seed=7"], [0], [], tmp_path, "basic", 2)
    assert "seed=0" not in basic and not any(o.startswith("hydra.launcher.") for o in basic)


def test_a_hydra_launcher_override_picks_the_launcher_and_reaches_the_runs(tmp_path):
    # `zoo compare hydra/launcher=submitit_slurm hydra.launcher.partition=gpu`: the cluster launcher, its settings
    overrides = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "compare.n_jobs=4", "seed=1"]
    assert launcher_of(overrides, "joblib") == "submitit_slurm" and launcher_of(["seed=1"], "joblib") == "joblib"
    assert [o for o in overrides if is_hydra_override(o)] == overrides[:2]  # kept out of the compare's own compose
    command = sweep_command(["arm=dpo"], [0], run_overrides(overrides), tmp_path, "submitit_slurm", 4)
    assert command.count("hydra/launcher=submitit_slurm") == 1 and "hydra.launcher.partition=gpu" in command
    assert not any(o.startswith(("hydra.launcher.n_jobs", "trainer.cpu_threads")) for o in command)


def test_stages_built_beside_that_fail_say_so_with_their_log(tmp_path):
    """A second process whose stages fail leaves the block's end with an error naming the feedback and its
    log (the comparison reports it with its runs instead of losing them)."""
    from zoo.compare import StagesBeside

    with StagesBeside(["experiment=smoke"], ["no_such_source"], tmp_path) as beside:
        pass
    assert beside.process.exitcode != 0 and beside.seconds > 0
    assert re.search(r"feedback=no_such_source failed .*stages-no_such_source\.log\): ", beside.error)
    assert "no_such_source" in (tmp_path / "stages-no_such_source.log").read_text()


def test_no_stages_beside_starts_no_process(tmp_path):
    from zoo.compare import StagesBeside

    with StagesBeside(["experiment=smoke"], [], tmp_path) as beside:
        pass
    assert beside.process is None and beside.error is None and not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def compared(cache, tmp_path_factory):
    """One shrunken `zoo compare`: every algorithm x 2 seeds, best-of-N for N = 1, 2, 4 from pools of 8, and
    a second sweep of one run that fails (DPO with beta = -1, its own seed)."""
    out = tmp_path_factory.mktemp("compare")
    sweeps = '[["arm=ppo,rlaif,orpo,dpo,ipo,kto"],["arm=dpo","algo.loss.beta=-1","tag=broken","seed=0"]]'
    proc = zoo("compare", "experiment=smoke", f"compare.sweeps={sweeps}", "compare.seeds=[0,1]",
               "compare.best_of_n=[1,2,4]", "compare.best_of_n_prompts=8", "compare.best_of_n_pool=8",
               f"compare.out={out}", cache=cache, check=False)
    return out, proc


def test_compare_runs_everything_and_reports_the_failed_run(compared):
    out, proc = compared
    assert proc.returncode == 1, proc.stderr[-3000:]  # one run failed: the command says so ...
    assert "1 run(s) or sweep(s) failed" in proc.stderr
    assert "[zoo compare] 13 runs (1 failed) + best-of-N" in proc.stdout  # ... after every other run finished
    runs = [json.loads(p.read_text()) for p in (out / "runs").rglob("metrics.json")]
    finished = sorted((r["algo"], r["seed"]) for r in runs if r["status"] == "finished")
    assert {r["peak_memory_source"] for r in runs if r["status"] == "finished"} == {"run_peak_rss"}
    assert finished == sorted((algo, seed) for algo in ALGOS for seed in (0, 1))
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 1 and "beta must be > 0" in failed[0]["error"] and failed[0]["tag"] == "broken"
    report = (out / "report.md").read_text()
    assert "## Failed runs" in report and "beta must be > 0" in report


def test_compare_table_has_every_algorithm_and_best_of_n(compared):
    out, _ = compared
    rows = {(r["algo"], r["feedback"], r["tag"]): r for r in csv.DictReader(open(out / "results.csv"))}
    for algo in ALGOS:
        row = rows[(algo, "judge" if algo == "rlaif" else "gold", "")]
        assert row["n_seeds"] == "2" and row["gold_reward_ci_low"] != ""  # two seeds: a CI
    assert rows[("dpo", "gold", "broken")]["n_failed"] == "1"
    assert float(rows[("sft", "none", "")]["kl_to_ref_mean"]) == pytest.approx(0.0, abs=1e-9)
    for n in (2, 4):
        row = rows[("best_of_n", "gold", f"N={n}")]
        assert float(row["kl_bound_mean"]) == pytest.approx(kl_bound(n))
        assert 0 < float(row["kl_to_ref_mean"]) <= kl_bound(n) + 1e-9
    for figure in ("frontier.png", "win_rates.png", "curves.png"):
        assert (out / figure).stat().st_size > 10_000


def test_compare_records_how_the_results_were_made(compared):
    out, proc = compared
    record = json.loads((out / "compare.json").read_text())
    assert record["command"].startswith("zoo compare experiment=smoke")
    assert len(record["commit"]) == 40 and record["machine"]["cpu_count"] >= 1
    # the judge's stages were built in a second process beside best-of-N and the runs, into their own log
    assert set(record["phases"]) == {"stages_seconds", "best_of_n_seconds", "runs_seconds", "stages_beside_seconds"}
    assert "[zoo compare] shared stages for feedback=judge" in (out / "logs" / "stages-judge.log").read_text()
    assert record["runs"] == 13 and len(record["failed_runs"]) == 1 and record["report_seconds"] > 0
    assert record["total_seconds"] > 0 and re.search(r"\(1 failed\) \+ best-of-N in \d+ min \d+ s", proc.stdout)
    assert "## How these results were made" in (out / "report.md").read_text()


@pytest.mark.parametrize("where", [".", "runs/sweep0"], ids=["comparison", "sweep"])
def test_the_notebook_executes_against_the_comparison(where, compared, cache, tmp_path, monkeypatch):
    """The notebook on a comparison's directory and on one of its sweeps (a plain `zoo train -m` directory)."""
    nbformat = pytest.importorskip("nbformat")  # in the test extra: CI always runs this
    from nbclient import NotebookClient

    out, _ = compared
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for key, value in (("ZOO_RUNS", out / where), ("ZOO_CACHE", cache), ("ZOO_NOTEBOOK_RUN_DIR", tmp_path / "dpo")):
        monkeypatch.setenv(key, str(value))  # the kernel inherits them
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    assert json.loads((tmp_path / "dpo" / "metrics.json").read_text())["status"] == "finished"
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)


def test_each_run_measures_its_own_peak_memory():
    # a multirun reuses worker processes: a run must not report the peak of the run before it
    from zoo.memory import peak_memory_mb, reset_peak_memory

    block = bytearray(400 * 2**20)  # the previous run's peak (bytearray zero-fills, so the pages are resident)
    del block
    lifetime, _ = peak_memory_mb(False)
    assert reset_peak_memory()  # Linux: VmHWM reset through /proc/self/clear_refs
    peak, source = peak_memory_mb(True)
    assert source == "run_peak_rss" and peak < lifetime - 300
