"""Writing results so that a kill at any moment leaves nothing half-written that a later reader trusts.

- :func:`write_atomically`: a whole file (``metrics.json``, ``config.yaml``, ``samples.jsonl``, reports) goes
  to a temporary file beside it and is renamed over it: a reader sees the old file or the new one, never
  part of one.
- :func:`append_lines`: lines added to a log or cache (``log.jsonl``, the judge's cache) in one ``write`` to
  a file opened for appending, so processes sharing the file never interleave pieces of lines. A kill in
  the middle of that write can still leave a torn last line: the next append ends it first, so the lines
  after it stay whole, and :func:`read_jsonl` skips it and counts it.
- :func:`locked`: an exclusive ``flock`` on ``PATH.lock`` for as long as a block runs (the stages, the hub
  digests' ledger); the kernel releases it when its holder dies, however it dies.
- :func:`kill_point`: named places where a test harness (``ZOO_KILL_AT``) kills the process with SIGKILL,
  to check that a rerun completes and equals an uninterrupted run. Without the variable it costs a lookup.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

KILL_ENV = "ZOO_KILL_AT"
_reached: Counter = Counter()


def _aimed_at(name: str | None) -> bool:
    """Whether ``ZOO_KILL_AT`` names the kill point ``name``."""
    return bool(name) and os.environ.get(KILL_ENV, "").partition(":")[0] == name


def kill_point(name: str) -> None:
    """SIGKILL this process at the N-th time it reaches ``name`` when ``ZOO_KILL_AT=name`` or ``name:N``
    (N counts from 1 in each process)."""
    if not _aimed_at(name):
        return
    _reached[name] += 1
    if _reached[name] == int(os.environ[KILL_ENV].partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def files_digest(files: list[Path]) -> str:
    """sha256 over ``files`` in the order given, each as its name then its bytes (read in 16 MB blocks: a
    model's weights need not fit in memory twice)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


@contextmanager
def locked(path: str | Path):
    """Hold an exclusive lock on ``path``'s ``.lock`` sibling (created, with its folder, if missing) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_atomically(path: str | Path, data: str | bytes, kill_name: str | None = None) -> None:
    """``data`` to ``path`` through a temporary file renamed over it. ``kill_name``: a :func:`kill_point`
    reached with half the data written to the temporary file (what a kill mid-write leaves)."""
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        if _aimed_at(kill_name):  # a test's kill: half the bytes written, then SIGKILL
            f.write(blob[: len(blob) // 2])
            f.flush()
            kill_point(kill_name)
            f.write(blob[len(blob) // 2:])
        else:
            f.write(blob)
    tmp.replace(path)


def append_lines(path: str | Path, lines: list[str], kill_name: str | None = None) -> None:
    """``lines`` (each without its newline) appended to ``path`` in one write. ``kill_name``: a
    :func:`kill_point` reached with all but the second half of the last line written (a torn last line)."""
    if not lines:
        return
    blob = "".join(line + "\n" for line in lines).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line a kill left: end it, so it alone is lost
            blob = b"\n" + blob
        if _aimed_at(kill_name):  # a test's kill: all but half of the last line written, then SIGKILL
            cut = len(blob) - len(lines[-1].encode()) // 2 - 1
            os.write(fd, blob[:cut])
            kill_point(kill_name)
            blob = blob[cut:]
        while blob:  # a regular file takes it in one write; the loop only guards a short write
            blob = blob[os.write(fd, blob):]
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> tuple[list[dict], int]:
    """The rows of a JSONL file that parse as JSON objects, and how many lines did not (a torn last line
    left by a kill, or a line a later append was glued onto)."""
    rows, torn = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                torn += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                torn += 1
    return rows, torn
