"""``zoo report``: collecting run dirs, aggregating seeds with Student-t CIs, and the files written.

Every run dir here is synthetic (metrics.json and log.jsonl written by hand): no training.
"""

import csv
import json
import math
import sys
import warnings

import pytest

from zoo import cli
from zoo.report import (
    REPORT_METRICS,
    T_975,
    ReportWarning,
    aggregate,
    collect_runs,
    csv_columns,
    mean_curve,
    read_log,
    t_975,
    write_report,
)


def write_run(root, name, algo="dpo", feedback="gold", seed=0, status="finished", log=None, **metrics):
    """A run dir like ``train()`` leaves: config.yaml, metrics.json and optionally log.jsonl."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"seed: {seed}\n")
    record = {"algo": algo, "feedback": feedback, "model": "tiny", "data": "world", "seed": seed, "status": status,
              **metrics}
    (run_dir / "metrics.json").write_text(json.dumps(record))
    if log is not None:
        (run_dir / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    return run_dir


def eval_dict(mean):
    """An evaluation metric as ``evaluate`` writes it: a per-prompt CI the report must not use."""
    return {"mean": mean, "ci95_low": mean - 0.05, "ci95_high": mean + 0.05, "n": 256}


def three_seeds(root, algo="dpo", feedback="gold"):
    """Seeds 0..2 with gold reward 0.6/0.7/0.8, KL 1/2/3 and win rate 0.5/0.5/0.5; judge win rate in the
    last two runs only (0.6, 0.8), as when the first ran before the judge metric existed."""
    runs = []
    for seed, (gold, kl) in enumerate([(0.6, 1.0), (0.7, 2.0), (0.8, 3.0)]):
        extra = {"judge_win_rate_vs_ref": 0.4 + 0.2 * seed} if seed else {}
        runs.append(write_run(root, f"{algo}-{feedback}-seed{seed}", algo, feedback, seed,
                              gold_reward=eval_dict(gold), kl_to_ref=eval_dict(kl), win_rate_vs_ref=0.5,
                              mean_length=20.0 + seed, train_seconds=100.0, **extra))
    return runs


def row_for(rows, algo, feedback):
    [row] = [row for row in rows if (row["algo"], row["feedback"]) == (algo, feedback)]
    return row


def test_t_quantiles_are_the_tabulated_values():
    """The values the CIs use, and the conservative rule between tabulated dfs."""
    assert t_975(1) == 12.706
    assert t_975(2) == 4.303
    assert t_975(30) == 2.042
    assert t_975(35) == 2.042  # not tabulated: the next lower df's (larger) value
    assert t_975(100) == 1.984
    assert t_975(10_000) == 1.960
    with pytest.raises(ValueError):
        t_975(0)


def test_t_table_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df, value in T_975.items():
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4), df


def test_three_seeds_mean_and_student_t_ci(tmp_path):
    """gold 0.6, 0.7, 0.8: mean 0.7, sd 0.1, half-width t_{0.975,2} * sd / sqrt(3) = 4.303 * 0.057735 = 0.248434.
    KL 1, 2, 3: mean 2, sd 1, half-width 4.303 / sqrt(3) = 2.484338. Win rate 0.5 x 3: sd 0, CI [0.5, 0.5].
    The per-prompt ci95 in the dicts (mean ± 0.05) must not leak in."""
    three_seeds(tmp_path)
    [row] = aggregate(collect_runs([tmp_path]))
    assert (row["algo"], row["feedback"], row["n_seeds"], row["n_failed"]) == ("dpo", "gold", 3, 0)
    assert row["seeds"] == [0, 1, 2]
    gold = row["gold_reward"]
    assert gold["n"] == 3
    assert gold["mean"] == pytest.approx(0.7)
    assert gold["ci_low"] == pytest.approx(0.7 - 0.248434, abs=1e-6)
    assert gold["ci_high"] == pytest.approx(0.7 + 0.248434, abs=1e-6)
    kl = row["kl_to_ref"]
    assert (kl["mean"], kl["ci_low"], kl["ci_high"]) == pytest.approx((2.0, 2.0 - 2.484338, 2.0 + 2.484338), abs=1e-6)
    win = row["win_rate_vs_ref"]
    assert (win["mean"], win["ci_low"], win["ci_high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert row["mean_length"]["mean"] == pytest.approx(21.0)


def test_metric_missing_in_some_runs_has_its_own_n(tmp_path):
    """judge win rate in 2 of 3 runs: 0.6, 0.8 -> mean 0.7, sd 0.141421, half-width t_{0.975,1} * sd / sqrt(2)
    = 12.706 * 0.1 = 1.2706. A metric no run reports (fluency) is None, shown as "-"."""
    three_seeds(tmp_path / "sweep")
    runs = collect_runs([tmp_path / "sweep"])
    [row] = aggregate(runs)
    judge = row["judge_win_rate_vs_ref"]
    assert judge["n"] == 2 and row["n_seeds"] == 3
    assert (judge["mean"], judge["ci_low"], judge["ci_high"]) == pytest.approx((0.7, 0.7 - 1.2706, 0.7 + 1.2706))
    assert row["fluency"] is None and row["peak_memory_mb"] is None
    write_report(runs, tmp_path / "out")
    table_row = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
                     if line.startswith("| dpo"))
    cells = [cell.strip() for cell in table_row.strip("|").split("|")]
    assert cells[:3] == ["dpo", "gold", "3"]
    assert cells[3] == "0.700 ± 0.248"  # gold reward
    assert cells[6] == "0.700 ± 1.271 (n=2)"  # judge win rate
    assert cells[9] == "-"  # fluency


def test_failed_run_is_counted_excluded_and_listed(tmp_path):
    sweep = tmp_path / "sweep"
    three_seeds(sweep)
    failed = write_run(sweep, "dpo-gold-seed3", seed=3, status="failed", gold_reward=eval_dict(100.0),
                       error="RuntimeError: loss is nan\nat step 7")
    only_failed = write_run(sweep, "kto-gold-seed0", algo="kto", status="failed", error="ValueError: bad beta")
    runs = collect_runs([sweep])
    rows = aggregate(runs)
    dpo = row_for(rows, "dpo", "gold")
    assert (dpo["n_seeds"], dpo["n_failed"]) == (3, 1)
    assert dpo["gold_reward"]["mean"] == pytest.approx(0.7)  # the failed run's 100 is not averaged in
    kto = row_for(rows, "kto", "gold")
    assert (kto["n_seeds"], kto["n_failed"]) == (0, 1)
    assert all(kto[metric] is None for metric in REPORT_METRICS)

    write_report(runs, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    failed_section = report.split("## Failed runs")[1].split("##")[0]
    assert f"- `{failed}`: RuntimeError: loss is nan at step 7" in failed_section  # one line per run
    assert f"- `{only_failed}`: ValueError: bad beta" in failed_section
    assert "| dpo | gold | 3 (1 failed) |" in report
    assert "| kto | gold | 0 (1 failed) | - |" in report


def test_single_seed_gives_mean_without_ci(tmp_path):
    write_run(tmp_path, "ipo-gold-seed0", algo="ipo", gold_reward=eval_dict(0.7))
    runs = collect_runs([tmp_path])
    [row] = aggregate(runs)
    assert row["gold_reward"] == {"mean": pytest.approx(0.7), "ci_low": None, "ci_high": None, "n": 1}
    write_report(runs, tmp_path / "out")
    assert "| ipo | gold | 1 | 0.700 | - |" in (tmp_path / "out" / "report.md").read_text()
    with open(tmp_path / "out" / "results.csv") as f:
        [line] = csv.DictReader(f)
    assert (line["gold_reward_mean"], line["gold_reward_ci_low"], line["gold_reward_ci_high"]) == ("0.7", "", "")


def test_unreadable_and_missing_metrics_warn_instead_of_crashing(tmp_path):
    sweep = tmp_path / "sweep"
    good = write_run(sweep, "dpo-gold-seed0", gold_reward=eval_dict(0.5))
    (sweep / "corrupt").mkdir()
    (sweep / "corrupt" / "metrics.json").write_text('{"algo": "dpo", "status": "fini')  # cut off mid-write
    (sweep / "not-an-object").mkdir()
    (sweep / "not-an-object" / "metrics.json").write_text("[1, 2]")
    (sweep / "killed").mkdir()
    (sweep / "killed" / "config.yaml").write_text("seed: 1\n")  # train() started, never wrote metrics.json
    (good / ".hydra").mkdir()
    (good / ".hydra" / "config.yaml").write_text("hydra: {}\n")  # Hydra's own file: not a run dir

    with pytest.warns(ReportWarning) as caught:
        runs = collect_runs([sweep, tmp_path / "does-not-exist"])
    assert [run["run_dir"] for run in runs] == [str(good)]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 4, messages
    assert any("corrupt" in m and "unreadable" in m for m in messages)
    assert any("not-an-object" in m and "not a JSON object" in m for m in messages)
    assert any(m.startswith(str(sweep / "killed")) and "no metrics.json" in m for m in messages)
    assert any("does-not-exist" in m for m in messages)

    write_report(runs, tmp_path / "out", skipped=messages)
    skipped_section = (tmp_path / "out" / "report.md").read_text().split("## Skipped run dirs")[1]
    assert "killed" in skipped_section and "corrupt" in skipped_section


def test_run_dir_itself_and_overlapping_dirs_are_read_once(tmp_path):
    run = write_run(tmp_path / "a" / "deep" / "sweep", "dpo-gold-seed0")
    assert [r["run_dir"] for r in collect_runs([run])] == [str(run)]
    assert len(collect_runs([tmp_path, run, tmp_path / "a"])) == 1


def test_repeated_seed_in_a_group_warns(tmp_path):
    write_run(tmp_path / "sweep1", "dpo-gold-seed0", gold_reward=eval_dict(0.5))
    write_run(tmp_path / "sweep2", "dpo-gold-seed0", gold_reward=eval_dict(0.9))
    with pytest.warns(ReportWarning, match="seed"):
        [row] = aggregate(collect_runs([tmp_path]))
    assert row["n_seeds"] == 2


def test_results_csv_round_trips(tmp_path):
    three_seeds(tmp_path / "sweep")
    write_run(tmp_path / "sweep", "ppo-gold-seed0", algo="ppo", gold_reward=eval_dict(0.61), peak_memory_mb=862.5)
    runs = collect_runs([tmp_path / "sweep"])
    rows = aggregate(runs)
    write_report(runs, tmp_path / "out")
    with open(tmp_path / "out" / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == csv_columns()
        lines = list(reader)
    assert [(line["algo"], line["feedback"]) for line in lines] == [("dpo", "gold"), ("ppo", "gold")]
    for line, row in zip(lines, rows):
        assert (int(line["n_seeds"]), int(line["n_failed"])) == (row["n_seeds"], row["n_failed"])
        for metric in REPORT_METRICS:
            stats = row[metric] or {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
            assert int(line[f"{metric}_n"]) == stats["n"]
            for part in ("mean", "ci_low", "ci_high"):
                cell = line[f"{metric}_{part}"]
                assert (float(cell) if cell else None) == stats[part], (metric, part)  # exact: repr floats


def ppo_log(gold_at_end):
    """A PPO-style log: the proxy score climbs while gold climbs less."""
    return [{"step": step, "loss": 1.0 / step, "objective/scores": 0.1 * step, "objective/gold": gold_at_end * step / 3}
            for step in (1, 2, 3)]


def test_mean_curve_averages_seeds_per_step_and_skips_bad_lines(tmp_path):
    run = write_run(tmp_path, "ppo-gold-seed0", algo="ppo", log=ppo_log(0.3))
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 0.')  # a killed run's half-written last line
    other = write_run(tmp_path, "ppo-gold-seed1", algo="ppo", seed=1, log=ppo_log(0.6)[:2])
    logs = [read_log(run), read_log(other)]
    assert len(logs[0]) == 3
    steps, gold = mean_curve(logs, "objective/gold")
    assert steps == [1, 2, 3]
    assert gold == pytest.approx([(0.1 + 0.2) / 2, (0.2 + 0.4) / 2, 0.3])  # step 3: only seed 0 logged it
    assert read_log(tmp_path / "no-such-run") == []


def test_report_writes_figures(tmp_path):
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "sweep"
    three_seeds(sweep)
    for seed in range(2):
        write_run(sweep, f"ppo-gold-seed{seed}", algo="ppo", seed=seed, log=ppo_log(0.3 * (seed + 1)),
                  gold_reward=eval_dict(0.6), kl_to_ref=eval_dict(4.8), win_rate_vs_ref=0.8,
                  ref_gold_reward=eval_dict(0.06))
    paths = write_report(collect_runs([sweep]), tmp_path / "out")
    names = [path.name for path in paths]
    assert names == ["results.csv", "report.md", "frontier.png", "win_rates.png", "curves.png"]
    for path in paths[2:]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path
    figures = (tmp_path / "out" / "report.md").read_text().split("## Figures")[1]
    assert all(f"[{name}]({name})" in figures for name in names[2:])


def test_figures_without_policy_metrics_do_not_crash(tmp_path):
    """Reward-model runs have no gold reward, KL or win rate, and one seed has no CI: the figures are still
    written (empty frontier and win-rate axes)."""
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "rm", "reward-gold-seed0", algo="reward", train_seconds=50.0,
              log=[{"step": 1, "loss": 0.7}])
    write_run(tmp_path / "dpo", "dpo-gold-seed0", gold_reward=eval_dict(0.5), kl_to_ref=eval_dict(2.0),
              win_rate_vs_ref=0.6)
    for dirs in ([tmp_path / "rm"], [tmp_path / "rm", tmp_path / "dpo"]):
        paths = write_report(collect_runs(dirs), tmp_path / "out")
        assert [path.name for path in paths][2:] == ["frontier.png", "win_rates.png", "curves.png"]


def test_curves_get_a_proxy_panel_only_with_ppo_logs(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.report import plot_curves

    write_run(tmp_path / "dpo", "dpo-gold-seed0", log=[{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6}])
    write_run(tmp_path / "ppo", "ppo-gold-seed0", algo="ppo", log=ppo_log(0.3))
    for dirs, panels in (([tmp_path / "dpo"], 1), ([tmp_path / "dpo", tmp_path / "ppo"], 2)):
        runs = collect_runs(dirs)
        fig = plot_curves(plt, runs, aggregate(runs))
        assert len(fig.axes) == panels
        plt.close(fig)


def test_no_matplotlib_skips_figures_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    three_seeds(tmp_path)
    paths = write_report(collect_runs([tmp_path]), tmp_path / "out")
    assert [path.name for path in paths] == ["results.csv", "report.md"]
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert "matplotlib is not installed" in (tmp_path / "out" / "report.md").read_text()


def test_cli_report_prints_table_and_paths(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # figures are tested above; keep this fast
    three_seeds(tmp_path / "sweep")
    (tmp_path / "sweep" / "killed").mkdir()
    (tmp_path / "sweep" / "killed" / "config.yaml").write_text("seed: 9\n")
    cli.main(["report", str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert "| algo | feedback | seeds | gold reward | KL |" in captured.out
    assert "| dpo | gold | 3 | 0.700 ± 0.248 |" in captured.out
    assert f"wrote {tmp_path / 'out' / 'results.csv'}" in captured.out
    assert captured.err.count("zoo report: warning:") == 1 and "killed" in captured.err

    cli.main(["report", str(tmp_path / "sweep")])  # default --out: the first DIR
    assert (tmp_path / "sweep" / "report.md").is_file()

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(tmp_path / "empty")])
    assert exit_info.value.code == 1
    assert "no readable metrics.json" in capsys.readouterr().err


def test_half_width_formula_matches_hand_computation():
    """t_ci_over_seeds on its own: 2, 4, 4, 4, 5, 5, 7, 9 (mean 5, sample sd sqrt(32/7) = 2.138090),
    half-width t_{0.975,7} * sd / sqrt(8) = 2.365 * 0.755929 = 1.787772."""
    from zoo.report import t_ci_over_seeds

    stats = t_ci_over_seeds([2, 4, 4, 4, 5, 5, 7, 9])
    assert stats["n"] == 8 and stats["mean"] == 5
    assert stats["ci_high"] - 5 == pytest.approx(2.365 * math.sqrt(32 / 7) / math.sqrt(8))
    assert stats["ci_high"] - 5 == pytest.approx(1.787772, abs=1e-6)
    assert t_ci_over_seeds([]) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning from a plain computation
        t_ci_over_seeds([1.0, 1.0])


def test_tags_split_groups_and_sort_by_their_numbers(tmp_path):
    # a beta sweep and best-of-N: one group per tag, in numeric order (N=2 before N=16), family shared
    for beta in ("1.0", "0.03", "0.3"):
        write_run(tmp_path, f"dpo-{beta}", tag=f"beta{beta}", gold_reward=eval_dict(float(beta)),
                  kl_to_ref=eval_dict(1 / float(beta)))
    for n in (16, 2, 4):
        write_run(tmp_path, f"bon-{n}", algo="best_of_n", tag=f"N={n}", gold_reward=eval_dict(0.1 * n),
                  kl_to_ref=eval_dict(math.log(n)), kl_bound=math.log(n) - (n - 1) / n)
    rows = aggregate(collect_runs([tmp_path]))
    assert [(r["algo"], r["tag"]) for r in rows] == [("best_of_n", "N=2"), ("best_of_n", "N=4"), ("best_of_n", "N=16"),
                                                     ("dpo", "beta0.03"), ("dpo", "beta0.3"), ("dpo", "beta1.0")]
    assert all(r["n_seeds"] == 1 for r in rows)  # the same seed under different tags is no repeat
    write_report(collect_runs([tmp_path]), tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| dpo beta0.03 | gold | 1 |" in report
    # best-of-N gets its own table with the bound next to the estimate, N in order
    table = report.split("## Best-of-N from the reference")[1].split("##")[0]
    assert table.index("| 2 |") < table.index("| 4 |") < table.index("| 16 |")
    assert f"| {math.log(16):.2f} | {math.log(16) - 15 / 16:.2f} |" in table
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 10_000


def test_provenance_is_rendered_and_picked_up_by_zoo_report(tmp_path, capsys):
    three_seeds(tmp_path)
    record = {"command": "zoo compare experiment=smoke", "commit": "a" * 40, "dirty": True,
              "machine": {"cpu_count": 2, "processor": "CPU X", "gpu": None, "platform": "Linux", "python": "3.11",
                          "torch": "2.13.0"},
              "phases": {"stages_seconds": 60.0, "runs_seconds": 600.0}, "total_seconds": 690.0}
    (tmp_path / "compare.json").write_text(json.dumps(record))
    cli.main(["report", str(tmp_path)])
    report = (tmp_path / "report.md").read_text()
    assert "- command: `zoo compare experiment=smoke`" in report
    assert f"`{'a' * 40}` (with uncommitted changes)" in report
    assert "2 CPU cores (CPU X), no GPU" in report
    assert "wall time: 11.5 min (stages 1.0 min, runs 10.0 min)" in report


def test_reference_star_counts_each_seed_once_and_defers_to_a_kl_zero_row(tmp_path):
    """Runs of one seed share their reference samples, so the star is the mean over seeds, not over runs:
    seed 0 (0.1, in two runs) and seed 1 (0.4) give 0.25, where a mean over runs would give 0.2. A group at
    KL 0 (best-of-N's N = 1, the reference itself) is the reference's point, and then no star is drawn."""
    from zoo.report import reference_gold

    for name, algo, seed, ref in (("a", "dpo", 0, 0.1), ("b", "ipo", 0, 0.1), ("c", "dpo", 1, 0.4)):
        write_run(tmp_path / "sweep", name, algo, seed=seed, gold_reward=eval_dict(0.5), kl_to_ref=eval_dict(1.0),
                  ref_gold_reward=eval_dict(ref))
    runs = collect_runs([tmp_path / "sweep"])
    assert reference_gold(runs, aggregate(runs)) == pytest.approx(0.25)
    write_run(tmp_path / "bon", "sft", "sft", "none", gold_reward=eval_dict(0.03), kl_to_ref=eval_dict(0.0),
              ref_gold_reward=eval_dict(0.03))
    runs = collect_runs([tmp_path / "sweep", tmp_path / "bon"])
    assert reference_gold(runs, aggregate(runs)) is None


def test_kl_error_bars_stop_at_zero():
    """A 3-seed t-interval of a KL can reach below 0 (mean 1, CI -2..4); the bar stops at 0 (length 1 below,
    not 3) and keeps its upper end (3 above). Without a floor the bar is the CI itself."""
    from zoo.report import _errs

    stats = {"mean": 1.0, "ci_low": -2.0, "ci_high": 4.0}
    assert _errs([stats], floor=0.0) == [[1.0], [3.0]]
    assert _errs([stats]) == [[3.0], [3.0]]


def test_frontier_tag_labels_do_not_overlap(tmp_path):
    """Five sweep points crowded within 0.01 of each other: each tag label goes where it overlaps no other
    label (the first offset alone would stack all five)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from zoo.report import plot_frontier

    for i, beta in enumerate(("0.01", "0.03", "0.1", "0.3", "1.0")):
        write_run(tmp_path, f"dpo-beta{beta}", tag=f"beta{beta}", gold_reward=eval_dict(0.5 + 0.002 * i),
                  kl_to_ref=eval_dict(2.0 + 0.002 * i))
    write_run(tmp_path, "far", tag="beta3.0", gold_reward=eval_dict(0.1), kl_to_ref=eval_dict(8.0))
    runs = collect_runs([tmp_path])
    fig = plot_frontier(plt, runs, aggregate(runs))
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in fig.axes[0].texts]
    plt.close(fig)
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_kl_error_bars_of_a_negative_mean_keep_no_bar_below():
    """A KL estimate can come out negative on a noisy run (mean -0.1, CI -0.5..0.3): with the floor at 0 the
    bar below is empty, never of negative length (matplotlib refuses those), and the bar above keeps 0.4."""
    from zoo.report import _errs

    [below], [above] = _errs([{"mean": -0.1, "ci_low": -0.5, "ci_high": 0.3}], floor=0.0)
    assert below == 0.0 and above == pytest.approx(0.4)


