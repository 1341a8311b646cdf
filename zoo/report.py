"""``zoo report DIR...``: compare finished runs side by side.

Reads every ``metrics.json`` (and its sibling ``log.jsonl``) under the given directories, groups the runs by
(algo, feedback), and writes to the output directory:

- ``results.csv``: one row per group; for each metric in ``REPORT_METRICS`` (and each held-out scorer of the
  task, ``other_rewards``) the mean over the finished seeds, a 95% Student-t confidence interval of that mean,
  and the number of runs that reported it;
- ``report.md``: the same numbers as markdown tables ("mean ± half-width"; the held-out scorers and the signs
  of hacking in a second one), the failed runs with their errors, the run dirs that could not be read, and
  the figures;
- ``frontier.png``, ``win_rates.png``, ``curves.png`` when matplotlib is installed (a dependency; a stripped install without it still writes the tables).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import sys
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from zoo.files import write_atomically

REPORT_METRICS = ("gold_reward", "kl_to_ref", "win_rate_vs_ref", "judge_win_rate_vs_ref", "mean_length",
                  "distinct_2", "fluency", "nll_under_ref", "repeated_3grams", "train_seconds", "peak_memory_mb",
                  "kl_bound")
# A task's held-out scorers (metrics.json's other_rewards, e.g. the reviews task's TextBlob) are reported too,
# as "other_rewards.NAME" (the policy's mean) and "other_rewards.NAME.win_rate_vs_ref", after REPORT_METRICS.
OTHER_REWARDS = "other_rewards"

# The markdown table's columns after algo | feedback | seeds: (metric, header, decimals). Seconds and
# megabytes are shown whole: their seed-to-seed spread is far above one unit.
TABLE_COLUMNS = (("gold_reward", "gold reward", 3), ("kl_to_ref", "KL", 2), ("win_rate_vs_ref", "win rate", 3),
                 ("judge_win_rate_vs_ref", "judge win rate", 3), ("mean_length", "length", 1),
                 ("distinct_2", "distinct-2", 3), ("fluency", "fluency", 3), ("train_seconds", "train s", 0),
                 ("peak_memory_mb", "peak MB", 0))

# Two-sided 95% critical values t_{0.975, df} of Student's t distribution, from the NIST/SEMATECH
# e-Handbook of Statistical Methods, section 1.3.6.7.2 "Critical Values of the Student's t Distribution"
# (https://www.itl.nist.gov/div898/handbook/eda/section3/eda3672.htm), column 0.975; they agree with
# scipy.stats.t.ppf(0.975, df) to the 3 decimals shown (tests/test_report.py checks this when scipy is present).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042, 40: 2.021, 50: 2.009, 60: 2.000, 80: 1.990, 100: 1.984}
Z_975 = 1.960  # the normal limit, used past df 100 (t_{0.975,100} is 1.984: the CI is at most 1.2% too narrow)


class ReportWarning(UserWarning):
    """A run dir that was skipped or a group that mixes runs it should not (printed by ``zoo report``)."""


# ---------------------------------------------------------------------------------------------- collecting


def collect_runs(dirs: Iterable[str | Path]) -> list[dict]:
    """The metrics of every run under ``dirs`` (each a run dir or a sweep dir), each with "run_dir" added.

    A run dir is one holding metrics.json, at any depth. Unreadable or non-object metrics.json, run dirs
    without one (still running, or killed), and missing ``dirs`` are reported as ``ReportWarning``s and
    skipped. A metrics.json reached through two of ``dirs`` is read once.
    """
    runs, seen = [], set()
    for root in map(Path, dirs):
        if not root.is_dir():
            warnings.warn(f"{root}: not a directory, skipped", ReportWarning, stacklevel=2)
            continue
        for path in sorted(root.rglob("metrics.json")):
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            run = _read_metrics(path)
            if run is not None:
                runs.append(run)
        _warn_runs_without_metrics(root)
    return runs


def _read_metrics(path: Path) -> dict | None:
    """metrics.json as a dict with "run_dir", or None (with a warning) when it cannot be used."""
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"{path}: unreadable ({type(err).__name__}: {err}), skipped", ReportWarning, stacklevel=3)
        return None
    if not isinstance(run, dict):
        warnings.warn(f"{path}: not a JSON object, skipped", ReportWarning, stacklevel=3)
        return None
    run["run_dir"] = str(path.parent)
    return run


def _warn_runs_without_metrics(root: Path) -> None:
    """Warn about run dirs under ``root`` that have no metrics.json.

    ``train()`` writes config.yaml first and metrics.json last (even on failure), so a config.yaml alone means
    the run is still going or was killed. Hydra's own ``.hydra/config.yaml`` is not a run dir.
    """
    for config in sorted(root.rglob("config.yaml")):
        relative = config.relative_to(root).parts
        if any(part.startswith(".") for part in relative) or (config.parent / "metrics.json").exists():
            continue
        warnings.warn(f"{config.parent}: no metrics.json (still running or killed), skipped", ReportWarning,
                      stacklevel=3)


def read_log(run_dir: str | Path) -> list[dict]:
    """The rows of ``run_dir/log.jsonl``; [] without one. Lines that do not parse are dropped, because a
    killed run can leave a half-written last line."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------- aggregating


def t_975(df: int) -> float:
    """t_{0.975, df}: the two-sided 95% Student-t critical value for ``df`` >= 1 degrees of freedom.

    Between tabulated values the next lower df is used, which is conservative (a slightly wider CI).
    """
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if df > max(T_975):
        return Z_975
    return T_975[max(d for d in T_975 if d <= df)]


def t_ci_over_seeds(values: Sequence[float]) -> dict | None:
    """{"mean", "ci_low", "ci_high", "n"} of ``values`` (one per seed); None when empty. (The per-run
    interval over evaluation prompts is ``zoo.evaluate.normal_ci_over_prompts``.)

    The CI is mean ± t_{0.975, n-1} * s / sqrt(n), with s the sample standard deviation (n - 1 in the
    denominator): a 95% interval for the mean over seeds. With one value there is no spread to estimate,
    so ci_low and ci_high are None.
    """
    n = len(values)
    if n == 0:
        return None
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": 1}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def run_value(run: dict, metric: str) -> float | None:
    """The run's value of ``metric``: the number itself, or the "mean" of an evaluation dict (gold_reward,
    kl_to_ref: their own CIs are over eval prompts, not seeds); None when absent or not a number. A held-out
    scorer's metric is a path into other_rewards: "other_rewards.textblob" (its mean),
    "other_rewards.textblob.win_rate_vs_ref"."""
    value = run
    for key in metric.split(".", 2) if metric.startswith(OTHER_REWARDS + ".") else [metric]:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def is_finished(run: dict) -> bool:
    """Only finished runs enter the means; anything else (failed, or a status never updated) is a failure."""
    return run.get("status") == "finished"


def group_key(run: dict) -> tuple[str, str, str]:
    """The (algo, feedback, tag) a run is reported under; the tag ("" when unset) tells apart the points of a
    hyperparameter sweep (``tag=beta0.1``) and best-of-N's N."""
    return str(run.get("algo", "?")), str(run.get("feedback", "?")), str(run.get("tag") or "")


