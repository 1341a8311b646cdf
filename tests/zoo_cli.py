"""Running the real ``zoo`` command in a subprocess, offline, with the stage cache in a given directory."""

import os
import subprocess
import sys


def zoo_command(*args, cache, processes=1) -> tuple[list[str], dict]:
    """The argv and environment of ``zoo ARGS`` with ``ZOO_CACHE=cache``, as ``processes`` torchrun processes
    when more than one."""
    env = {**os.environ, "ZOO_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)] if processes > 1 \
        else []
    return [sys.executable, *launcher, "-m", "zoo.cli", *args], env


def zoo(*args, cache, check=True, processes=1):
    """``zoo ARGS`` (see ``zoo_command``), finished; raises with its output if it fails and ``check``."""
    argv, env = zoo_command(*args, cache=cache, processes=processes)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"zoo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc
