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

    def check_uniform_size(self) -> tuple[int, int]:
        """Return the common (height, width); InputError naming the first file that differs."""
        expected: tuple[int, int] | None = None
        for file in self.files:
            # OpenCV has no header-only read; decoding also catches unreadable files early.
            height, width = read_image(file).shape[:2]
            size = (height, width)
            if expected is None:
                expected = size
            elif size != expected:
                raise InputError(
                    f"image file {file}: size {size[1]}x{size[0]} (WxH) differs from "
                    f"{expected[1]}x{expected[0]} of {self.files[0].name} (expected all images of one size)"
                )
        assert expected is not None  # the constructor refuses empty folders
        return expected
