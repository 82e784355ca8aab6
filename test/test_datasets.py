"""Image-folder sequences on real files: order, Nordland frame numbers, size checks, bad folders."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from conftest import NORDLAND, require_dir
from vl2spike_ros.sources.frames import Frame
from vl2spike_ros.sources.image_folders import ImageFolderSequence
from vl2spike_ros.sources.traverses import open_sequence
from vl2spike_ros.errors import InputError


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def photo_crops() -> list[np.ndarray]:
    photo = skimage.data.astronaut()
    return [photo[32 * i:32 * i + 32, 64 * i:64 * i + 64].copy() for i in range(4)]


def test_nordland_layout_in_name_order_with_frame_numbers(tmp_path: Path, photo_crops):
    # Written out of order and with an upper-case suffix: order comes from the names.
    for number, rgb in zip((230, 210, 240, 220), photo_crops):
        write_rgb(tmp_path / f"images-{number:05d}.PNG", rgb)
    (tmp_path / "notes.txt").write_text("not an image")
    sequence = ImageFolderSequence(tmp_path)
    assert len(sequence) == 4
    assert sequence.frames[0] == Frame(index=0, source="images-00210.PNG", frame=210, stamp=None)
    assert [frame.frame for frame in sequence.frames] == [210, 220, 230, 240]
    by_number = dict(zip((230, 210, 240, 220), photo_crops))
    for frame, image in sequence:
        assert np.array_equal(image, by_number[frame.frame])
    assert np.array_equal(sequence.read(3), by_number[240])
    sequence.check_readable()


def test_unpadded_frame_numbers_are_ordered_by_number_not_by_name(tmp_path: Path, photo_crops):
    names = ("frame1.png", "frame10.png", "frame100.png", "frame11.png", "frame2.png")
    images = dict(zip(names, photo_crops + [photo_crops[0][::-1].copy()]))
    for name, rgb in images.items():
        write_rgb(tmp_path / name, rgb)
    sequence = ImageFolderSequence(tmp_path)
    assert [(frame.index, frame.frame) for frame in sequence.frames] == [(0, 1), (1, 2), (2, 10), (3, 11), (4, 100)]
    for frame, image in sequence:
        assert np.array_equal(image, images[frame.source])


def test_two_files_with_one_frame_number_are_refused_by_name(tmp_path: Path, photo_crops):
    for name, rgb in zip(("img1.png", "img2.png", "img01.png"), photo_crops):
        write_rgb(tmp_path / name, rgb)
    with pytest.raises(InputError, match=r"img01\.png and img1\.png both have frame number 1; "
                                         "expected one image per frame number"):
        ImageFolderSequence(tmp_path)


def test_cli_refuses_a_folder_with_one_frame_number_twice_in_one_line(tmp_path: Path, photo_crops, capsys):
    from vl2spike_ros.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for name, rgb in zip(("images-7.png", "images-007.png"), photo_crops):
        write_rgb(folder / name, rgb)
    assert main(["build-map", "--images", str(folder), "--out", str(tmp_path / "map")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "images-007.png and images-7.png both have frame number 7" in error


def test_frame_numbers_fall_back_to_indices_unless_all_names_have_them(tmp_path: Path, photo_crops):
    for name, rgb in zip(("a7.jpg", "b.jpg", "c3.jpg"), photo_crops):
        write_rgb(tmp_path / name, rgb)
    sequence = open_sequence(tmp_path)
    assert isinstance(sequence, ImageFolderSequence)
    assert [(frame.source, frame.frame) for frame in sequence.frames] == [
        ("a7.jpg", 0), ("b.jpg", 1), ("c3.jpg", 2)]


def test_a_folder_of_mixed_sizes_is_read_as_it_is(tmp_path: Path, photo_crops):
    crops = [photo_crops[0], photo_crops[1][:16], photo_crops[2][:8]]
    for number, crop in zip((10, 20, 30), crops):
        write_rgb(tmp_path / f"images-000{number}.png", crop)
    sequence = ImageFolderSequence(tmp_path)
    sequence.check_readable()
    assert [image.shape[:2] for _, image in sequence] == [(32, 64), (16, 64), (8, 64)]


def test_unreadable_file_in_folder_names_it(tmp_path: Path, photo_crops):
    write_rgb(tmp_path / "images-00010.png", photo_crops[0])
    (tmp_path / "images-00020.png").touch()
    sequence = ImageFolderSequence(tmp_path)
    with pytest.raises(InputError, match=r"images-00020\.png: file is empty"):
        sequence.check_readable()


def test_empty_folder_and_non_folder_are_refused(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match=f"no images in {tmp_path}: expected files such as images-00210.png"):
        ImageFolderSequence(tmp_path)
    with pytest.raises(InputError, match="readme.txt: not a directory"):
        ImageFolderSequence(tmp_path / "readme.txt")
    with pytest.raises(InputError, match="missing: not a directory"):
        open_sequence(tmp_path / "missing")


def test_reads_five_nordland_frames():
    summer = require_dir(NORDLAND / "summer")
    sequence = ImageFolderSequence(summer)
    assert len(sequence) == 1892
    assert sequence.frames[0].source == "images-00210.png" and sequence.frames[0].frame == 210
    for index in range(5):
        image = sequence.read(index)
        assert image.shape == (32, 64, 3) and image.dtype == np.uint8
        # Grayscale stored as RGB: the channels are equal.
        assert np.array_equal(image[:, :, 0], image[:, :, 2])
