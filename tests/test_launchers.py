"""Sweeps on more machines: the Hydra launcher presets zoo ships (``hydra/launcher=zoo_slurm``, ``zoo_ray``).

Slurm cannot run here, so its preset is composed against submitit's own schema (the test extra installs the
small plugin). The Ray preset runs a real 2-run sweep on a local Ray cluster that the launcher starts; it needs
``pip install -e ".[test,ray]"`` and is ``slow`` (ray is a large install and pins cloudpickle below what joblib
asks for, so it stays out of the default test install): 12 s for the sweep and its report on the 2-core CI
machine, plus about 15 s to install the extra."""

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from zoo.config import register_configs
from zoo_cli import zoo

CONF = Path(__file__).resolve().parents[1] / "zoo" / "conf"


def test_slurm_preset_composes_against_submitits_schema():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=zoo_slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.tasks_per_node, launcher.gpus_per_node) == ("gpu", 1, 1)
    assert launcher.timeout_min == 240 and launcher.submitit_folder.endswith(".submitit/%j")


@pytest.mark.slow
def test_ray_sweep_of_two_runs_on_a_local_cluster_finishes_and_reports(cache, tmp_path):
    sweep = tmp_path / "sweep"
    zoo("train", "-m", "algo=dpo,ipo", "experiment=smoke", "trainer.max_steps=3", "eval.num_prompts=4",
        "hydra/launcher=zoo_ray", f"hydra.sweep.dir={sweep}", cache=cache)
    zoo("report", str(sweep), cache=cache)
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["algo"] for row in rows) == ["dpo", "ipo"]
    for run in sorted(sweep.glob("*-seed0-*")):
        assert '"status": "finished"' in (run / "metrics.json").read_text(), run
