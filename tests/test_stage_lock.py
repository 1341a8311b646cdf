"""Many processes, one cache: processes asking for the same stage at once build it once and read the same bytes;
one killed while it holds the stage's lock (flock, released by the kernel when the process dies) blocks no
one, and its half-built temporary directory is never read."""

import json
import subprocess
import sys
import textwrap


# a process that asks for stage "demo": building takes a moment, appends to builds.log and writes the builder's pid
ASK = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from zoo.stages import cached_stage

    cache, die = Path(sys.argv[1]), sys.argv[2] == "die"

    def build(tmp):
        with open(cache / "builds.log", "a") as log:
            log.write(f"{os.getpid()}\\n")
        (tmp / "out.txt").write_text(f"built by {os.getpid()}")
        if die:
            os.kill(os.getpid(), 9)  # killed holding the lock, the stage half-built
        time.sleep(0.5)
        return {"builder": os.getpid()}

    stage = cached_stage(str(cache), "demo", "k", build, "out.txt")
    print(stage.path.read_text())
""")


def ask(cache, mode="live"):
    return subprocess.Popen([sys.executable, "-c", ASK, str(cache), mode], stdout=subprocess.PIPE, text=True)


def test_four_processes_asking_at_once_build_the_stage_once_and_read_the_same_bytes(tmp_path):
    processes = [ask(tmp_path) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in processes]
    assert all(p.returncode == 0 for p in processes)
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 1 and outputs == [f"built by {builders[0]}"] * 4
    assert json.loads((tmp_path / "demo-k" / "stage.json").read_text())["builder"] == int(builders[0])


def test_a_process_killed_holding_the_lock_blocks_no_one(tmp_path):
    waiting = 3
    doomed = ask(tmp_path, "die")
    doomed.communicate(timeout=120)
    assert doomed.returncode == -9 and (tmp_path / "demo-k.tmp" / "out.txt").exists()  # half-built, locked, killed
    processes = [ask(tmp_path) for _ in range(waiting)]
    outputs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in processes]
    builders = (tmp_path / "builds.log").read_text().split()
    assert len(builders) == 2 and builders[0] == str(doomed.pid)  # the killed build, then one more
    assert outputs == [f"built by {builders[1]}"] * waiting
    assert not (tmp_path / "demo-k.tmp").exists()