def natural(text: str) -> tuple:
    """A sort key that orders the numbers inside ``text`` by value: N=2 < N=16, beta0.03 < beta0.1."""
    parts = re.split(r"(\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part) for i, part in enumerate(parts) if part)


def group_runs(runs: Iterable[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """Runs by (algo, feedback, tag), groups in sorted order (tags by their numbers)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return dict(sorted(groups.items(), key=lambda item: (item[0][0], item[0][1], natural(item[0][2]))))


def other_reward_metrics(runs: Sequence[dict]) -> list[str]:
    """The held-out scorers' metrics the runs report: "other_rewards.NAME" and its win rate, by NAME."""
    names = sorted({name for run in runs for name in (run.get(OTHER_REWARDS) or {})})
    return [m for name in names for m in (f"{OTHER_REWARDS}.{name}", f"{OTHER_REWARDS}.{name}.win_rate_vs_ref")]


def row_metrics(rows: Sequence[dict]) -> list[str]:
    """REPORT_METRICS, then the held-out scorers' metrics that ``aggregate`` found in the runs."""
    extra = sorted({key for row in rows for key in row if key.startswith(OTHER_REWARDS + ".")})
    return [*REPORT_METRICS, *extra]


def aggregate(runs: Sequence[dict]) -> list[dict]:
    """One row per (algo, feedback, tag): algo, feedback, tag, n_seeds (finished runs), n_failed, seeds, and for
    each metric in REPORT_METRICS (and each held-out scorer's, when any run has one) its ``t_ci_over_seeds``
    over the finished runs that report it (None if none does)."""
    metrics = [*REPORT_METRICS, *other_reward_metrics(runs)]
    rows = []
    for (algo, feedback, tag), group in group_runs(runs).items():
        finished = [run for run in group if is_finished(run)]
        _warn_mixed_group(" ".join(filter(None, (algo, tag))), feedback, finished)
        row = {"algo": algo, "feedback": feedback, "tag": tag, "n_seeds": len(finished),
               "n_failed": len(group) - len(finished),
               "seeds": sorted((run.get("seed") for run in finished), key=str)}
        for metric in metrics:
            values = [v for v in (run_value(run, metric) for run in finished) if v is not None]
            row[metric] = t_ci_over_seeds(values)
        rows.append(row)
    return rows


def _warn_mixed_group(algo: str, feedback: str, finished: list[dict]) -> None:
    """Warn when a group's runs are not seeds of one setting: a repeated seed (two sweeps with different
    hyperparameters, say) or different models / data sets would be averaged as if they were."""
    seeds = [run.get("seed") for run in finished]
    repeated = sorted({str(s) for s in seeds if seeds.count(s) > 1})
    if repeated:
        warnings.warn(f"{algo}/{feedback}: seed(s) {', '.join(repeated)} appear in more than one run; "
                      "they are averaged together", ReportWarning, stacklevel=3)
    for key in ("model", "data"):
        values = sorted({str(run.get(key)) for run in finished})
        if len(values) > 1:
            warnings.warn(f"{algo}/{feedback}: runs on different {key} values ({', '.join(values)}) are averaged "
                          "together", ReportWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------------- writing


def csv_columns(metrics: Sequence[str] = REPORT_METRICS) -> list[str]:
    """results.csv's header: the group, its counts, then mean, CI bounds and n for each metric."""
    columns = ["algo", "feedback", "tag", "n_seeds", "n_failed"]
    for metric in metrics:
        columns += [f"{metric}_mean", f"{metric}_ci_low", f"{metric}_ci_high", f"{metric}_n"]
    return columns


def csv_row(row: dict, metrics: Sequence[str] = REPORT_METRICS) -> dict:
    """An ``aggregate`` row flattened for results.csv; a missing metric or CI is an empty cell."""
    flat = {key: row[key] for key in ("algo", "feedback", "tag", "n_seeds", "n_failed")}
    for metric in metrics:
        stats = row.get(metric) or {}
        flat[f"{metric}_mean"] = stats.get("mean")
        flat[f"{metric}_ci_low"] = stats.get("ci_low")
        flat[f"{metric}_ci_high"] = stats.get("ci_high")
        flat[f"{metric}_n"] = stats.get("n", 0)
    return flat


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """results.csv; floats are written with repr, so they read back exactly."""
    metrics = row_metrics(rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=csv_columns(metrics))
    writer.writeheader()
    writer.writerows(csv_row(row, metrics) for row in rows)
    write_atomically(path, text.getvalue())


def format_cell(stats: dict | None, decimals: int, n_seeds: int) -> str:
    """"mean ± half-width"; the mean alone for one value; "-" when missing. "(n=k)" marks a metric that
    fewer runs than the group's finished seeds reported (judge win rate in older runs, say)."""
    if stats is None:
        return "-"
    cell = f"{stats['mean']:.{decimals}f}"
    if stats["ci_high"] is not None:
        cell += f" ± {stats['ci_high'] - stats['mean']:.{decimals}f}"
    if stats["n"] != n_seeds:
        cell += f" (n={stats['n']})"
    return cell


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, int]] = TABLE_COLUMNS) -> str:
    """The results as a markdown table, one line per (algo, feedback); ``columns``: (metric, header, decimals)."""
    header = ["algo", "feedback", "seeds", *(title for _, title, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        seeds = str(row["n_seeds"]) + (f" ({row['n_failed']} failed)" if row["n_failed"] else "")
        cells = [" ".join(filter(None, (row["algo"], row["tag"]))), row["feedback"], seeds,
                 *(format_cell(row.get(metric), decimals, row["n_seeds"]) for metric, _, decimals in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beyond_gold_table(rows: Sequence[dict]) -> str | None:
    """What the gold reward does not show: each held-out scorer's mean and win rate against the reference
    (no stage or loss reads them), NLL under the reference and repeated 3-grams; None when no run has them."""
    scorers = [m for m in row_metrics(rows) if m.startswith(OTHER_REWARDS + ".") and not m.endswith(".win_rate_vs_ref")]
    columns = [column for metric in scorers for column in (
        (metric, metric.removeprefix(OTHER_REWARDS + "."), 3),
        (f"{metric}.win_rate_vs_ref", f"{metric.removeprefix(OTHER_REWARDS + '.')} win rate", 3))]
    columns += [("nll_under_ref", "NLL under ref", 2), ("repeated_3grams", "repeated 3-grams", 3)]
    if not any(row.get(metric) for row in rows for metric, _, _ in columns):
        return None
    return markdown_table(rows, columns)


FIGURE_CAPTIONS = {
    "frontier.png": "gold reward vs KL to the reference, one point per run; group means with 95% CIs",
    "win_rates.png": "win rate vs the reference by gold reward and by the judge, means with 95% CIs",
    "curves.png": "training loss over steps (mean over seeds); PPO's proxy (reward model) score vs gold reward",
}


def best_of_n_table(rows: Sequence[dict]) -> str | None:
    """Best-of-N's rows (those with an analytical KL; N = 1 is the reference): N, gold reward, the KL estimate
    next to the bound, win rate; None when there are none."""
    bon = [row for row in rows if row["kl_bound"] is not None and row["kl_to_ref"] is not None]
    if not bon:
        return None
    lines = ["| N | selected by | gold reward | KL estimate | KL bound log N - (N-1)/N | win rate |",
             "|---|---|---|---|---|---|"]
    for row in sorted(bon, key=lambda row: natural(row["tag"])):
        n = row["tag"].removeprefix("N=") or "1 (the reference)"
        selector = f"RM ({row['feedback']} feedback)" if row["tag"] else "-"
        lines.append(f"| {n} | {selector} | {format_cell(row['gold_reward'], 3, row['n_seeds'])} | "
                     f"{row['kl_to_ref']['mean']:.2f} | {row['kl_bound']['mean']:.2f} | "
                     f"{format_cell(row['win_rate_vs_ref'], 3, row['n_seeds'])} |")
    return "\n".join(lines)


def provenance_section(record: dict) -> list[str]:
    """How the results were made: command, commit, machine and the time each phase took (``zoo compare``)."""
    lines = ["## How these results were made", ""]
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    if record.get("commit"):
        lines.append(f"- git commit: `{record['commit']}`" + (" (with uncommitted changes)" if record.get("dirty") else ""))
    machine = record.get("machine") or {}
    if machine:
        gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ", no GPU"
        lines.append(f"- machine: {machine.get('cpu_count')} CPU cores ({machine.get('processor')}){gpu}; "
                     f"{machine.get('platform')}; Python {machine.get('python')}, torch {machine.get('torch')}")
    if record.get("started"):
        lines.append(f"- started: {record['started']}")
    phases = record.get("phases") or {}
    if record.get("total_seconds") is not None:
        parts = ", ".join(f"{name.removesuffix('_seconds').replace('_', ' ')} {value / 60:.1f} min"
                          for name, value in phases.items())
        lines.append(f"- wall time: {record['total_seconds'] / 60:.1f} min ({parts})")
    return [*lines, ""]


def markdown_report(runs: Sequence[dict], rows: Sequence[dict], figures: Sequence[Path],
                    skipped: Sequence[str] = (), provenance: dict | None = None,
                    figure_errors: dict[str, str] | None = None) -> str:
    """report.md: the table, what it is computed from, best-of-N, the failed and skipped runs, the figures
    (and any that could not be drawn, with the error) and, from ``zoo compare``, how the results were made."""
    figure_errors = figure_errors or {}
    legend = ("Mean over finished seeds ± half-width of the 95% Student-t CI of that mean (mean alone for one "
              "seed; \"(n=k)\" where only k runs report the metric; \"-\" where none does). Gold reward and KL "
              "per run are means over the evaluation prompts.")
    parts = ["# Results", "", legend, "", markdown_table(rows), ""]
    beyond = beyond_gold_table(rows)
    if beyond:
        parts += ["## Beyond the gold reward", "",
                  "Held-out scorers (the task's `other_rewards`: no stage or loss reads them) with the win rate "
                  "against the reference by each, and two signs of reward hacking: the mean per-token negative "
                  "log-likelihood of the policy's samples under the reference, and the fraction of a sample's word "
                  "3-grams that repeat an earlier one.", "", beyond, ""]
    bon = best_of_n_table(rows)
    if bon:
        parts += ["## Best-of-N from the reference", "",
                  "Nothing is trained: per prompt, N reference samples are scored by the reward model and the best "
                  "is kept. Every N is read exactly off one pool of reference samples per prompt (zoo/best_of_n.py). "
                  "The KL estimate is the exact KL between best-of-N on the pool and the pool itself; the bound is "
                  "exact when no completion repeats, and the estimate falls below it where completions do.", "",
                  bon, ""]
    failed = [run for run in runs if not is_finished(run)]
    if failed:
        parts += ["## Failed runs", ""]
        for run in sorted(failed, key=lambda run: run["run_dir"]):
            error = run.get("error") or f"status {run.get('status')!r}"
            parts.append(f"- `{run['run_dir']}`: {' '.join(str(error).split())}")  # one line per run
        parts.append("")
    if skipped:
        parts += ["## Skipped run dirs", "", *(f"- {message}" for message in skipped), ""]
    parts += ["## Figures", ""]
    if figures:
        parts += [f"- [{path.name}]({path.name}): {FIGURE_CAPTIONS.get(path.name, '')}" for path in figures]
    elif not figure_errors:
        parts.append("None: matplotlib is not installed (pip install matplotlib).")
    parts += [f"- {name}: not drawn ({error})" for name, error in figure_errors.items()]
    if provenance:
        parts += ["", *provenance_section(provenance)]
    return "\n".join(parts) + "\n"


def write_report(runs: Sequence[dict], out_dir: str | Path, skipped: Sequence[str] = (),
                 provenance: dict | None = None) -> list[Path]:
    """Write results.csv, report.md and the figures for ``runs`` into ``out_dir``; returns the paths written.

    ``skipped``: messages about run dirs that could not be read, listed in report.md. ``provenance``: how the
    results were made (``zoo compare``'s record: command, commit, machine, timings).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = aggregate(runs)
    write_csv(rows, out_dir / "results.csv")
    figure_errors: dict[str, str] = {}
    figures = write_figures(runs, rows, out_dir, figure_errors)
    write_atomically(out_dir / "report.md", markdown_report(runs, rows, figures, skipped, provenance, figure_errors))
    return [out_dir / "results.csv", out_dir / "report.md", *figures]


# ------------------------------------------------------------------------------------------------- figures


def write_figures(runs: Sequence[dict], rows: Sequence[dict], out_dir: Path,
                  errors: dict[str, str] | None = None) -> list[Path]:
    """frontier.png, win_rates.png and curves.png in ``out_dir``; [] with a printed note without matplotlib.
    A figure that fails to draw is reported on stderr and left out, its error put in ``errors`` by file
    name, so one plotting failure cannot cost the table and the other figures of a finished comparison."""
    try:
        import matplotlib
    except ImportError:
        print("zoo report: matplotlib is not installed, no figures (pip install matplotlib)")
        return []
    matplotlib.use("Agg")  # files only: no display on a training box
    import matplotlib.pyplot as plt

    paths = []
    for name, draw in (("frontier.png", plot_frontier), ("win_rates.png", plot_win_rates),
                       ("curves.png", plot_curves)):
        try:
            fig = draw(plt, runs, rows)
            fig.savefig(out_dir / name, dpi=120, bbox_inches="tight")
        except Exception as error:  # noqa: BLE001 - named on stderr and in report.md; the rest still drawn
            message = f"{type(error).__name__}: {error}"
            print(f"zoo report: {out_dir / name} not drawn: {message}", file=sys.stderr)
            if errors is not None:
                errors[name] = message
            continue
        finally:
            plt.close("all")
        paths.append(out_dir / name)
    return paths


def _label(row_or_key) -> str:
    """"algo tag/feedback" of an aggregate row or a group key."""
    algo, feedback, tag = ((row_or_key["algo"], row_or_key["feedback"], row_or_key.get("tag", ""))
                           if isinstance(row_or_key, dict) else row_or_key)
    return f"{' '.join(filter(None, (algo, tag)))}/{feedback}"


def family(row_or_key) -> tuple[str, str]:
    """(algo, feedback): the points of one sweep (one tag each) form a family, drawn in one colour and joined."""
    return (row_or_key["algo"], row_or_key["feedback"]) if isinstance(row_or_key, dict) else row_or_key[:2]


def _colors(plt, rows: Sequence[dict]) -> dict[tuple[str, str], object]:
    """One colour per (algo, feedback) family, the same in every figure."""
    families = list(dict.fromkeys(family(row) for row in rows))
    cmap = plt.get_cmap("tab10" if len(families) <= 10 else "tab20")
    return {key: cmap(i % cmap.N) for i, key in enumerate(families)}


def _errs(stats: Sequence[dict], floor: float | None = None) -> list[list[float]]:
    """Error-bar lengths [below..., above...] the means, from the CIs. NaN without a CI (one seed): matplotlib
    then draws no bar, where a zero-length one would read as a CI of zero width. ``floor`` cuts the bars at
    the metric's least possible value (a KL is >= 0; a t-interval from 3 seeds can reach below it)."""
    # a mean below the floor (a KL estimate can come out negative on a noisy run) keeps no bar below it
    lows = [max(s["ci_low"], min(floor, s["mean"])) if s["ci_low"] is not None and floor is not None
            else s["ci_low"] for s in stats]
    below = [s["mean"] - low if low is not None else math.nan for s, low in zip(stats, lows)]
    above = [s["ci_high"] - s["mean"] if s["ci_high"] is not None else math.nan for s in stats]
    return [below, above]


def is_reference_row(row: dict) -> bool:
    """Whether an aggregate row sits at KL 0 to the reference: the reference itself (best-of-N's N = 1)."""
    return row["kl_to_ref"] is not None and row["kl_to_ref"]["mean"] == 0.0


def reference_gold(runs: Sequence[dict], rows: Sequence[dict]) -> float | None:
    """Gold reward of the reference policy for the frontier's star at KL 0. None when a group already sits at
    KL 0 (best-of-N's N = 1 row is the reference itself, measured on its whole pool of samples), so the plot
    shows one reference, not two estimates of it. Otherwise the mean of the runs' ``ref_gold_reward``, each
    seed counted once: runs of one seed share their reference samples."""
    if any(map(is_reference_row, rows)):
        return None
    by_seed = {run.get("seed"): value for run in runs if is_finished(run)
               if (value := run_value(run, "ref_gold_reward")) is not None}
    return sum(by_seed.values()) / len(by_seed) if by_seed else None


# Where a point's tag label may go, in points from the point, tried in order: (dx, dy, horizontal alignment)
LABEL_OFFSETS = ((4, -10, "left"), (4, 4, "left"), (-4, 4, "right"), (-4, -10, "right"), (4, -19, "left"),
                 (4, 13, "left"), (-4, -19, "right"), (-4, 13, "right"))


def place_labels(ax, labels: Sequence[tuple[str, tuple[float, float], object]]) -> None:
    """Annotates each (text, (x, y), colour) next to its point at the first of LABEL_OFFSETS where it overlaps
    no marker and no label placed before it (compared in display coordinates, after the axes' limits are
    final); where every offset collides, at the first one."""
    from matplotlib.transforms import Bbox

    ax.autoscale_view()
    renderer = ax.figure.canvas.get_renderer()
    taken = []
    for _, xy, _ in labels:  # the markers: a 6 px box around each labelled point
        x, y = ax.transData.transform(xy)
        taken.append(Bbox.from_bounds(x - 3, y - 3, 6, 6))
    for text, xy, color in labels:
        last = len(LABEL_OFFSETS)  # the first offset again, kept whatever it overlaps
        for i, (dx, dy, ha) in enumerate(LABEL_OFFSETS + LABEL_OFFSETS[:1]):
            note = ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7, color=color)
            box = note.get_window_extent(renderer)
            if i == last or not any(box.overlaps(other) for other in taken):
                break
            note.remove()
        taken.append(box)


def plot_frontier(plt, runs: Sequence[dict], rows: Sequence[dict]):
    """Gold reward vs KL to the reference (the DPO paper's Figure 2): each run a small point, each group's mean
    a large one with CI bars in both directions (cut at KL 0). The groups of one family (a hyperparameter
    sweep, best-of-N's N) are joined in order of KL and labelled by tag; best-of-N is also drawn at its
    analytical KL, log N - (N-1)/N (hollow, dotted). The reference policy itself sits at KL 0."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = _colors(plt, rows)
    finished = [run for run in runs if is_finished(run)]
    for key, group in group_runs(finished).items():
        points = [(run_value(r, "kl_to_ref"), run_value(r, "gold_reward")) for r in group]
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if points and len(group) > 1:  # single-run groups: the mean marker is the run
            ax.scatter(*zip(*points), color=colors[family(key)], alpha=0.35, s=14)
    plotted = [row for row in rows if row["kl_to_ref"] is not None and row["gold_reward"] is not None]
    labels = []
    for fam in dict.fromkeys(family(row) for row in plotted):
        members = sorted((row for row in plotted if family(row) == fam), key=lambda row: row["kl_to_ref"]["mean"])
        color, label = colors[fam], f"{fam[0]}/{fam[1]}"
        if all(map(is_reference_row, members)):
            label += " (the reference)"
        if len(members) > 1:
            ax.plot([r["kl_to_ref"]["mean"] for r in members], [r["gold_reward"]["mean"] for r in members],
                    color=color, lw=1.2, alpha=0.8)
        for i, row in enumerate(members):
            kl, gold = row["kl_to_ref"], row["gold_reward"]
            ax.errorbar(kl["mean"], gold["mean"], xerr=_errs([kl], floor=0.0), yerr=_errs([gold]), fmt="o", ms=6,
                        capsize=3, color=color, label=label if i == 0 else None)
            if row["tag"] and len(members) > 1:
                labels.append((row["tag"], (kl["mean"], gold["mean"]), color))
        bound = [(row["kl_bound"]["mean"], row["gold_reward"]["mean"]) for row in members if row["kl_bound"]]
        if len(bound) > 1:
            ax.plot(*zip(*bound), ls=":", marker="o", mfc="none", color=color, lw=1,
                    label=f"{label} at log N - (N-1)/N")
    ref = reference_gold(runs, rows)
    if ref is not None:
        ax.scatter([0.0], [ref], marker="*", s=120, color="black", label="reference", zorder=3)
    place_labels(ax, labels)
    _finish_axes(ax, "KL to reference (nats per completion)", "gold reward", "Reward vs KL frontier",
                 legend_outside=True)
    return fig


def _finish_axes(ax, xlabel: str | None, ylabel: str, title: str, grid: bool = True,
                 legend_outside: bool = False) -> None:
    """Labels, title, a light grid and a legend (when anything was labelled) for one panel; outside, to the
    right of the axes, where points may fill any corner."""
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1.0)} if legend_outside else {}))


def plot_win_rates(plt, runs: Sequence[dict], rows: Sequence[dict]):
    """Grouped bars per (algo, feedback): win rate vs the reference by gold reward and by the LM judge.
    Groups with neither (reward-model runs) are left out."""
    rows = [row for row in rows if row["win_rate_vs_ref"] is not None or row["judge_win_rate_vs_ref"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows) + 2), 4.5))
    width = 0.38
    for offset, metric, name, color in ((-width / 2, "win_rate_vs_ref", "gold reward", "tab:blue"),
                                        (width / 2, "judge_win_rate_vs_ref", "LM judge", "tab:orange")):
        present = [(i, row[metric]) for i, row in enumerate(rows) if row[metric] is not None]
        if present:  # one bar series per metric, so the legend has one entry each
            ax.bar([i + offset for i, _ in present], [stats["mean"] for _, stats in present], width,
                   yerr=_errs([stats for _, stats in present]), capsize=3, color=color, label=name)
    ax.axhline(0.5, color="gray", ls="--", lw=1)  # a policy no better than the reference wins half the time
    ax.set_xticks(range(len(rows)), [_label(row) for row in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    _finish_axes(ax, None, "win rate vs reference", "Win rate vs reference", grid=False)
    return fig


def mean_curve(logs: Sequence[list[dict]], key: str) -> tuple[list[float], list[float]]:
    """(steps, mean of ``key`` over the logs that have it at that step), sorted by step."""
    by_step: dict[float, list[float]] = defaultdict(list)
    for log in logs:
        for row in log:
            value = row.get(key)
            if "step" in row and isinstance(value, (int, float)) and not isinstance(value, bool):
                by_step[row["step"]].append(float(value))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def _logged(logs: Sequence[list[dict]], key: str) -> bool:
    """Whether any row of any of ``logs`` has ``key``."""
    return any(key in row for log in logs for row in log)


def plot_curves(plt, runs: Sequence[dict], rows: Sequence[dict]):
    """Training loss vs step per group (mean over finished seeds); when some logs have PPO's
    "objective/scores" and "objective/gold", a second panel of proxy (reward-model) score, solid, vs gold
    reward, dashed: the gap opening between them is reward over-optimization."""
    colors = _colors(plt, rows)
    logs = {key: [read_log(run["run_dir"]) for run in group]
            for key, group in group_runs(run for run in runs if is_finished(run)).items()}
    proxy = {key: group_logs for key, group_logs in logs.items()
             if _logged(group_logs, "objective/scores") and _logged(group_logs, "objective/gold")}
    fig, axes = plt.subplots(1, 2 if proxy else 1, figsize=(12 if proxy else 6.5, 4.5), squeeze=False)
    ax = axes[0][0]
    for key, group_logs in logs.items():
        steps, loss = mean_curve(group_logs, "loss")
        if steps:
            ax.plot(steps, loss, color=colors[family(key)], label=_label(key))
    _finish_axes(ax, "step", "training loss", "Training loss (mean over seeds)")
    if proxy:
        ax = axes[0][1]
        for key, group_logs in proxy.items():
            ax.plot(*mean_curve(group_logs, "objective/scores"), color=colors[family(key)], label=f"{_label(key)} proxy")
            ax.plot(*mean_curve(group_logs, "objective/gold"), color=colors[family(key)], ls="--",
                    label=f"{_label(key)} gold")
        _finish_axes(ax, "step", "reward", "Proxy (reward model) score vs gold reward")
    return fig


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> list[Path]:
    """``zoo report DIR... [--out DIR]``: print the table and write the report; returns the paths written."""
    from zoo.cli_help import Parser

    parser = Parser(prog="zoo report", description="Compare runs: results.csv, report.md, plots.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run dirs or sweep dirs (searched for metrics.json)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the first DIR)")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        runs = collect_runs(args.dirs)
        skipped = [str(w.message) for w in caught if issubclass(w.category, ReportWarning)]
        if not runs:
            raise FileNotFoundError(f"no readable metrics.json under {', '.join(map(str, args.dirs))}")
        record = args.dirs[0] / "compare.json"  # a zoo compare dir: keep its provenance in the report
        provenance = json.loads(record.read_text()) if record.is_file() else None
        paths = write_report(runs, args.out or args.dirs[0], skipped, provenance)
        table = markdown_table(aggregate(runs))
    # Re-printed plainly (the warnings module would add this file's name and line), each once: write_report
    # and the table above both aggregate.
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"zoo report: warning: {message}", file=sys.stderr)
    print(table)
    print()
    for path in paths:
        print(f"wrote {path}")
    return paths


if __name__ == "__main__":
    main()
