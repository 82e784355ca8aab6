"""One place of a map: where its descriptor came from and, if known, where it is."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vl2spike_ros.errors import InputError

POSE_LENGTH = 7  # x, y, z, qx, qy, qz, qw


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def short_repr(value: Any, limit: int = 80) -> str:
    """repr of `value`, cut to `limit` characters: error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass
class Place:
    """Metadata of one place: where its descriptor came from and, if known, where it is."""

    place_id: int
    source: str = ""
    frame: int | None = None
    stamp: float | None = None
    pose: list[float] | None = None

    def __post_init__(self) -> None:
        if not is_int(self.place_id) or self.place_id < 0:
            raise InputError(f"place_id must be an integer >= 0, got {short_repr(self.place_id)}")
        if not isinstance(self.source, str):
            raise InputError(f"place {self.place_id}: source must be a string, got {short_repr(self.source)}")
        if self.frame is not None and not is_int(self.frame):
            raise InputError(f"place {self.place_id}: frame must be an integer or None, got {short_repr(self.frame)}")
        if self.stamp is not None:
            if not _is_real(self.stamp) or not math.isfinite(self.stamp):
                raise InputError(
                    f"place {self.place_id}: stamp must be finite seconds or None, got {short_repr(self.stamp)}"
                )
            self.stamp = float(self.stamp)
        if self.pose is not None:
            pose = list(self.pose)
            if len(pose) != POSE_LENGTH or not all(_is_real(v) and math.isfinite(v) for v in pose):
                raise InputError(
                    f"place {self.place_id}: pose must be {POSE_LENGTH} finite numbers "
                    f"(x, y, z, qx, qy, qz, qw) or None, got {short_repr(self.pose)}"
                )
            self.pose = [float(v) for v in pose]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: Any) -> Place:
        if not isinstance(obj, dict) or "place_id" not in obj:
            raise InputError(f"a place must be a JSON object with a place_id, got {short_repr(obj)}")
        unknown = set(obj) - {"place_id", "source", "frame", "stamp", "pose"}
        if unknown:
            raise InputError(f"place {short_repr(obj['place_id'])} has unknown fields {short_repr(sorted(unknown))}")
        return cls(**obj)
