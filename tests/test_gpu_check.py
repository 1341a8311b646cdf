"""benchmarks/gpu_check.py without a GPU: its --cpu-smoke runs every non-QLoRA case's code path on tiny shapes,
and without CUDA and that flag it refuses with exit code 2; the trimmed bitsandbytes wheel keeps a valid RECORD."""

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from pytest import approx

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402 - benchmarks/ is not a package

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def test_cpu_smoke_measures_every_case_but_qlora(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path), "--work", str(tmp_path)],
                          capture_output=True, text=True, env=NO_GPU, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    cases = {(c["model"], c["mode"], c["algo"], c["side"]): c for c in results["cases"]}
    assert len(cases) == len(results["cases"]) == len(gpu_check.plan()) == 16
    for (model, mode, algo, side), case in cases.items():
        if mode == "qlora":  # not faked: reported as not run, with the reason
            assert case["status"] == "not run" and "--cpu-smoke" in case["reason"]
            continue
        assert case["status"] == "ok", case
        assert case["tokens_per_s"] > 0 and case["peak_memory_mb"] > 0 and case["seconds"] > 0
        warmup, timed = gpu_check.SMOKE_WORKLOAD.steps(algo)
        assert case["timed_steps"] == timed
        if algo == "dpo":  # 2 pairs a step of prompt 8 + chosen 12 + rejected 8 tokens, EOS after each completion
            assert case["tokens_per_step"] == 2 * (2 * 8 + 12 + 8 + 2)
        else:  # tokens/s = completions/s x their mean length, the completions those of the timed steps
            assert case["completions_per_s"] == approx(timed * gpu_check.SMOKE_WORKLOAD.ppo_batch / case["seconds"])
            assert case["tokens_per_s"] == approx(case["completions_per_s"] * case["mean_length"])
            # a random model's EOS is 1 of 1,024 nearly equal logits: almost every completion is the 4 new
            # tokens asked for, none longer
            assert 3 <= case["mean_length"] <= 4
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| DPO vs DPOTrainer |") == table.count("| PPO vs RLOOTrainer |") == 4


def test_without_cuda_it_asks_for_cpu_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=NO_GPU, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--cpu-smoke" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_strip_wheel_keeps_named_libraries_and_a_valid_record(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-manylinux_2_24_x86_64.whl"
    files = {"pkg/__init__.py": b"x = 1\n", "pkg/lib_cuda130.so": b"keep", "pkg/lib_cuda118.so": b"drop" * 100,
             "pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: py3-none-manylinux_2_24_x86_64\n",
             "pkg-1.0.dist-info/RECORD": b"stale\n"}
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    (tmp_path / "out").mkdir()
    out = gpu_check.strip_wheel(wheel, ("lib_cuda130.so",), "0test", tmp_path / "out")
    assert out.name == "pkg-1.0-0test-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert "pkg/lib_cuda118.so" not in names and "pkg/lib_cuda130.so" in names
        assert b"Build: 0test" in z.read("pkg-1.0.dist-info/WHEEL")
        record = dict(line.split(",", 1) for line in z.read("pkg-1.0.dist-info/RECORD").decode().splitlines())
        assert set(record) == names
        for name in names - {"pkg-1.0.dist-info/RECORD"}:
            data = z.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert record[name] == f"sha256={digest},{len(data)}"
