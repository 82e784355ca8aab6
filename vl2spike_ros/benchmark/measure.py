"""Timing percentiles and process memory / CPU from /proc (Linux), shared by every benchmark part."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np


def sample_ms(function: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Wall times in ms of `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append((time.perf_counter() - started) * 1000.0)
    return samples


def percentile_summary(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=float)
    if values.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "count": 0}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "count": int(values.size)}


def _status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def resident_mb(pid: int | str = "self") -> float:
    """Current resident set size (VmRSS) in MiB."""
    return _status_kb(pid, "VmRSS") / 1024.0


def peak_resident_mb(pid: int | str = "self") -> float:
    """Peak resident set size (VmHWM) in MiB."""
    return _status_kb(pid, "VmHWM") / 1024.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
