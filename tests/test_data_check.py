"""``zoo data check``: the run's own validation as a command, on a file with one of each problem."""

import json

from zoo.data.check import main

ROWS = [
    {"prompt": "The film was", "chosen": " great fun.", "rejected": " dull."},
    {"prompt": "The film was", "chosen": " great fun.", "rejected": " dull."},  # 1: a duplicate of row 0
    {"prompt": "A story", "chosen": " same.", "rejected": " same."},  # 2: an identical pair
    {"prompt": "Hello", "chosen": ""},  # 3: an empty completion (and no rejected)
    {"prompt": "Hi", "chosen": 3, "rejected": " ok."},  # 4: a wrong type
    {"prompt": "word " * 600, "chosen": " a.", "rejected": " b."},  # 5: a prompt over data.max_length
]


def check(tmp_path, capsys, *overrides, rows=ROWS):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    status = main([str(path), *overrides])
    return status, capsys.readouterr().out, str(path)


def test_every_problem_is_named_with_its_row_and_the_run_would_stop(tmp_path, capsys):
    status, out, path = check(tmp_path, capsys, "algo=dpo")
    assert status == 1 and "verdict: the run would stop on this data" in out
    assert f"{path}: 6 rows; algo=dpo reads them as pairs" in out
    assert "  pairs                 4  (4 standard)" in out
    assert f"{path}: row 3: field 'chosen' is an empty string" in out
    assert f"{path}: row 4: field 'chosen' must be a string or a list of messages, got int (3)" in out
    assert "duplicate rows: 1; pairs with identical chosen and rejected: 1" in out
    assert "data.max_length=512" in out and "1 fill max_length (refused: rows 5)" in out


def test_skip_bad_rows_makes_them_skipped_not_fatal(tmp_path, capsys):
    status, out, _ = check(tmp_path, capsys, "algo=dpo", "data.skip_bad_rows=true")
    assert status == 0 and "skipped (data.skip_bad_rows=true)" in out


def test_clean_data_passes_with_its_token_lengths(tmp_path, capsys):
    rows = [{"prompt": f"Review {i}: the film was", "chosen": f" good, {i} times.", "rejected": " bad."}
            for i in range(30)]
    status, out, _ = check(tmp_path, capsys, "algo=kto", rows=rows)
    assert status == 0 and "reads them as unpaired" in out and "rows the run cannot use: 0" in out
    assert "0 fill max_length (refused)" in out and "verdict: the run can read this data" in out


def test_rows_of_unpaired_pairs_keep_their_file_numbers_past_the_first_thousand(tmp_path, capsys):
    """Pairs read by KTO are unpaired 1,000 pairs at a time (TRL's order): a too-long prompt in pair 1,500 is
    still named row 1500."""
    rows = [{"prompt": f"Review {i}:", "chosen": " good.", "rejected": " bad."} for i in range(1600)]
    rows[1500]["prompt"] = "word " * 600
    status, out, _ = check(tmp_path, capsys, "algo=kto", rows=rows)
    assert status == 1 and "1 fill max_length (refused: rows 1500)" in out