def test_a_figure_that_fails_is_reported_and_the_rest_still_written(tmp_path, monkeypatch, capsys):
    """A plotting error costs its own figure only: the table, results.csv and the other figures are written,
    and report.md and stderr name the figure and the error."""
    import zoo.report

    def broken(plt, runs, rows):
        raise ValueError("bad bars")

    monkeypatch.setattr(zoo.report, "plot_frontier", broken)
    three_seeds(tmp_path / "runs")
    paths = write_report(collect_runs([tmp_path / "runs"]), tmp_path / "out")
    assert [path.name for path in paths] == ["results.csv", "report.md", "win_rates.png", "curves.png"]
    assert "- frontier.png: not drawn (ValueError: bad bars)" in (tmp_path / "out" / "report.md").read_text()
    assert "frontier.png not drawn: ValueError: bad bars" in capsys.readouterr().err


def test_held_out_scorers_get_columns_a_table_and_seed_cis(tmp_path):
    """other_rewards (a task's scorers no loss reads) are aggregated over seeds like gold, written to results.csv
    and shown beside NLL under the reference and repeated 3-grams; a world-only report keeps its columns."""
    for seed, (mean, win) in enumerate([(0.2, 0.6), (0.4, 0.8)]):
        write_run(tmp_path / "runs", f"dpo-seed{seed}", seed=seed, gold_reward=eval_dict(0.5), nll_under_ref=3.0 + seed,
                  repeated_3grams=0.01, other_rewards={"textblob": {"mean": mean, "ref_mean": 0.1, "win_rate_vs_ref": win}})
    write_run(tmp_path / "runs", "kto-seed0", algo="kto", gold_reward=eval_dict(0.4))  # ran without the scorer
    runs = collect_runs([tmp_path / "runs"])
    rows = aggregate(runs)
    dpo, kto = row_for(rows, "dpo", "gold"), row_for(rows, "kto", "gold")
    assert dpo["other_rewards.textblob"]["mean"] == pytest.approx(0.3)
    assert dpo["other_rewards.textblob.win_rate_vs_ref"]["ci_high"] - 0.7 == pytest.approx(T_975[1] * 0.1)
    assert dpo["nll_under_ref"]["mean"] == pytest.approx(3.5) and kto["other_rewards.textblob"] is None
    write_report(runs, tmp_path / "out")
    with open(tmp_path / "out" / "results.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[-8:-4] == ["other_rewards.textblob_mean", "other_rewards.textblob_ci_low",
                                            "other_rewards.textblob_ci_high", "other_rewards.textblob_n"]
        assert float(next(reader)["other_rewards.textblob.win_rate_vs_ref_mean"]) == pytest.approx(0.7)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Beyond the gold reward" in report
    assert "| textblob | textblob win rate | NLL under ref | repeated 3-grams |" in report
    assert "| dpo | gold | 2 | 0.300 ± 1.271 | 0.700 ± 1.271 | 3.50 ± 6.35 | 0.010 ± 0.000 |" in report

    write_run(tmp_path / "world", "dpo-seed0", gold_reward=eval_dict(0.5))
    world = aggregate(collect_runs([tmp_path / "world"]))
    write_report(collect_runs([tmp_path / "world"]), tmp_path / "world_out")
    assert "Beyond the gold reward" not in (tmp_path / "world_out" / "report.md").read_text()
    with open(tmp_path / "world_out" / "results.csv") as f:
        assert csv.DictReader(f).fieldnames == csv_columns() and not any("other_rewards" in k for k in world[0])


def test_paired_differences_by_hand(tmp_path):
    """benchmarks/paired_differences.py: the per-prompt differences of two runs on their shared prompts.
    A - B on prompts p, q, r = 0.5, 0.1, 0.3: mean 0.3, sd 0.2, half-width 1.96 * 0.2 / sqrt(3)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_differences.py"
    spec = importlib.util.spec_from_file_location("paired_differences", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, golds in (("a", {"p": 0.9, "q": 0.2, "r": 0.4, "s": 1.0}), ("b", {"p": 0.4, "q": 0.1, "r": 0.1})):
        run = write_run(tmp_path, name, algo=name, gold_reward=eval_dict(0.5))
        (run / "samples.jsonl").write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}],
                                                               "gold_reward": g}) + "\n" for p, g in golds.items()))
    runs = module.trained_runs(tmp_path)
    a, b = (module.per_prompt(runs[f"{x}/gold seed 0"], "gold_reward") for x in "ab")
    mean, half, n = module.paired(a, b)
    assert n == 3 and mean == pytest.approx(0.3) and half == pytest.approx(1.96 * 0.2 / math.sqrt(3))
    with pytest.raises(ValueError, match="same prompts"):
        module.paired(a, {"other": 1.0})
