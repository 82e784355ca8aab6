"""images.py on real photographs from scikit-image: every encoding lands as the same RGB."""
import io
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import SUPPORTED_ENCODINGS, decode_compressed, read_image, to_rgb


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return skimage.data.chelsea()[:48, :64].copy()


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def test_colour_encodings_convert_to_rgb(rgb):
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    assert np.array_equal(to_rgb(rgb, "rgb8"), rgb)
    assert np.array_equal(to_rgb(rgb[:, :, ::-1], "bgr8"), rgb)
    assert np.array_equal(to_rgb(np.concatenate([rgb, alpha], axis=2), "rgba8"), rgb)
    assert np.array_equal(to_rgb(np.concatenate([rgb[:, :, ::-1], alpha], axis=2), "bgra8"), rgb)
    assert np.array_equal(to_rgb(rgb), rgb)  # default order is RGB


def test_gray_encodings_convert_to_rgb():
    gray = skimage.data.camera()[:40, :50]
    assert np.array_equal(to_rgb(gray, "mono8"), gray_rgb(gray))
    assert np.array_equal(to_rgb(gray[:, :, None]), gray_rgb(gray))
    wide = gray.astype(np.uint16) * 257  # 8-bit values stretched to the full 16-bit range
    assert np.array_equal(to_rgb(wide, "mono16"), gray_rgb(gray))
    assert np.array_equal(to_rgb(wide), gray_rgb(gray))


def test_every_supported_encoding_is_covered():
    assert set(SUPPORTED_ENCODINGS) == {"rgb8", "bgr8", "mono8", "mono16", "rgba8", "bgra8"}


def test_unsupported_encoding_lists_supported_ones(rgb):
    with pytest.raises(InputError, match="'yuv422'.*rgb8, bgr8, mono8, mono16, rgba8, bgra8"):
        to_rgb(rgb, "yuv422")


@pytest.mark.parametrize(("array", "encoding", "message"), [
    (np.zeros((4, 4, 3), np.float32), None, "dtype float32"),
    (np.zeros((4, 4, 2), np.uint8), None, "shape"),
    (np.zeros((0, 4, 3), np.uint8), None, "at least one pixel"),
    (np.zeros((4, 4, 3), np.uint8), "mono8", "'mono8'.*1 channel"),
    (np.zeros((4, 4), np.uint8), "mono16", "'mono16'.*uint16"),
])
def test_bad_arrays_are_refused(array, encoding, message):
    with pytest.raises(InputError, match=message):
        to_rgb(array, encoding)


