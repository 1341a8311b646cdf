"""Bad input gets a clear error naming the file, the row and the field; good input in every schema loads."""

import json

import pytest

from zoo.data.collate import PairCollator
from zoo.data.load import load_rows, read_rows, to_schema
from zoo.data.schema import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"prompt": "The plot was", "chosen": " great.", "rejected": " awful."}


@pytest.mark.parametrize("bad_row, field, problem", [
    ({"prompt": "The plot was", "rejected": " awful."}, "chosen", "is missing"),
    ({"prompt": "The plot was", "chosen": "", "rejected": " awful."}, "chosen", "empty string"),
    ({"prompt": "The plot was", "chosen": " great.", "rejected": 3}, "rejected", "must be a string"),
    ({"prompt": None, "chosen": " great.", "rejected": " awful."}, "prompt", "is missing"),
    ({"prompt": "x", "chosen": [{"role": "assistant"}], "rejected": " awful."}, "chosen", "message 0"),
])
def test_bad_row_names_file_row_and_field(tmp_path, bad_row, field, problem):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, bad_row, GOOD])
    with pytest.raises(DataError) as err:
        load_rows("pairs", str(path), read_rows(path))
    message = str(err.value)
    assert str(path) in message and "row 2" in message and f"'{field}'" in message and problem in message


def test_bad_rows_can_be_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, {"prompt": "a", "chosen": "", "rejected": "b"}, GOOD])
    rows, skipped = load_rows("pairs", str(path), read_rows(path), skip_bad_rows=True)
    assert (len(rows), skipped) == (2, 1)


