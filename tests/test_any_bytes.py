"""Any bytes in (hypothesis): arbitrary Unicode, control characters, empty and huge fields, wrong message roles
and nested junk, fed to the loaders, the row schema, tokenization with the collators, and the judge's
template. Every input either trains (valid rows become tensors of the right shapes) or is refused with a
DataError naming the source, the row and the field; no other exception escapes."""

import json
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoo.data.collate import BATCH_KINDS
from zoo.data.load import load_rows, read_rows, tokenize_rows
from zoo.data.schema import DataError
from zoo.feedback.judge import CLOSE, OPEN, LMJudge
from zoo.models import load_tokenizer
from zoo.world import paths

SOURCE = "junk.jsonl"
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "\n\r\t", "\u202e", "\ufeff", "x" * 3000, OPEN, CLOSE, "<|im_end|>", "</s>"])
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "", "USER"]) | TEXT,
                                 "content": TEXT})
JUNK = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
FIELD = TEXT | st.lists(MESSAGE, max_size=3) | JUNK
ROW = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "completion", "label", "messages", "extra"]),
                      FIELD | st.booleans(), max_size=5) | JUNK
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(paths.MODEL))


def refused_well(err: DataError) -> bool:
    """A refusal names the source and a row (and, for a row's content, its field)."""
    message = str(err)
    return message.startswith(SOURCE) and (re.search(r"row \d+", message) is not None or "is empty" in message)


@FAST
@given(rows=st.lists(ROW, max_size=6), kind=st.sampled_from(sorted(BATCH_KINDS)))
def test_rows_are_loaded_or_refused_naming_row_and_field(rows, kind):
    try:
        good, skipped = load_rows(kind, SOURCE, rows)
    except DataError as err:
        assert refused_well(err), err
        return
    assert skipped == 0 and good


@FAST
@given(rows=st.lists(ROW, min_size=1, max_size=6), kind=st.sampled_from(sorted(BATCH_KINDS)),
       max_length=st.sampled_from([None, 8, 64]))
def test_loaded_rows_tokenize_and_collate_or_are_refused(rows, kind, max_length, tokenizer):
    try:
        good, _ = load_rows(kind, SOURCE, rows)
        tokens, _ = tokenize_rows(good, "pairs" if kind == "unpaired" and "chosen" in good[0] else kind, tokenizer,
                                  SOURCE, max_length)
    except DataError as err:
        assert refused_well(err), err
        return
    collator = BATCH_KINDS[kind if kind != "unpaired" or "label" in good[0] else "pairs"].collator
    if collator is None or not tokens:
        return
    batch = collator(tokenizer.pad_token_id, max_length)(tokens)
    width = batch["input_ids"].shape[1]
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].shape[1] == width
    assert max_length is None or width <= max_length


@FAST
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_file_bytes_are_read_or_refused_naming_the_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("bytes") / "junk.jsonl"
    path.write_bytes(data)
    try:
        rows = read_rows(path)
    except DataError as err:
        assert str(err).startswith(str(path)) and ("line" in str(err) or "UTF-8" in str(err)), err
        return
    assert all(row == json.loads(json.dumps(row)) for row in rows if isinstance(row, dict))


@pytest.fixture(scope="module")
def judge():
    return LMJudge(str(paths.MODEL), batch_size=4)


@FAST
@given(prompt=TEXT | st.lists(MESSAGE, min_size=1, max_size=3), a=TEXT, b=TEXT)
def test_the_judges_template_keeps_its_delimiters_whatever_the_responses(prompt, a, b, judge):
    """Whatever the responses contain (delimiters, control characters, huge text), the rendered question has
    exactly its own delimiters: one pair in the instructions and one per response."""
    text = judge.render(prompt, a, b)
    assert text.count(OPEN) == 3 and text.count(CLOSE) == 3
