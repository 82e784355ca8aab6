"""A folder of images as a traverse (Nordland layout `images-NNNNN.png`: frame number from the name)."""
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import read_image
from vl2spike_ros.sources.frames import Frame

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
_TRAILING_DIGITS = re.compile(r"(\d+)$")


def frame_order(folder: Path, files: list[Path]) -> list[tuple[Path, int]]:
    """(file, frame number) in route order. When every stem ends in digits (`images-00210` -> 210),
    in frame-number order, so `frame2` comes before `frame10`; two files with one number are
    refused. Otherwise in file-name order, numbered 0..n-1."""
    by_name = sorted(files, key=lambda file: file.name)
    matches = [_TRAILING_DIGITS.search(file.stem) for file in by_name]
    if not all(matches):
        return [(file, index) for index, file in enumerate(by_name)]
    numbered = sorted(((file, int(match.group(1))) for file, match in zip(by_name, matches)),
                      key=lambda pair: pair[1])
    for (first, number), (second, other) in zip(numbered, numbered[1:]):
        if number == other:
            raise InputError(f"image folder {folder}: {first.name} and {second.name} both have frame number "
                             f"{number}; expected one image per frame number")
    return numbered


class ImageFolderSequence:
    """The images of one folder (not recursive), in frame-number order (see `frame_order`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"image folder {self.path}: not a directory (expected a folder of images)")
        images = [entry for entry in self.path.iterdir()
                  if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise InputError(
                f"no images in {self.path}: expected files such as images-00210.png "
                f"({', '.join(suffix[1:] for suffix in IMAGE_SUFFIXES)})"
            )
        ordered = frame_order(self.path, images)
        self.files = [file for file, _ in ordered]
        self._frames = [Frame(index=index, source=file.name, frame=number)
                        for index, (file, number) in enumerate(ordered)]

    @property
    def frames(self) -> list[Frame]:
        return self._frames

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray:
        return read_image(self.files[index])

    def __iter__(self) -> Iterator[tuple[Frame, np.ndarray]]:
        for frame, file in zip(self._frames, self.files):
            yield frame, read_image(file)

    def check_readable(self) -> None:
        """Decodes every image once, so an unreadable file is refused (InputError naming it) before
        any work. Sizes may differ: the encoder fits each frame to the model's input by its
        resize mode, and benchmark sets of places (VPR-Bench crops) mix sizes and aspect ratios."""
        for file in self.files:
            # OpenCV has no header-only read; decoding is what proves a file readable.
            read_image(file)