def test_read_image_returns_rgb_for_colour_gray_and_16_bit(tmp_path: Path, rgb):
    cv2.imwrite(str(tmp_path / "colour.png"), rgb[:, :, ::-1])
    assert np.array_equal(read_image(tmp_path / "colour.png"), rgb)
    gray = skimage.data.camera()[:40, :50]
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    assert np.array_equal(read_image(tmp_path / "gray.png"), gray_rgb(gray))
    cv2.imwrite(str(tmp_path / "deep.png"), gray.astype(np.uint16) * 257)
    assert np.array_equal(read_image(tmp_path / "deep.png"), gray_rgb(gray))
    cv2.imwrite(str(tmp_path / "alpha.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    assert np.array_equal(read_image(tmp_path / "alpha.png"), rgb)


def test_unreadable_image_files_name_the_path(tmp_path: Path):
    empty = tmp_path / "empty.png"
    empty.touch()
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    cases = ((empty, "empty"), (garbage, "cannot decode"), (tmp_path / "missing.png", "not found"))
    for path, reason in cases:
        with pytest.raises(InputError, match=f"{path.name}.*{reason}"):
            read_image(path)


def test_decode_compressed_png_is_exact_and_jpeg_close(rgb):
    _, png = cv2.imencode(".png", rgb[:, :, ::-1])
    assert np.array_equal(decode_compressed(png.tobytes(), "png"), rgb)
    _, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = decode_compressed(jpeg.tobytes())
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb).mean() < 4


def test_decode_compressed_refuses_corrupt_data(rgb):
    _, png = cv2.imencode(".png", rgb)
    with pytest.raises(InputError, match="format 'png'.*cannot decode"):
        decode_compressed(png.tobytes()[:40], "png")
    with pytest.raises(InputError, match="0 bytes"):
        decode_compressed(b"")


def interlaced_png(gray: np.ndarray) -> bytes:
    """An 8-bit gray Adam7-interlaced PNG (OpenCV writes none): each pass's rows, filter type 0."""
    from vl2spike_ros.core.png_check import ADAM7

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    height, width = gray.shape
    rows = b"".join(b"\0" + row.tobytes() for column, row_, column_step, row_step in ADAM7
                    for row in gray[row_::row_step, column::column_step] if row.size)
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 1])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_every_kind_of_png_passes_the_check_before_decoding(rgb, capfd):
    """check_png (which keeps libpng's own error lines off stderr) accepts what libpng decodes: the
    colour types, bit depths 1-16, palettes, several IDATs and interlacing."""
    from PIL import Image

    from vl2spike_ros.core.png_check import check_png

    pngs = {f"opencv {name} level {level}": cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, level])[1]
            .tobytes() for level in (0, 9) for name, pixels in (
                ("gray", rgb[:, :, 0]), ("bgr", rgb), ("bgra", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
                ("gray16", rgb[:, :, 0].astype(np.uint16) * 257), ("bgr16", rgb.astype(np.uint16) * 257))}
    for mode, options in (("1", {}), ("LA", {}), ("P", {"bits": 2}), ("P", {"bits": 4}), ("P", {})):
        stream = io.BytesIO()
        image = Image.fromarray(rgb)
        image = image.quantize(2 ** options.get("bits", 8)) if mode == "P" else image.convert(mode)
        image.save(stream, "PNG", **options)
        pngs[f"pillow {mode} {options}"] = stream.getvalue()
    for shape in ((48, 64), (1, 5), (5, 1)):  # the small ones leave some passes empty
        pngs[f"interlaced {shape}"] = interlaced_png(rgb[:shape[0], :shape[1], 1])
    for name, png in pngs.items():
        check_png(png, name)
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and decode_compressed(png).shape[:2] == decoded.shape[:2], name
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(pngs["interlaced (48, 64)"], np.uint8),
                                               cv2.IMREAD_UNCHANGED), rgb[:, :, 1])
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(("change", "message"), [
    (lambda png: png[:41] + bytes(len(png) - 53) + png[-12:], "chunk 'IDAT' at byte 33 fails its CRC"),
    (lambda png: png[:-12], "before IEND"),
    (lambda png: png[:60], "chunk 'IDAT' at byte 33 claims"),
    (lambda png: png[:24] + b"\x03" + png[25:29] + zlib.crc32(png[12:24] + b"\x03" + png[25:29]).to_bytes(4, "big")
     + png[33:], "bit depth 3, colour type 2"),
])
def test_a_corrupt_png_is_refused_before_libpng_sees_it(rgb, capfd, change, message):
    _, png = cv2.imencode(".png", rgb)
    with pytest.raises(InputError, match=f"format 'png'.*cannot decode its PNG data: .*{message}"):
        decode_compressed(change(png.tobytes()), "png")
    assert capfd.readouterr().err == ""


def test_size_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    from helpers import jpeg_size_bomb
    from vl2spike_ros.core.images import check_compressed, claimed_size

    bomb = jpeg_size_bomb()
    assert len(bomb) < 1000 and claimed_size(bomb) == ("JPEG", 20000, 20000)
    with pytest.raises(InputError, match="20000x20000 = 400000000 pixels; expected at most"):
        decode_compressed(bomb, "jpeg")
    with pytest.raises(InputError, match="20000x20000"):
        check_compressed(bomb)
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    with pytest.raises(InputError, match="bomb.jpg.*20000x20000"):
        read_image(tmp_path / "bomb.jpg")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".ppm", ".pgm", ".tif"])
def test_every_file_format_is_sized_from_its_header(tmp_path, rgb, suffix):
    from vl2spike_ros.core.images import claimed_size

    pixels = rgb[:, :, 0] if suffix == ".pgm" else rgb
    path = tmp_path / f"image{suffix}"
    cv2.imwrite(str(path), pixels)
    assert claimed_size(path.read_bytes())[1:] == (64, 48)
    assert read_image(path).shape == (48, 64, 3)
    with pytest.raises(InputError, match="64x48 = 3072 pixels; expected at most max_image_pixels = 3071"):
        read_image(path, max_pixels=3071)


def test_raw_image_size_is_checked_against_its_data_before_allocation():
    from vl2spike_ros.core.images import check_raw_image

    with pytest.raises(InputError, match="truncated: 10 bytes, expected step\\*height = 2700000000"):
        check_raw_image("rgb8", 30000, 30000, 90000, 10)
    with pytest.raises(InputError, match="30000x30000 = 900000000 pixels"):
        check_raw_image("mono8", 30000, 30000, 30000, 30000 * 30000)
    check_raw_image("bayer_rggb8", 64, 32, 64, 64 * 32)


def test_jpeg_header_walk_is_bounded():
    from helpers import jpeg_size_bomb
    from vl2spike_ros.core.images import MAX_JPEG_SEGMENTS, claimed_size

    bomb = jpeg_size_bomb()
    padding = b"\xff\xfe\x00\x02" * MAX_JPEG_SEGMENTS  # empty comment segments before the frame header
    assert claimed_size(bomb) is not None
    assert claimed_size(bomb[:2] + padding + bomb[2:]) is None
