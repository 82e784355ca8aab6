"""The picture on vpr_node's `~/match_image`: the query beside its best match, with a caption.

ROS-free. Reference pictures come from thumbnails of keyframes the node added itself (a bounded
LRU cache: a long mapping run must not keep every frame in memory) or from the map's reference
image files (a place's `source`, absolute or under the `reference_images` folder).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from vl2spike_ros.core.images import read_image
from vl2spike_ros.core.localizer import Match
from vl2spike_ros.core.place_map import Place
from vl2spike_ros.errors import InputError

THUMBNAIL_HEIGHT = 120
# 256 thumbnails of 120x240 RGB take about 22 MB; older keyframes fall back to their image files.
THUMBNAIL_CAPACITY = 256
MIN_PANEL_HEIGHT = 96
BANNER_HEIGHT = 24


def thumbnail(rgb: np.ndarray, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    """A copy of `rgb` no taller than `height` pixels (aspect ratio kept)."""
    if rgb.shape[0] <= height:
        return rgb.copy()
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


class ReferenceImages:
    """Finds the picture of a place: a cached thumbnail, else its image file."""

    def __init__(self, folder: str | Path = "", capacity: int = THUMBNAIL_CAPACITY) -> None:
        self.folder = Path(folder) if folder else None
        self.capacity = capacity
        self._thumbnails: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._thumbnails)

    def remember(self, place_id: int, rgb: np.ndarray) -> None:
        """Keeps a thumbnail of a new keyframe, evicting the least recently used beyond capacity."""
        self._thumbnails[place_id] = thumbnail(rgb)
        self._thumbnails.move_to_end(place_id)
        while len(self._thumbnails) > self.capacity:
            self._thumbnails.popitem(last=False)

    def clear(self) -> None:
        self._thumbnails.clear()

    def find(self, place: Place | None) -> np.ndarray | None:
        if place is None:
            return None
        if place.place_id in self._thumbnails:
            self._thumbnails.move_to_end(place.place_id)
            return self._thumbnails[place.place_id]
        if not place.source:
            return None
        source = Path(place.source)
        candidates = [source] if source.is_absolute() else []
        if self.folder is not None:
            candidates.append(self.folder / source)
        for path in candidates:
            if path.is_file():
                try:
                    return read_image(path)
                except InputError:
                    return None
        return None


def side_by_side(query: np.ndarray, reference: np.ndarray | None, caption: str) -> np.ndarray:
    """Query (left) beside the matched reference (right), both scaled to one height, under a caption."""
    height = max(query.shape[0], reference.shape[0] if reference is not None else 0, MIN_PANEL_HEIGHT)

    def scaled(image: np.ndarray) -> np.ndarray:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)

    panels = [scaled(query)] + ([scaled(reference)] if reference is not None else [])
    canvas = np.concatenate(panels, axis=1) if len(panels) > 1 else panels[0].copy()
    banner = np.zeros((BANNER_HEIGHT, canvas.shape[1], 3), dtype=np.uint8)
    if reference is None:
        caption += " (reference image unavailable)"
    cv2.putText(banner, caption, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([banner, canvas], axis=0))


def match_picture(query: np.ndarray, match: Match, references: ReferenceImages) -> np.ndarray:
    """The `~/match_image` picture of one match."""
    if match.place_ids:
        caption = (f"query {match.query_index} -> place {match.place_ids[0]} "
                   f"score {match.scores[0]:.3f} {'accepted' if match.accepted else 'rejected'}")
    else:
        caption = f"query {match.query_index}: empty map"
    return side_by_side(query, references.find(match.best_place), caption)
