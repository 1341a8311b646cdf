"""The committed results/ can be moved and read anywhere: no absolute path of the machine that made them,
and `zoo report` on a copy elsewhere gives the committed table."""

import csv
import re
import shutil
from pathlib import Path

import pytest
from zoo_cli import zoo

RESULTS = Path(__file__).resolve().parents[1] / "results"
TEXT = (".json", ".jsonl", ".yaml", ".md", ".csv", ".log")
ABSOLUTE = re.compile(r"""(^|[\s"'=:(\[,])/(?!/)[A-Za-z]""")  # a path from the root; not '//' nor 'a/b'


def test_committed_results_carry_no_absolute_paths():
    files = [p for p in RESULTS.rglob("*") if p.suffix in TEXT]
    assert len(files) > 100  # both comparisons, with their run dirs
    found = [f"{p.relative_to(RESULTS)}: {line.strip()[:120]}" for p in files
             for line in p.read_text().splitlines() if ABSOLUTE.search(line)]
    assert not found, found[:10]


@pytest.mark.parametrize("name", ["world", "frontier", "smollm2", "smollm2_presets", "recent", "smollm2_recent"])
def test_report_on_a_moved_copy_gives_the_committed_table(name, tmp_path):
    copy = tmp_path / "elsewhere" / name
    shutil.copytree(RESULTS / name, copy, ignore=shutil.ignore_patterns("*.png"))
    zoo("report", str(copy), "--out", str(tmp_path / "report"), cache=tmp_path / "cache")  # reads no stage
    with open(RESULTS / name / "results.csv") as a, open(tmp_path / "report" / "results.csv") as b:
        assert list(csv.DictReader(a)) == list(csv.DictReader(b))
