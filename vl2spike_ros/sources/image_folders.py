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


def frame_numbers(stems: list[str]) -> list[int]:
    """Trailing digits of every stem (`images-00210` -> 210), or 0..n-1 unless all have them."""
    matches = [_TRAILING_DIGITS.search(stem) for stem in stems]
    if all(matches):
        return [int(match.group(1)) for match in matches]
    return list(range(len(stems)))


class ImageFolderSequence:
    """The images of one folder (not recursive), in file-name order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"image folder {self.path}: not a directory (expected a folder of images)")
        self.files = sorted(
            (entry for entry in self.path.iterdir()
             if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda entry: entry.name,
        )
        if not self.files:
            raise InputError(
                f"no images in {self.path}: expected files such as images-00210.png "
                f"({', '.join(suffix[1:] for suffix in IMAGE_SUFFIXES)})"
            )
        numbers = frame_numbers([file.stem for file in self.files])
        self._frames = [
            Frame(index=index, source=file.name, frame=number)
            for index, (file, number) in enumerate(zip(self.files, numbers))
        ]

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
