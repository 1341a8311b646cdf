"""Memory a run reports: its peak (``peak_memory_mb``, after ``reset_peak_memory`` at its start) and the
memory in use before its models load (``current_memory_mb``), on a GPU from the CUDA allocator, on a CPU
from the process's resident set (``/proc/self/status`` on Linux)."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def _proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB; None off Linux."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return None


def reset_peak_memory() -> bool:
    """Start this run's peak afresh: the CUDA allocator's peak, and on Linux the process's RSS high-water mark
    (writing 5 to /proc/self/clear_refs resets VmHWM). Without it a run in a reused process (the joblib
    workers of a multirun, the basic launcher's one process) would report the largest peak of any run
    before it. Returns whether the RSS peak could be reset."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(rss_reset: bool = False) -> tuple[float, str]:
    """Peak memory: the CUDA allocator's peak on a GPU; else the RSS high-water mark since
    ``reset_peak_memory`` (``rss_reset``), else the process's lifetime peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    hwm = _proc_status_mb("VmHWM") if rss_reset else None
    if hwm is not None:
        return hwm, "run_peak_rss"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def current_memory_mb() -> float:
    """Memory in use now, on the same scale as ``peak_memory_mb``: CUDA allocated, else resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    rss = _proc_status_mb("VmRSS")  # not Linux: no cheap RSS reading; the peak alone is still reported
    return float("nan") if rss is None else rss
