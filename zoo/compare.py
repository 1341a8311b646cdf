"""``zoo compare [overrides]``: the preset comparison, from shared stages to one report.

1. **Stages, once.** For each feedback source in ``compare.feedback``: the SFT reference, the
   reference's pairs labelled by that source, and the reward model trained on them (``zoo.stages.prepare``).
   Every run below starts from these, so all methods share the starting policy, prompts and labels.
2. **Best-of-N** from the reference, selected by the reward model (``zoo.best_of_n``); N = 1 is the
   SFT reference's own row. The second and later feedback sources' stages are built meanwhile in a
   second process (``StagesBeside``), with half the cores each, which goes on beside the runs if it must
   (a run that needs its stages waits on their lock).
3. **Runs.** Each entry of ``compare.sweeps`` is one Hydra multirun, ``zoo train -m <overrides>
   seed=<seeds>``, under ``compare.launcher`` or a ``hydra/launcher=X`` override (``joblib``:
   ``compare.n_jobs`` runs at a time on this machine; ``submitit_slurm`` with its own
   ``hydra.launcher.*`` overrides: a cluster).
   A progress bar follows every run's log; a run that fails is recorded as failed (its metrics.json
   says so) and the others go on.
4. **Report.** ``zoo report`` over the runs and best-of-N, plus ``compare.json``: the command, the git
   commit, the machine and the time each phase took.

The plan has its own primary config (``conf/compare.yaml``): ``compare=NAME`` picks one of
``conf/compare/*.yaml`` and ``compare.KEY=VALUE`` changes it; every other override is passed on to the
stages and to each run (``experiment=smoke``, ``trainer.*``, ...). Each algorithm's comparison budget is
``conf/compare/arm/NAME.yaml``, which a sweep names with ``arm=NAME``: the runs find those files through
``hydra.searchpath``, so ``zoo train``'s own config knows nothing of the comparison. A plan's own
``overrides`` (``compare=smollm2``: ``model=smollm2_135m``, ``peft=lora``, the stage sizes) go to the stages,
best-of-N and every run before the command line's; its arms may live in a subfolder (``arm=smollm2/dpo``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

from omegaconf import OmegaConf
from tqdm.auto import tqdm

from zoo.config import portable
from zoo.files import write_atomically

POLL_SECONDS = 2.0
# built once per feedback source before the runs, so parallel runs find them ready instead of queueing on the
# cache's locks: the SFT reference, its pairs labelled by that source, the reward model trained on them
SHARED_STAGES = ("reference", "labels", "reward_model")


def split_top_level(value: str) -> list[str]:
    """``value`` split at commas outside brackets and quotes: Hydra's sweep list ``a,b,[c,d]`` -> 3 items."""
    items, depth, quote, current = [], 0, None, ""
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += ch
    return [*items, current]


def sweep_size(overrides: list[str]) -> int | None:
    """How many jobs Hydra's basic sweeper makes of ``overrides`` (the product of the comma lists), or None
    when one uses a sweep function (``range(...)``, ``choice(...)``) that this does not expand."""
    size = 1
    for override in overrides:
        _, _, value = override.partition("=")
        if re.match(r"\s*(range|choice|interval|glob)\(", value):
            return None
        size *= len(split_top_level(value))
    return size


ARMS_DIR = Path(__file__).parent / "conf" / "compare"  # holds arm/, the comparison budgets


def is_compare_override(override: str) -> bool:
    """``compare=NAME`` / ``compare.KEY=VALUE``: the plan's own settings, which no run reads."""
    return override.lstrip("+~").startswith(("compare.", "compare="))


def run_overrides(overrides: list[str]) -> list[str]:
    """The user's overrides every run gets: all but the plan's (``compare=``, ``compare.*``)."""
    return [o for o in overrides if not is_compare_override(o)]


