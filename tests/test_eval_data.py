"""Evaluation data for ``data=local``: a user's file is their training set, and nothing leaves it unannounced.

By default every row trains and the sampling evaluation is skipped, with a message naming the keys that
turn it on; ``data.eval_path`` evaluates on a file's prompts; ``data.eval_fraction`` holds out a seeded
fraction of the prompts with all their rows, never half a pair or one of a prompt's labelled rows.
"""

from __future__ import annotations

import json

import pytest

import scratch_model
from zoo.config import compose_train_config
from zoo.data.load import prompt_key, split_by_prompt
from zoo.data.schema import DataError
from zoo.run import train


def run(scratch, tmp_path, algo: str, data_file, *extra):
    overrides = [f"algo={algo}", "data=local", f"data.path={data_file}", f"model.name_or_path={scratch['policy']}",
                 "trainer.max_steps=1", "trainer.batch_size=4", "trainer.save_every=0", "eval.max_new_tokens=4",
                 f"stages.cache_dir={tmp_path / 'cache'}", *extra]
    return train(compose_train_config(overrides), tmp_path / "run")


def test_by_default_every_row_trains_and_the_evaluation_is_skipped_with_a_message(scratch, tmp_path, capsys):
    """The issue's case: 16 unpaired rows, each prompt once desirable and once not, default eval.num_prompts.
    The old default held the last row out (15 rows trained, one pair split) without a word."""
    metrics = run(scratch, tmp_path, "kto", scratch["unpaired_standard"])
    assert metrics["train_rows"] == 16 and metrics["eval_source"] == "none"
    assert "win_rate_vs_ref" not in metrics and not (tmp_path / "run" / "samples.jsonl").exists()
    out = capsys.readouterr().out
    assert "training on all 16 rows" in out and "data.eval_path" in out and "data.eval_fraction" in out


def test_eval_fraction_holds_out_whole_prompts(scratch, tmp_path):
    metrics = run(scratch, tmp_path, "kto", scratch["unpaired_standard"], "data.eval_fraction=0.25",
                  "eval.num_prompts=8")
    # 8 distinct prompts (each on a desirable and an undesirable row): 2 held out with both rows, 12 rows train
    assert metrics["train_rows"] == 12
    assert metrics["eval_source"].startswith("data.eval_fraction=0.25 (seed 0): 4 of 16 rows")
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len({s["prompt"] for s in samples}) == 2


def test_eval_path_gives_the_prompts_and_every_row_trains(scratch, tmp_path):
    prompts = tmp_path / "eval.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("The plot", "The cast", "This movie")))
    metrics = run(scratch, tmp_path, "dpo", scratch["pairs_standard"], f"data.eval_path={prompts}")
    assert metrics["train_rows"] == 8 and metrics["eval_source"] == f"data.eval_path={prompts} (3 prompts)"
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 3


def test_a_bad_eval_file_names_its_row_and_field(scratch, tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"question": "no prompt"}) + "\n")
    with pytest.raises(DataError, match=r"eval.jsonl: row 1: field 'prompt' is missing"):
        run(scratch, tmp_path, "dpo", scratch["pairs_standard"], f"data.eval_path={bad}")


@pytest.mark.parametrize("unpaired", [False, True])
def test_split_by_prompt_never_separates_a_prompts_rows(unpaired):
    pairs = [{"prompt": f"p{i % 10}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(30)]  # 3 rows a prompt
    rows = scratch_model.unpaired(pairs) if unpaired else pairs
    train, held = split_by_prompt(rows, 0.3, seed=0)
    assert len(train) + len(held) == len(rows)
    held_prompts = {prompt_key(r["prompt"]) for r in held}
    assert len(held_prompts) == 3 and not held_prompts & {prompt_key(r["prompt"]) for r in train}
    assert [r for r in rows if r in train] == train  # file order kept
    assert split_by_prompt(rows, 0.3, seed=0) == (train, held)  # seeded
    assert split_by_prompt(rows, 0.3, seed=1) != (train, held)


def test_split_by_prompt_keeps_one_prompt_on_each_side_and_rejects_bad_fractions():
    rows = [{"prompt": p, "completion": "c", "label": True} for p in ("a", "b")]
    assert [len(part) for part in split_by_prompt(rows, 0.01, 0)] == [1, 1]
    assert [len(part) for part in split_by_prompt(rows, 0.99, 0)] == [1, 1]
    with pytest.raises(ValueError, match="data.eval_fraction must lie in"):
        split_by_prompt(rows, 1.0, 0)
    with pytest.raises(DataError, match="1 distinct prompt"):
        split_by_prompt(rows[:1] * 4, 0.5, 0)
