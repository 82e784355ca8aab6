"""A PNG's chunks and image data checked in Python before libpng decodes them.

libpng reports a corrupt PNG by writing its own line ("libpng error: IDAT: invalid ...") to the
process's stderr from C, so OpenCV's decode would print it ahead of our one-line error. Each check
that libpng would fail a file on is made here first and raises InputError instead: the file ends
in IEND and every chunk is whole with its CRC right, the IHDR is valid, a palette image has its
PLTE before the IDATs, and the IDATs (consecutive) hold one complete zlib stream that inflates to
exactly the image's rows, each row starting with filter type 0-4. A pure function is safe in every
thread of the node; redirecting file descriptor 2 around the decode instead would also swallow what
the node's other threads log meanwhile. The data is inflated once more than decoding does, in
pieces of INFLATE_PIECE bytes, so the check holds no more than one piece of pixels at a time.
"""
from __future__ import annotations

import zlib

import numpy as np

from vl2spike_ros.errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INFLATE_PIECE = 1 << 16
# Colour type -> (samples per pixel, the bit depths it allows), from the PNG specification.
COLOUR_TYPES = {0: (1, (1, 2, 4, 8, 16)), 2: (3, (8, 16)), 3: (1, (1, 2, 4, 8)), 4: (2, (8, 16)),
                6: (4, (8, 16))}
# Adam7 interlacing: (first column, first row, column step, row step) of each of its seven passes.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
MAX_FILTER_TYPE = 4  # None, Sub, Up, Average, Paeth


def check_png(data: bytes, what: str) -> None:
    """Raise InputError naming `what` unless `data` is a PNG that libpng decodes without error."""
    try:
        _check(memoryview(data))
    except InputError as error:
        raise InputError(f"{what}: cannot decode its PNG data: {error}") from None


def _check(view: memoryview) -> None:
    header, palette, image_data = _chunks(view)
    width, height, depth, colour, interlaced = _header(header)
    if colour == 3 and (palette is None or not 0 < len(palette) <= 3 * 256 or len(palette) % 3):
        found = "no PLTE chunk" if palette is None else f"a PLTE chunk of {len(palette)} bytes"
        raise InputError(f"a palette image with {found} before its image data; expected 1-256 RGB "
                         "entries")
    samples = COLOUR_TYPES[colour][0]
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    rows = []  # (first byte, bytes per row, rows) of each pass, in the inflated data
    start = 0
    for column, row, column_step, row_step in passes:
        pass_width, pass_height = -(-(width - column) // column_step), -(-(height - row) // row_step)
        if pass_width > 0 and pass_height > 0:
            stride = 1 + -(-pass_width * samples * depth // 8)
            rows.append((start, stride, pass_height))
            start += stride * pass_height
    _check_image_data(image_data, rows, start)


def _chunks(view: memoryview) -> tuple[memoryview, memoryview | None, list[memoryview]]:
    """IHDR's data, PLTE's (None without one) and every IDAT's, each chunk checked whole with its CRC."""
    if bytes(view[:8]) != PNG_SIGNATURE:
        raise InputError("no PNG signature")
    position, header, palette, image_data, last_name = 8, None, None, [], ""
    while True:
        if position + 12 > len(view):
            raise InputError(f"it ends at byte {len(view)}, inside a chunk or before IEND (a truncated file)")
        length = int.from_bytes(view[position:position + 4], "big")
        kind = bytes(view[position + 4:position + 8])
        name = kind.decode("latin-1")
        end = position + 8 + length
        if length > 2**31 - 1 or end + 4 > len(view):
            raise InputError(f"chunk {name!r} at byte {position} claims {length} bytes, beyond the end of "
                             "the data (a truncated file)")
        if zlib.crc32(view[position + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            raise InputError(f"chunk {name!r} at byte {position} fails its CRC (corrupt data)")
        chunk = view[position + 8:end]
        if header is None and kind != b"IHDR":
            raise InputError(f"its first chunk is {name!r}; expected IHDR")
        if kind == b"IHDR":
            header = chunk
        elif kind == b"PLTE" and not image_data:
            palette = chunk
        elif kind == b"IDAT":
            if image_data and last_name != "IDAT":
                raise InputError(f"its IDAT chunks are split by chunk {last_name!r}; expected them "
                                 "consecutive")
            image_data.append(chunk)
        elif kind == b"IEND":
            if not image_data:
                raise InputError("no IDAT chunk before IEND (no image data)")
            return header, palette, image_data
        last_name, position = name, end + 4


def _header(header: memoryview) -> tuple[int, int, int, int, bool]:
    """(width, height, bit depth, colour type, interlaced) of a valid IHDR."""
    if len(header) != 13:
        raise InputError(f"an IHDR of {len(header)} bytes; expected 13")
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, compression, filtering, interlace = bytes(header[8:13])
    if not (0 < width < 2**31 and 0 < height < 2**31) or colour not in COLOUR_TYPES \
            or depth not in COLOUR_TYPES[colour][1] or compression or filtering or interlace > 1:
        raise InputError(f"IHDR {width}x{height}, bit depth {depth}, colour type {colour}, "
                         f"compression {compression}, filter {filtering}, interlace {interlace}: not a "
                         "combination the PNG specification allows")
    return width, height, depth, colour, bool(interlace)


def _check_image_data(image_data: list[memoryview], rows: list[tuple[int, int, int]], expected: int) -> None:
    """Inflate the IDATs piece by piece: one complete zlib stream of exactly `expected` bytes whose
    rows (`rows`: first byte, bytes per row, rows, per pass) each start with a known filter type."""
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for chunk in image_data:
            pending = chunk
            while pending and not inflater.eof:
                piece = inflater.decompress(pending, INFLATE_PIECE)
                produced = _check_filter_types(piece, produced, rows, expected)
                pending = inflater.unconsumed_tail
        produced = _check_filter_types(inflater.flush(), produced, rows, expected)
    except zlib.error as error:
        raise InputError(f"image data is no valid zlib stream ({error})") from None
    if not inflater.eof:
        raise InputError("image data ends inside its zlib stream (truncated data)")
    if produced != expected:
        raise InputError(f"image data inflates to {produced} bytes; its size needs {expected}")


def _check_filter_types(piece: bytes, start: int, rows: list[tuple[int, int, int]], expected: int) -> int:
    """Check the row starts in `piece` (inflated bytes from `start` on); returns the bytes so far."""
    stop = start + len(piece)
    if stop > expected:
        raise InputError(f"image data inflates to more than the {expected} bytes its size needs")
    values = np.frombuffer(piece, dtype=np.uint8)
    for first, stride, count in rows:
        # The row starts first + k * stride that fall in [start, stop).
        k_first = max(0, -(-(start - first) // stride))
        k_stop = min(count, -(-(stop - first) // stride))
        if k_first < k_stop and (values[first + k_first * stride - start:first + k_stop * stride - start:stride]
                                 > MAX_FILTER_TYPE).any():
            raise InputError(f"image data has a row filter type above {MAX_FILTER_TYPE} (corrupt data)")
    return stop
