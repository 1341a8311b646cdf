"""Experiment trackers (``trainer.report_to``, through accelerate): TensorBoard's event files (written with
tensorboardX, read back here from their records) and trackio's local database (``TRACKIO_DIR``, offline) hold
log.jsonl's metrics under log.jsonl's names and steps, the resolved config as hyperparameters, and a sweep's
runs grouped under the sweep."""

import json
import sqlite3
import struct

import pytest

from zoo_cli import log_of, zoo


def tensorboard_scalars(directory):
    """{tag: {step: value}} from every event file under ``directory`` (TFRecord: length, CRC, Event, CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for path in directory.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars



@pytest.fixture(scope="module")
def sweep(cache, tmp_path_factory):
    """A 2-run sweep (DPO, IPO) reporting to TensorBoard and trackio."""
    root = tmp_path_factory.mktemp("tracked")
    zoo("train", "-m", "algo=dpo,ipo", "experiment=smoke", "trainer.max_steps=3", "trainer.log_every=1",
        "eval.num_prompts=0", "trainer.report_to=[tensorboard,trackio]", f"hydra.sweep.dir={root / 'sweep'}",
        cache=cache, env={"TRACKIO_DIR": str(root / "trackio")})
    return root


def test_tensorboard_holds_the_logged_metrics_and_the_config(sweep):
    for run_dir in sorted((sweep / "sweep").glob("*-seed0-*")):
        scalars, log = tensorboard_scalars(run_dir / "zoo"), log_of(run_dir)
        assert set(scalars) == {k for k in log[0] if k != "step"}, run_dir.name
        for row in log:
            assert scalars["loss"][row["step"]] == pytest.approx(row["loss"], rel=1e-6)
        hparams = next((run_dir / "zoo").rglob("hparams.yml")).read_text()
        assert f"algo.name: {run_dir.name.split('-')[0]}" in hparams and "trainer.max_steps: 3" in hparams


def test_trackio_holds_the_logged_metrics_grouped_by_the_sweep(sweep):
    db = sqlite3.connect(sweep / "trackio" / "zoo.db")
    runs = sorted(p.name for p in (sweep / "sweep").glob("*-seed0-*"))
    configs = {name: json.loads(config) for name, config in db.execute("select run_name, config from configs")}
    assert sorted(configs) == runs
    assert {config["_Group"] for config in configs.values()} == {"sweep"}  # the sweep's runs, together
    assert configs[runs[0]]["algo.name"] == "dpo" and configs[runs[1]]["algo.name"] == "ipo"
    for name in runs:
        logged = {step: json.loads(metrics) for step, metrics in
                  db.execute("select step, metrics from metrics where run_name = ?", (name,))}
        log = log_of(sweep / "sweep" / name)
        assert sorted(logged) == [row["step"] for row in log]
        assert logged[3] == {k: v for k, v in log[-1].items() if k != "step"}


def test_no_tracker_by_default(cache, tmp_path):
    zoo("train", "algo=dpo", "experiment=smoke", "trainer.max_steps=1", "eval.num_prompts=0",
        f"hydra.run.dir={tmp_path}", cache=cache)
    assert not (tmp_path / "zoo").exists()
