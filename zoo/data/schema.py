"""Validation of rows against the standard schemas, with errors that name file, row and field.

Schemas (the column names TRL and the hub use, ``BatchKind.fields`` in ``zoo.data.collate``; values are
strings, or lists of ``{"role", "content"}`` messages for conversational data):

- ``pairs``: prompt, chosen, rejected (an implicit prompt is split off by the loader first)
- ``demonstrations``: prompt, completion
- ``prompts``: prompt
- ``unpaired`` (KTO): prompt, completion, label (bool: True = desirable); paired rows are unpaired
  by the loader (chosen -> True, rejected -> False)
"""

from __future__ import annotations

from typing import Any

from zoo.data.collate import BATCH_KINDS

class DataError(ValueError):
    """A dataset row does not fit the schema; the message names the source, row and field."""


def _field_problem(value: Any, field: str) -> str | None:
    """Why ``value`` is not a valid text field (or, for ``label``, a bool), or None if it is."""
    if value is None:
        return "is missing (null)"
    if field == "label":
        return None if isinstance(value, bool) else f"must be true or false, got {type(value).__name__} ({value!r:.80})"
    if isinstance(value, str):
        # The prompt may legitimately be empty (unconditional generation); completions may not.
        if field != "prompt" and not value.strip():
            return "is an empty string"
        return None
    if isinstance(value, list):
        if not value:  # a chat template has nothing to render (an empty string prompt is fine: no context)
            return "is an empty message list"
        for j, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                return f"message {j} is not a {{'role': str, 'content': str}} dict (got {message!r:.80})"
        return None
    return f"must be a string or a list of messages, got {type(value).__name__} ({value!r:.80})"


def validate_row(row: Any, index: int, kind: str, source: str) -> None:
    """Raise DataError naming ``source``, ``index`` and the field if ``row`` breaks the ``kind`` schema."""
    where = f"{source}: row {index}"
    fields = BATCH_KINDS[kind].fields
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields {fields}, got {type(row).__name__}")
    for field in fields:
        if field not in row:
            raise DataError(f"{where}: field '{field}' is missing (a {kind} row needs {', '.join(fields)};"
                            f" it has {', '.join(sorted(row, key=str)) or 'no fields'})")
        problem = _field_problem(row[field], field)
        if problem:
            raise DataError(f"{where}: field '{field}' {problem}")
    # messages cannot follow plain text: a string prompt takes string completions (a conversation's prompt may
    # take either: the completion is the assistant's reply, rendered by the chat template)
    if isinstance(row.get("prompt"), str):
        for field in fields:
            if field != "prompt" and isinstance(row[field], list):
                raise DataError(f"{where}: field '{field}' is a list of messages where 'prompt' is a string (a "
                                f"conversation's messages cannot follow plain text: make the prompt a message list)")


def validate_rows(rows: list[dict], kind: str, source: str, skip_bad_rows: bool = False) -> tuple[list[dict], int]:
    """Check every row; raise on the first bad one, or drop bad rows and count them if asked."""
    if kind not in BATCH_KINDS:
        raise ValueError(f"unknown batch kind '{kind}', expected one of {sorted(BATCH_KINDS)}")
    if not rows:
        raise DataError(f"{source}: the dataset is empty")
    good, skipped, first_error = [], 0, None
    for i, row in enumerate(rows):
        try:
            validate_row(row, i, kind, source)
        except DataError as err:
            if not skip_bad_rows:
                raise
            skipped += 1
            first_error = first_error or err
            continue
        good.append(row)
    if not good:  # say why, or "all rows skipped" tells nothing (e.g. unpaired rows read as pairs)
        raise DataError(f"{source}: all {len(rows)} rows are invalid as {kind}; the first: {first_error}")
    return good, skipped