def test_invalid_json_line_is_reported_with_its_row(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(DataError, match=r"prefs.jsonl: row 1 \(line 2\) is not valid JSON"):
        read_rows(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "nope.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        read_rows(tmp_path / "data.csv")


def test_implicit_prompt_is_split_off():
    rows = to_schema([{"chosen": "The plot was great.", "rejected": "The plot was awful."}], "pairs")
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("The plot was", " great.", " awful.")


def test_conversational_messages_become_demonstrations():
    messages = [{"role": "user", "content": "Review it."}, {"role": "assistant", "content": "Great."}]
    rows, _ = load_rows("demonstrations", "mem", [{"messages": messages}])
    assert rows[0]["prompt"] == messages[:1] and rows[0]["completion"] == messages[1:]


def test_pair_collator_stacks_chosen_then_rejected_and_masks_completions():
    batch = PairCollator(pad_token_id=0)([
        {"prompt_ids": [5, 6], "chosen_ids": [7, 8], "rejected_ids": [9]},
        {"prompt_ids": [5], "chosen_ids": [7], "rejected_ids": [9, 9, 9]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [5, 7, 0, 0], [5, 6, 9, 0], [5, 9, 9, 9]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]


def test_spearman_matches_hand_ranks():
    """Ranks a = (1, 2, 3, 4), b = (1, 3, 2, 4): 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8; ties get average ranks."""
    from zoo.evaluate import spearman

    assert spearman([0.1, 0.2, 0.3, 0.4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 1, 2]) == pytest.approx(1.0)


def test_over_long_prompt_names_row_and_field():
    from zoo.data.load import tokenize_rows
    from zoo.models import load_tokenizer
    from zoo.world import paths

    tokenizer = load_tokenizer(str(paths.MODEL))
    rows = [GOOD, {"prompt": "The plot was " * 30, "chosen": " great.", "rejected": " awful."}]
    with pytest.raises(DataError, match=r"prefs.jsonl: row 1: field 'prompt' is \d+ tokens.*data.max_length=16"):
        tokenize_rows(rows, "pairs", tokenizer, "prefs.jsonl", max_length=16)
    kept, skipped = tokenize_rows(rows, "pairs", tokenizer, "prefs.jsonl", max_length=16, skip_bad_rows=True)
    assert (len(kept), skipped) == (1, 1)


def test_reward_eval_keeps_rows_aligned_when_a_pair_is_skipped():
    """A held-out pair whose prompt fills max_length is left out, and the rest keep their own gold labels."""
    from zoo.evaluate import evaluate_reward_model
    from zoo.models import load_reward_model, load_tokenizer
    from zoo.world import paths

    tokenizer = load_tokenizer(str(paths.MODEL))
    model = load_reward_model(str(paths.MODEL), tokenizer.pad_token_id)
    long = {"prompt": "The plot was " * 30, "chosen": " x.", "rejected": " y.", "chosen_gold": 9.0, "rejected_gold": 0.0}
    pairs = [{**GOOD, "chosen_gold": 0.5, "rejected_gold": -0.5}, long,
             {**GOOD, "chosen_gold": 0.2, "rejected_gold": -0.1}]
    metrics, rows = evaluate_reward_model(model, tokenizer, pairs, max_length=16, batch_size=2)
    assert metrics["num_eval_pairs"] == 2 and [r["chosen_gold"] for r in rows] == [0.5, 0.2]
    assert metrics["labels_accuracy_vs_gold"] == 1.0


# --- unpaired data (KTO) ---


def test_unpaired_rows_need_a_boolean_label(tmp_path):
    rows = [{"prompt": "The plot was", "completion": " great.", "label": True},
            {"prompt": "The plot was", "completion": " awful.", "label": "no"}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_rows("unpaired", str(path), read_rows(path))
    assert "row 1" in str(err.value) and "'label'" in str(err.value) and "true or false" in str(err.value)
    with pytest.raises(DataError, match="field 'label' is missing"):
        load_rows("unpaired", "x.jsonl", [{"prompt": "a", "completion": "b"}])


def test_paired_rows_are_unpaired_and_errors_name_the_original_row():
    """Each pair gives (prompt, chosen, True) and (prompt, rejected, False), in the order of TRL's
    unpair_preference_dataset (the chosen rows, then the rejected ones); implicit prompts work too."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    pairs = [GOOD, {"chosen": "The plot was fine.", "rejected": "The plot was bad."}]
    rows, skipped = load_rows("unpaired", "p.jsonl", pairs)
    assert skipped == 0 and [(r["completion"], r["label"]) for r in rows] == [
        (" great.", True), (" fine.", True), (" awful.", False), (" bad.", False)]
    assert rows[1]["prompt"] == rows[3]["prompt"] == "The plot was"
    explicit = load_rows("pairs", "p.jsonl", pairs)[0]
    assert rows == unpair_preference_dataset(Dataset.from_list(explicit)).to_list()
    messages = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "b"}],
                "rejected": [{"role": "assistant", "content": "c"}]}
    with pytest.raises(DataError, match="p.jsonl: row 1: field 'prompt' is a list of messages where row 0's is a "
                                        "string: the pairs cannot be unpaired as one table"):
        load_rows("unpaired", "p.jsonl", [GOOD, messages])  # strings in one row, messages in the next
    with pytest.raises(DataError, match="row 1: field 'rejected'"):
        load_rows("unpaired", "p.jsonl", [GOOD, {"prompt": "a", "chosen": "b", "rejected": ""}])


def test_unpairing_orders_rows_as_trl_does_per_map_batch_of_1000_pairs():
    """2,500 pairs (three map batches, the last partial) with an extra column: zoo's own unpairing gives TRL's
    rows in TRL's order (per batch of 1,000: the chosen rows, then the rejected), as conversational rows too."""
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    from zoo.data.load import unpair

    pairs = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "source": i % 3} for i in range(2500)]
    ours = unpair(pairs)
    assert ours == unpair_preference_dataset(Dataset.from_list(pairs)).to_list()
    assert [r["label"] for r in ours[:1000]] == [True] * 1000 and ours[1000]["completion"] == "bad 0"
    chats = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": f"b{i}"}]} for i in range(3)]
    assert unpair(chats) == unpair_preference_dataset(Dataset.from_list(chats)).to_list()


def test_unpaired_collator_stacks_examples_then_shifted_kl_rows():
    """Rows (x_i, y_i) for i = 0..2 -> examples x0y0, x1y1, x2y2, then KL rows x0y2, x1y0, x2y1 (TRL's shift)."""
    from zoo.data.collate import UnpairedCollator

    rows = [{"prompt_ids": [10 + i], "completion_ids": [20 + i, 2], "label": i != 1} for i in range(3)]
    batch = UnpairedCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[10, 20, 2], [11, 21, 2], [12, 22, 2], [10, 22, 2], [11, 20, 2], [12, 21, 2]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1]] * 6
    assert batch["labels"].tolist() == [True, False, True]
    with pytest.raises(ValueError, match="at least 2 rows"):
        UnpairedCollator(0)(rows[:1])


def test_keep_desirable_makes_an_imbalanced_split():
    """10 pairs unpaired -> 10 desirable + 10 undesirable; fraction 0.1 keeps 1 desirable and all 10 undesirable,
    in the original order, the same rows for the same seed."""
    from zoo.data.split import keep_desirable

    rows, _ = load_rows("unpaired", "p", [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(10)])
    kept = keep_desirable(rows, 0.1, seed=0)
    assert sum(r["label"] for r in kept) == 1 and sum(not r["label"] for r in kept) == 10
    assert kept == [r for r in rows if r in kept] and kept == keep_desirable(rows, 0.1, seed=0)
    with pytest.raises(ValueError, match="desirable_fraction"):
        keep_desirable(rows, 0.0, seed=0)