def is_hydra_override(override: str) -> bool:
    """``hydra.*`` / ``hydra/launcher=...``: Hydra's own settings, which only a launched multirun reads."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def launcher_of(overrides: list[str], default: str) -> str:
    """The launcher the sweeps use: ``hydra/launcher=X`` on the command line, else ``compare.launcher``."""
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("hydra/launcher=")]
    return chosen[-1] if chosen else default


def sweep_command(sweep: list[str], seeds: list[int], passed: list[str], sweep_dir: Path, launcher: str,
                  n_jobs: int) -> list[str]:
    """The ``zoo train -m`` command line of one sweep. ``arm=NAME`` becomes ``+arm=NAME`` with the arms'
    directory on Hydra's search path: the group is the comparison's, not ``train.yaml``'s."""
    sweep = [("+" + o) if o.startswith("arm=") else o for o in sweep]
    command = [sys.executable, "-m", "zoo.cli", "train", "-m", *passed, *sweep]
    if any(o.startswith("+arm=") for o in sweep):
        command.append(f"hydra.searchpath=[file://{portable(ARMS_DIR)}]")  # relative to the runs' cwd if inside
    if not any(o.split("=")[0].lstrip("+") == "seed" for o in sweep):
        command.append("seed=" + ",".join(str(s) for s in seeds))
    command.append(f"hydra.sweep.dir={sweep_dir}")
    if not any(o.lstrip("+").startswith("hydra/launcher=") for o in passed):
        command.append(f"hydra/launcher={launcher}")
    if launcher == "joblib":
        if not any(o.startswith("hydra.launcher.n_jobs=") for o in passed):
            command.append(f"hydra.launcher.n_jobs={n_jobs}")
        if n_jobs > 1 and not any(o.startswith("trainer.cpu_threads=") for o in passed + sweep):
            # n_jobs processes share the cores: one process's torch threads each, not all of them each
            command.append(f"trainer.cpu_threads={max(1, (os.cpu_count() or 1) // n_jobs)}")
    return command


# ------------------------------------------------------------------------------------------------ stages


def build_stages(overrides: list[str]) -> None:
    """The shared stages (``SHARED_STAGES``) of the ``zoo train`` config for ``overrides``."""
    from zoo.config import compose_train_config
    from zoo.stages import prepare

    prepare(compose_train_config(overrides), SHARED_STAGES)


