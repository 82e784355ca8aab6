"""The `~/match` message body (std_msgs/String holding JSON; schema in docs/ros_interface.md)."""
from __future__ import annotations

import math
from typing import Any

from vl2spike_ros.core.localizer import Match

MATCH_SCHEMA_VERSION = 1


def match_json(match: Match, sec: int, nanosec: int, frame_id: str, mode: str, map_size: int) -> dict[str, Any]:
    """The body for one frame's match; `sec`, `nanosec` and `frame_id` come from the image header."""
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
        "map_size": int(map_size),
        "best_place": match.best_place.to_json() if match.best_place is not None else None,
    }
