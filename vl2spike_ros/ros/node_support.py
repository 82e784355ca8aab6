"""The ROS-free parts of `vpr_node`: parameter table and checks, the one-frame slot, running
statistics for /diagnostics and the `~/match` JSON. Unit-tested without ROS; `node.py` only wires
them to rclpy."""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vl2spike_ros.core.images import DEFAULT_MAX_IMAGE_PIXELS
from vl2spike_ros.core.localizer import MODES, Match
from vl2spike_ros.core.place_map import PlaceMap

TRANSPORTS = ("raw", "compressed")
MATCH_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default, description, range (numbers) or choices (strings), mutability."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", "student checkpoint (.safetensors); empty: the model the package ships",
                  read_only=True),
    ParameterSpec("map_path", "", "place map directory: loaded at configure (mode 'localize' needs it); "
                  "~/save_map writes here", read_only=True),
    ParameterSpec("reference_images", "", "folder holding the map's reference images (place 'source' names), "
                  "for ~/match_image; empty: only absolute sources are found", read_only=True),
    ParameterSpec("mode", "localize", "'localize': match against the map; 'map': also add keyframes "
                  "(see ~/set_mapping)", choices=MODES),
    ParameterSpec("top_k", 5, "number of best places reported per frame", low=1, high=100, step=1),
    ParameterSpec("sequence_length", 1, "sequence matching over the last L frames (1: single frame)",
                  read_only=True, low=1, high=100, step=1),
    ParameterSpec("match_threshold", 0.0, "a match is accepted when its best score is at least this "
                  "(cosine similarity)", low=-1.0, high=1.0),
    ParameterSpec("novelty_threshold", 0.9, "mapping mode: a frame whose best similarity is below this "
                  "becomes a new place", low=-1.0, high=1.0),
    ParameterSpec("transport", "raw", "'raw': subscribe 'image' (sensor_msgs/Image); 'compressed': "
                  "'image/compressed' (sensor_msgs/CompressedImage)", read_only=True, choices=TRANSPORTS),
    ParameterSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ParameterSpec("device", "cpu", "torch device for the student, e.g. 'cpu' or 'cuda:0'", read_only=True),
    ParameterSpec("num_threads", 0, "torch CPU threads for inference (0: torch's default)",
                  read_only=True, low=0, high=256, step=1),
    ParameterSpec("index", "flat", "FAISS index kind of a map started empty in mode 'map'",
                  read_only=True, choices=("flat", "hnsw", "ivfpq")),
    ParameterSpec("publish_match_image", True, "publish ~/match_image (only while someone subscribes)"),
    ParameterSpec("map_frame", "map", "frame_id of ~/pose", read_only=True),
    ParameterSpec("pose_variance", 25.0, "variance (m^2, rad^2) on the diagonal of ~/pose's covariance",
                  low=0.0, high=1.0e6),
    ParameterSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", read_only=True,
                  low=0.1, high=60.0),
    ParameterSpec("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "frames whose header claims more pixels "
                  "than this are invalid (checked before decoding; default 2^25, 8K UHD fits)",
                  low=1, high=2**31 - 1, step=1),
    ParameterSpec("invalid_log_period", 5.0, "seconds between log lines about invalid frames (throttle)",
                  low=0.0, high=3600.0),
)
PARAMETER_SPECS = {spec.name: spec for spec in PARAMETERS}


def check_parameter(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    spec = PARAMETER_SPECS.get(name)
    if spec is None:
        return None  # not ours (use_sim_time and friends): rclpy checks those
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be a {expected.__name__}, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value!r}"
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        return f"{name} must be in [{spec.low:g}, {spec.high:g}], got {value!r}"
    return None


class FrameSlot:
    """Holds at most one frame: `put` replaces an unprocessed frame (counting a drop), `take` waits
    for one and empties the slot. The subscriber never blocks and no backlog can form."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._item: Any = None
        self._full = False
        self._closed = False
        self.received = 0
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Stores `item`; returns True when it replaced a frame nobody had taken (a drop)."""
        with self._condition:
            self.received += 1
            replaced = self._full
            if replaced:
                self.dropped += 1
            self._item, self._full = item, True
            self._condition.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The newest frame, or None after `timeout` seconds or once closed."""
        with self._condition:
            if not self._condition.wait_for(lambda: self._full or self._closed, timeout):
                return None
            if self._closed and not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            return item

    def clear(self) -> None:
        with self._condition:
            self._item, self._full = None, False

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        with self._condition:
            self._closed, self._item, self._full = False, None, False


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
    last_invalid_reason: str = ""
    _recent: deque = field(default_factory=deque)  # (monotonic time, latency ms)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_match(self, match: Match, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.processed += 1
            self.matched += int(match.accepted)
            self.added += int(match.added_place_id is not None)
            self._recent.append((now, match.latency_ms))
            self._trim(now)

    def record_invalid(self, reason: str) -> None:
        with self._lock:
            self.invalid += 1
            self.last_invalid_reason = reason

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
                        "last_invalid_reason": self.last_invalid_reason}
        latencies = [latency for _, latency in recent]
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            rate = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        else:
            rate = 0.0
        summary = percentiles(latencies, (50, 90, 99))
        return {**counters, "rate_hz": rate,
                "latency_ms_mean": float(np.mean(latencies)) if latencies else None,
                "latency_ms_p50": summary["p50"], "latency_ms_p90": summary["p90"],
                "latency_ms_p99": summary["p99"],
                "latency_ms_max": float(max(latencies)) if latencies else None}


def diagnostic_values(stats: dict[str, Any], received: int, dropped: int, extra: dict[str, Any]) -> list[tuple[str, str]]:
    """Key/value strings for a DiagnosticStatus, in a stable order."""
    merged = {**extra, "frames_received": received, "frames_dropped": dropped, **stats}
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


def place_metadata(place_map: PlaceMap, place_id: int | None) -> dict[str, Any] | None:
    if place_id is None or place_id < 0 or place_id >= len(place_map):
        return None
    return place_map.places[place_id].to_json()


def match_json(match: Match, sec: int, nanosec: int, frame_id: str, mode: str,
               place_map: PlaceMap) -> dict[str, Any]:
    """The `~/match` message body (schema in the README, section ROS 2)."""
    best = place_metadata(place_map, match.best_place_id)
    return {
        "schema_version": MATCH_SCHEMA_VERSION,
        "stamp": {"sec": int(sec), "nanosec": int(nanosec)},
        "frame_id": frame_id,
        "query_index": match.query_index,
        "place_ids": [int(i) for i in match.place_ids],
        "scores": [float(s) if math.isfinite(s) else None for s in match.scores],
        "accepted": bool(match.accepted),
        "latency_ms": float(match.latency_ms),
        "mode": mode,
        "added_place_id": match.added_place_id,
        "map_size": len(place_map),
        "best_place": best,
    }