class StagesBeside:
    """``with StagesBeside(overrides, feedbacks, logs) as beside:`` builds the shared stages of each of
    ``feedbacks`` (one after the other) in a spawned process while the block runs; inside it,
    ``with beside.half_the_cores():`` gives a part of the block half the cores, the process having the
    other half. Leaving the block waits for the process (or ends it, if the block raised); ``error`` then
    says why the process failed (None if it did not), with its log's last lines, and ``seconds`` is its
    wall time. No feedbacks: nothing is started and the block keeps every core."""

    def __init__(self, overrides: list[str], feedbacks: list[str], logs: Path):
        self.overrides, self.feedbacks = overrides, list(feedbacks)
        self.log = logs / f"stages-{'-'.join(self.feedbacks)}.log"
        self.half = max(1, (os.cpu_count() or 1) // 2)
        self.process, self.seconds, self.error = None, 0.0, None

    def __enter__(self) -> "StagesBeside":
        if not self.feedbacks:
            return self
        import multiprocessing

        print(f"[zoo compare] shared stages for feedback={','.join(self.feedbacks)} in a second process "
              f"(log: {portable(self.log)})", flush=True)
        context = multiprocessing.get_context("spawn")  # not fork: a forked torch thread pool can deadlock
        self._seconds = context.Value("d", 0.0)  # the process's own wall time, written when it ends
        self.process = context.Process(target=_build_stages_in_turn, args=(
            self.overrides, self.feedbacks, self.half, str(self.log), self._seconds))
        self.process.start()
        return self

    @contextlib.contextmanager
    def half_the_cores(self):
        """This process on ``half`` torch threads while the stages' process is running (on the rest)."""
        import torch

        if self.process is None:
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(self.half)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def __exit__(self, kind, value, traceback) -> None:
        if self.process is None:
            return
        if kind is not None:  # the block failed: its error is the one to see
            self.process.terminate()
        self.process.join()
        self.seconds = self._seconds.value
        if self.process.exitcode != 0 and kind is None:
            lines = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            tail = " | ".join(line[-300:] for line in lines)
            self.error = (f"building the stages of feedback={','.join(self.feedbacks)} failed (exit code "
                          f"{self.process.exitcode}; log: {portable(self.log)}): {tail}")


def _build_stages_in_turn(overrides: list[str], feedbacks: list[str], threads: int, log: str, seconds) -> None:
    """The process of :class:`StagesBeside`: its prints and progress bars go to ``log``."""
    import torch

    from zoo.cli import _quiet_libraries

    started = time.perf_counter()
    handle = open(log, "a", buffering=1)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    _quiet_libraries()  # as the parent: no weight-loading reports
    torch.set_num_threads(threads)
    try:
        for feedback in feedbacks:
            print(f"[zoo compare] shared stages for feedback={feedback}", flush=True)
            build_stages([*overrides, f"feedback={feedback}"])
    finally:
        seconds.value = time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ progress


def run_states(root: Path) -> dict[Path, dict]:
    """Every run dir under ``root``: {"status": running | finished | failed, "step", "max_steps", "name"}.

    A run dir has the config.yaml ``train()`` writes first; metrics.json comes last, with the status."""
    states = {}
    for config in root.rglob("config.yaml"):
        run_dir = config.parent
        if any(part.startswith(".") for part in run_dir.relative_to(root).parts):
            continue  # Hydra's own .hydra/config.yaml
        state = {"status": "running", "step": 0, "max_steps": None, "name": run_dir.name}
        metrics = run_dir / "metrics.json"
        if metrics.exists():
            try:
                state["status"] = json.loads(metrics.read_text()).get("status", "failed")
            except (OSError, json.JSONDecodeError):
                pass  # being written: still running
        if state["status"] == "running":
            state["step"] = last_step(run_dir / "log.jsonl")
            try:
                state["max_steps"] = OmegaConf.load(config).trainer.max_steps
            except Exception:  # noqa: BLE001 - a half-written config: no total yet
                pass
        states[run_dir] = state
    return states


def last_step(log: Path) -> int:
    """The last logged step of a run (0 before its first log line)."""
    try:
        lines = log.read_text().strip().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return 0


def follow(process: subprocess.Popen, root: Path, bar: tqdm, done_before: int) -> dict[Path, dict]:
    """Update ``bar`` from the run dirs under ``root`` until ``process`` exits; returns the final states.
    In a terminal the bar redraws every poll; into a file or pipe only when a run ends."""
    live = sys.stderr.isatty()
    while True:
        exited = process.poll() is not None
        states = run_states(root)
        ended = [s for s in states.values() if s["status"] != "running"]
        bar.n = done_before + len(ended)
        failed = sum(s["status"] != "finished" for s in ended)
        running = [f"{s['name']} {s['step']}/{s['max_steps'] or '?'}" for s in states.values()
                   if s["status"] == "running"]
        changed = bar.n != bar.last_print_n
        bar.set_postfix_str(" | ".join(filter(None, (f"failed {failed}" if failed else "", ", ".join(running[:4])))),
                            refresh=False)
        if live or changed:
            bar.refresh()
            bar.last_print_n = bar.n
        if exited:
            return states
        time.sleep(POLL_SECONDS)


# --------------------------------------------------------------------------------------------- provenance


def git_commit() -> dict:
    """The checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def machine() -> dict:
    """What the comparison ran on: enough to judge its timings."""
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["processor"] = model
    except (OSError, StopIteration):
        pass
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


# ----------------------------------------------------------------------------------------------- command


def main(argv: list[str]) -> int:
    """Run the comparison for ``argv`` (Hydra overrides); returns the number of failed runs."""
    from zoo.best_of_n import run_best_of_n
    from zoo.config import compose_compare_config, compose_train_config
    from zoo.report import ReportWarning, collect_runs, markdown_table, aggregate, write_report

    started = time.perf_counter()
    overrides = list(argv)
    plan = compose_compare_config([o for o in overrides if is_compare_override(o)])
    passed = [*plan.overrides, *run_overrides(overrides)]  # the plan's own first: the command line's win
    cfg = compose_train_config([o for o in passed if not is_hydra_override(o)])  # hydra.*: for the runs
    out = Path(plan.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    launcher = launcher_of(overrides, plan.launcher)
    # unresolved: a sweep's ``tag=beta${algo.loss.beta}`` resolves in each run, not in the plan
    sweeps = [[str(o) for o in sweep] for sweep in OmegaConf.to_container(plan.sweeps, resolve=False)]
    seeds = list(plan.seeds)
    phases: dict[str, float] = {}
    record = {"command": "zoo compare " + shlex.join(overrides), **git_commit(), "machine": machine(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "overrides": list(plan.overrides), "sweeps": sweeps,
              "seeds": seeds, "phases": phases}
    write_atomically(out / "compare.json", json.dumps(record, indent=2))

    # 1. the shared stages, once per feedback source; 2. best-of-N (and the reference's own row, N = 1).
    # Best-of-N reads the first source's reward model only, so with two or more cores the other sources'
    # labels and reward models are built in a second process beside it, each side on half the cores (on a
    # world-sized model best-of-N's sampling gains little from a second thread), and the runs start when
    # best-of-N ends: a run that needs those stages before they are built waits on the stage's lock.
    stage_overrides = [o for o in passed if not is_hydra_override(o)]
    first, *others = plan.feedback
    beside = others if plan.best_of_n and plan.n_jobs > 1 and (os.cpu_count() or 1) > 1 else []
    phase = time.perf_counter()
    for feedback in [first, *(o for o in others if o not in beside)]:
        print(f"[zoo compare] shared stages for feedback={feedback}", flush=True)
        build_stages([*stage_overrides, f"feedback={feedback}"])
    phases["stages_seconds"] = time.perf_counter() - phase

    sweep_failures = []
    with StagesBeside(stage_overrides, beside, out / "logs") as background:
        phase = time.perf_counter()
        if plan.best_of_n:
            print(f"[zoo compare] best-of-N for N in {list(plan.best_of_n)}", flush=True)
            with background.half_the_cores():
                run_best_of_n(cfg, out / "best_of_n", list(plan.best_of_n), plan.best_of_n_prompts,
                              plan.best_of_n_pool)
        phases["best_of_n_seconds"] = time.perf_counter() - phase

        # 3. the runs: one Hydra multirun per sweep, followed by one progress bar
        phase = time.perf_counter()
        sizes = [sweep_size([*sweep, "seed=" + ",".join(map(str, seeds))]) for sweep in sweeps]
        total = sum(sizes) if None not in sizes else None
        logs = out / "logs"
        with tqdm(total=total, desc="zoo compare: runs", unit="run", dynamic_ncols=True) as bar:
            done = 0
            for i, sweep in enumerate(sweeps):
                command = sweep_command(sweep, seeds, passed, out / "runs" / f"sweep{i}", launcher, plan.n_jobs)
                with open(logs / f"sweep{i}.log", "w") as log:
                    log.write("$ " + shlex.join(["python", *command[1:]]) + "\n\n")  # no machine's interpreter path
                    log.flush()
                    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                    states = follow(process, out / "runs" / f"sweep{i}", bar, done)
                done += len(states)
                if process.returncode != 0 and not any(s["status"] == "failed" for s in states.values()):
                    # nothing recorded a failure, so the sweep itself broke (a bad override, a launcher error)
                    tail = (logs / f"sweep{i}.log").read_text()[-2000:].strip().splitlines()[-1:]
                    sweep_failures.append(f"sweep {i} ({' '.join(sweep)}) exited {process.returncode} before its "
                                          f"runs finished: {' '.join(tail)} (log: {logs / f'sweep{i}.log'})")
        phases["runs_seconds"] = time.perf_counter() - phase
    if beside:
        phases["stages_beside_seconds"] = background.seconds
    if background.error:  # the runs that needed those stages built them themselves or failed: the report says which
        sweep_failures.append(background.error)

    # 4. the report (its own few seconds are in compare.json, not in report.md's wall time)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        trained = collect_runs([out / "runs"]) if (out / "runs").is_dir() else []
        best_of_n = collect_runs([out / "best_of_n"]) if plan.best_of_n else []
    skipped = [*sweep_failures, *dict.fromkeys(str(w.message) for w in caught)]
    record["total_seconds"] = time.perf_counter() - started
    failed = [run["run_dir"] for run in trained if run.get("status") != "finished"]
    record.update(runs=len(trained), failed_runs=failed, sweep_failures=sweep_failures)
    phase = time.perf_counter()
    paths = write_report([*best_of_n, *trained], out, skipped, provenance=record)
    record["report_seconds"] = time.perf_counter() - phase
    write_atomically(out / "compare.json", json.dumps(record, indent=2))
    print(markdown_table(aggregate([*best_of_n, *trained])))
    print()
    for message in skipped:
        print(f"zoo compare: warning: {message}", file=sys.stderr)
    print(f"[zoo compare] {len(trained)} runs ({len(failed)} failed) + best-of-N in "
          f"{minutes(record['total_seconds'])}: stages {minutes(phases['stages_seconds'])}, best-of-N "
          f"{minutes(phases['best_of_n_seconds'])}, runs {minutes(phases['runs_seconds'])}" + (
              f" (beside them, the stages of feedback={','.join(beside)}: "
              f"{minutes(phases['stages_beside_seconds'])})" if beside else ""))
    print(f"[zoo compare] report: {paths[1]}")
    return len(failed) + len(sweep_failures)
