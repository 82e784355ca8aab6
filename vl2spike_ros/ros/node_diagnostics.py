"""What vpr_node reports on /diagnostics: running statistics of processed frames and the status
(level, message, key/values) built from them. ROS-free; `node.py` copies it into a DiagnosticArray."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vl2spike_ros.core.localizer import Match

# Where a frame's time goes inside the node, in order: decoding the message, fitting it to the
# student's input, the student, the map search, sequence matching, building the ~/match message
# (and the match picture, when subscribed), publishing. /diagnostics reports each as
# stage_<name>_ms_p50 and _p95 over the window.
STAGES = ("decode", "resize", "encode", "search", "sequence", "message", "publish")


def percentiles(values: Any, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float | None]:
    """{'p50': .., 'p90': .., 'p99': ..} of `values` (None each when there are none)."""
    array = np.asarray(list(values), dtype=np.float64)
    if array.size == 0:
        return {f"p{q:g}": None for q in qs}
    return {f"p{q:g}": float(np.percentile(array, q)) for q in qs}


@dataclass
class NodeStats:
    """Counters and a sliding window of processed frames for /diagnostics (thread-safe)."""

    window_s: float = 10.0
    processed: int = 0
    invalid: int = 0
    matched: int = 0  # accepted matches
    added: int = 0    # keyframes added in mapping mode
    map_errors: int = 0  # keyframes the map refused: not the frame's fault, so not counted as invalid
    last_invalid_reason: str = ""
    last_map_error: str = ""
    _recent: deque = field(default_factory=deque)  # (monotonic time, latency ms, {stage: ms})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_match(self, match: Match, stage_ms: dict[str, float] | None = None,
                     now: float | None = None) -> None:
        """A processed frame; `stage_ms` the milliseconds it spent in each of STAGES."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.processed += 1
            self.matched += int(match.accepted)
            self.added += int(match.added_place_id is not None)
            self._recent.append((now, match.latency_ms, stage_ms or {}))
            self._trim(now)

    def record_invalid(self, reason: str) -> None:
        with self._lock:
            self.invalid += 1
            self.last_invalid_reason = reason

    def record_map_error(self, reason: str) -> None:
        with self._lock:
            self.map_errors += 1
            self.last_map_error = reason

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            recent = list(self._recent)
            counters = {"frames_processed": self.processed, "invalid_frames": self.invalid,
                        "accepted_matches": self.matched, "keyframes_added": self.added,
                        "map_errors": self.map_errors, "last_invalid_reason": self.last_invalid_reason,
                        "last_map_error": self.last_map_error}
        latencies = [latency for _, latency, _ in recent]
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            rate = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        else:
            rate = 0.0
        summary = percentiles(latencies, (50, 90, 99))
        return {**counters, "rate_hz": rate,
                "latency_ms_mean": float(np.mean(latencies)) if latencies else None,
                "latency_ms_p50": summary["p50"], "latency_ms_p90": summary["p90"],
                "latency_ms_p99": summary["p99"],
                "latency_ms_max": float(max(latencies)) if latencies else None,
                **_stage_percentiles([stages for _, _, stages in recent])}


def _stage_percentiles(frames: list[dict[str, float]]) -> dict[str, float | None]:
    """stage_<name>_ms_p50 and _p95 of each of STAGES over the frames that timed it."""
    summary = {}
    for stage in STAGES:
        values = percentiles([stages[stage] for stages in frames if stage in stages], (50, 95))
        summary[f"stage_{stage}_ms_p50"], summary[f"stage_{stage}_ms_p95"] = values["p50"], values["p95"]
    return summary


def diagnostic_values(stats: dict[str, Any], received: int, dropped: int, pending: int,
                      extra: dict[str, Any]) -> list[tuple[str, str]]:
    """Key/value strings for a DiagnosticStatus, in a stable order."""
    merged = {**extra, "frames_received": received, "frames_dropped": dropped, "frames_pending": pending, **stats}
    values = []
    for key, value in merged.items():
        if value is None:
            text = "n/a"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        values.append((key, text))
    return values


class StatusReporter:
    """Level ('OK', 'WARN' or 'ERROR', as in diagnostic_msgs) and message of each /diagnostics status,
    from what happened since the previous report: map errors first, then invalid frames."""

    def __init__(self) -> None:
        self._invalid_reported = 0
        self._map_errors_reported = 0

    def status(self, state: str, stats: dict[str, Any]) -> tuple[str, str]:
        new_invalid = stats["invalid_frames"] - self._invalid_reported
        new_map_errors = stats["map_errors"] - self._map_errors_reported
        self._invalid_reported, self._map_errors_reported = stats["invalid_frames"], stats["map_errors"]
        if state != "active":
            return "WARN", f"{state}: not processing images"
        if new_map_errors:
            return "ERROR", f"the map refused {new_map_errors} keyframe(s): {stats['last_map_error']}"
        if new_invalid:
            return "WARN", f"{new_invalid} invalid frame(s) dropped: {stats['last_invalid_reason']}"
        return "OK", f"{stats['rate_hz']:.1f} Hz"
