"""What every traverse offers, whether an image folder or a rosbag2: frames in order and their images."""
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Frame:
    """Where one image of a sequence came from."""

    index: int  # 0-based position in the sequence
    source: str  # file name, or "<topic>#<index>" for a bag without recorded sources
    frame: int  # original frame number (Nordland: NNNNN of images-NNNNN.png), else the index
    stamp: float | None = None  # seconds; bags only


class ImageSequence(Protocol):
    """What every sequence offers: frames in order and their RGB uint8 images."""

    @property
    def frames(self) -> list[Frame]: ...

    def __len__(self) -> int: ...

    def read(self, index: int) -> np.ndarray: ...

    def __iter__(self) -> Iterator[tuple[Frame, np.ndarray]]: ...
