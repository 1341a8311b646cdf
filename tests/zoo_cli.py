"""Running the real ``zoo`` command in a subprocess, offline, with the stage cache in a given directory, and
reading what a run wrote (``log_of``, ``results_of``)."""

import json
import os
import subprocess
import sys
from pathlib import Path


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "zoo" / "conf" / "accelerate"


def zoo_command(*args, cache, processes=1, accelerate_config=None) -> tuple[list[str], dict]:
    """The argv and environment of ``zoo ARGS`` with ``ZOO_CACHE=cache``: as ``processes`` torchrun processes when
    more than one, or through ``accelerate launch`` with a shipped config (``conf/accelerate/NAME.yaml``)."""
    env = {**os.environ, "ZOO_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    if accelerate_config:
        launcher = ["-m", "accelerate.commands.launch", "--config_file",
                    str(ACCELERATE_CONFIGS / f"{accelerate_config}.yaml"), "--num_processes", str(processes)]
    elif processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    else:
        launcher = []
    return [sys.executable, *launcher, "-m", "zoo.cli", *args], env


def zoo(*args, cache, check=True, processes=1, accelerate_config=None, env=None):
    """``zoo ARGS`` (see ``zoo_command``; ``env``: more environment variables), finished; raises with its
    output if it fails and ``check``."""
    argv, base = zoo_command(*args, cache=cache, processes=processes, accelerate_config=accelerate_config)
    proc = subprocess.run(argv, capture_output=True, text=True, env={**base, **(env or {})}, timeout=600,
                          check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


# what differs between two runs of one config for reasons other than what was trained: time, memory, and how
# many reference outputs came from the cache (a rerun finds the ones its first life stored)
NOT_RESULTS = ("seconds", "memory", "per_second", "elapsed_s", "reference_cache", "peak_memory_source")


def log_of(run_dir) -> list[dict]:
    """A run's log.jsonl lines."""
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def results_of(run_dir) -> dict:
    """A run's metrics.json without the keys in ``NOT_RESULTS`` (at any depth): what two runs of the same config
    must agree on."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not any(word in k for word in NOT_RESULTS)}
        return value
    return strip(json.loads((run_dir / "metrics.json").read_text()))
