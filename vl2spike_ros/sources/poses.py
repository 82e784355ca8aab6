"""Per-frame poses from a CSV file, for maps that publish `~/pose` and for metric ground truth.

Format: a header row naming `source` (the image file name, as in `places.json`) and `x`, `y`,
optionally `z` and the orientation `qx`, `qy`, `qz`, `qw` (identity when absent); one row a frame.
Read with the standard `csv` module: the format is too small to justify pandas.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from vl2spike_ros.sources.frames import Frame
from vl2spike_ros.errors import InputError

REQUIRED = ("source", "x", "y")
OPTIONAL_DEFAULTS = {"z": 0.0, "qx": 0.0, "qy": 0.0, "qz": 0.0, "qw": 1.0}


def read_poses(path: str | Path) -> dict[str, list[float]]:
    """source -> [x, y, z, qx, qy, qz, qw]."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read
        raise InputError(f"poses {path}: not a regular file; expected a CSV file")
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
            columns = rows[0].keys() if rows else []
    except OSError as error:
        raise InputError(f"poses {path}: cannot read ({error.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise InputError(f"poses {path}: not a CSV file ({error})") from None
    missing = [name for name in REQUIRED if name not in columns]
    if not rows or missing:
        raise InputError(f"poses {path}: expected a header with columns {', '.join(REQUIRED)} "
                         f"(optional z, qx, qy, qz, qw) and at least one row; missing {missing or 'rows'}")
    poses: dict[str, list[float]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            pose = [float(row["x"]), float(row["y"])] + [
                float(row[name]) if row.get(name) not in (None, "") else default
                for name, default in OPTIONAL_DEFAULTS.items()]
        except (TypeError, ValueError):
            raise InputError(f"poses {path}, line {line}: x, y, z, qx, qy, qz, qw must be numbers") from None
        if not all(math.isfinite(value) for value in pose):
            raise InputError(f"poses {path}, line {line}: values must be finite")
        poses[row["source"]] = pose
    return poses


def poses_for(frames: list[Frame], poses: dict[str, list[float]], path: str | Path) -> list[list[float]]:
    """The pose of every frame, in order; every frame must have one."""
    absent = [frame.source for frame in frames if frame.source not in poses]
    if absent:
        raise InputError(f"poses {path}: no pose for {len(absent)} of {len(frames)} frames "
                         f"(first: {absent[0]!r}); expected one row per image, keyed by file name")
    return [poses[frame.source] for frame in frames]
