"""Checks a serialised FAISS index against what map.json says before FAISS reads it.

FAISS trusts the length fields inside an index file: an 8-byte edit of one makes `read_index`
allocate gigabytes before it fails. So the file's structure is walked here first, for exactly the
layouts this package writes (IndexFlatIP, IndexHNSWFlat, IndexIVFPQ and IndexIVFPQFastScan over an
HNSW quantiser, inner product, FAISS 1.x format), and every length is checked against the bytes that really follow and against map.json's
dim and count; the walk must end at the last byte. Anything else is refused as corrupt.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from vl2spike_ros.core.place_map.index_factory import FASTSCAN_QUANTISER_M
from vl2spike_ros.errors import InputError

# FAISS's four-character codes of the structures a map holds.
FLAT_IP = b"IxFI"
HNSW_FLAT = b"IHNf"
IVFPQ = b"IwPQ"
IVFPQ_FASTSCAN = b"IwPf"
STRUCTURE_CODES = {"flat": FLAT_IP, "hnsw": HNSW_FLAT, "ivfpq": IVFPQ, "fastscan": IVFPQ_FASTSCAN}
# Fast scan stores codes in blocks of this many vectors (FAISS's default, which maps keep).
FASTSCAN_BLOCK_VECTORS = 32
# FAISS's InvertedLists::INVALID_CODE_SIZE: block lists have no code size per vector.
_NO_CODE_SIZE = 2**64 - 1
_METRIC_INNER_PRODUCT = 0


# Bytes of the fixed fields: a structure's header (code, d, ntotal, two unused, is_trained, metric),
# and a FAISS vector's length.
_HEADER_BYTES = 4 + struct.calcsize("<iqqq?i")
_VECTOR_LENGTH_BYTES = 8
# FAISS's HNSW gives a level the probability exp(-level / mult) * (1 - exp(-1 / mult)) with
# mult = 1 / ln(M), and keeps the levels whose probability is at least this.
_HNSW_LEVEL_PROBABILITY_FLOOR = 1e-9


class _Corrupt(Exception):
    """The walk found something no index of ours holds."""


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.position + size > len(self.data):
            raise _Corrupt(f"a field at byte {self.position} needs {size} bytes; "
                           f"{len(self.data) - self.position} remain")
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def unpack(self, layout: str) -> tuple:
        return struct.unpack("<" + layout, self.take(struct.calcsize("<" + layout)))

    def vector(self, item_size: int) -> tuple[int, bytes]:
        """A FAISS vector: an 8-byte length, then length * item_size bytes (checked before use)."""
        (length,) = self.unpack("Q")
        remaining = len(self.data) - self.position
        if length * item_size > remaining:
            raise _Corrupt(f"a vector at byte {self.position - 8} claims {length} items of {item_size} "
                           f"bytes but only {remaining} bytes remain")
        return length, self.take(length * item_size)


def _header(cursor: _Cursor, code: bytes, dim: int, count: int) -> None:
    found = cursor.take(4)
    if found != code:
        raise _Corrupt(f"structure {found!r} where {code!r} was expected")
    d, ntotal, _, _, is_trained, metric = cursor.unpack("iqqq?i")
    if d != dim:
        raise _Corrupt(f"dim {d} but map.json says {dim}")
    if ntotal != count:
        raise _Corrupt(f"{ntotal} vectors but map.json says {count}")
    if not is_trained:
        raise _Corrupt("an untrained index")
    if metric != _METRIC_INNER_PRODUCT:
        raise _Corrupt(f"metric type {metric}, not inner product")


def _flat(cursor: _Cursor, dim: int, count: int) -> None:
    _header(cursor, FLAT_IP, dim, count)
    floats, _ = cursor.vector(4)  # the vectors, stored as `count * dim` floats
    if floats != count * dim:
        raise _Corrupt(f"{floats} stored floats, expected {count} x {dim}")


def _hnsw(cursor: _Cursor, dim: int, count: int) -> None:
    _header(cursor, HNSW_FLAT, dim, count)
    cursor.vector(8)  # assign_probas (double)
    cursor.vector(4)  # cum_nneighbor_per_level (int)
    levels, _ = cursor.vector(4)
    offsets_length, offsets = cursor.vector(8)
    if levels != count or offsets_length != count + 1:
        raise _Corrupt(f"graph of {levels} levels and {offsets_length} offsets for {count} vectors")
    neighbors, _ = cursor.vector(4)
    if neighbors != struct.unpack_from("<Q", offsets, 8 * count)[0]:
        raise _Corrupt("graph neighbour list does not match its offsets")
    cursor.unpack("iiiii")  # entry point, max level, efConstruction, efSearch, upper_beam
    _flat(cursor, dim, count)


def _ivf_lists(cursor: _Cursor, count: int) -> int:
    nlist, _ = cursor.unpack("QQ")  # nlist, nprobe
    if not 1 <= nlist <= max(count, 1) * 1024 + 65536:
        raise _Corrupt(f"nlist {nlist}")
    return nlist


def _no_direct_map(cursor: _Cursor) -> None:
    (direct_map_type,) = cursor.unpack("b")
    if direct_map_type != 0:
        raise _Corrupt(f"direct map type {direct_map_type}; maps of vl2spike use none")
    cursor.vector(8)


def _product_quantiser(cursor: _Cursor, dim: int, code_size: int) -> tuple[int, int]:
    """(sub-quantisers, bits) of a product quantiser whose codes take `code_size` bytes."""
    pq_dim, sub_quantisers, bits = cursor.unpack("QQQ")
    if pq_dim != dim or not 1 <= sub_quantisers <= dim or not 1 <= bits <= 16:
        raise _Corrupt(f"product quantiser d={pq_dim} M={sub_quantisers} nbits={bits}")
    if code_size != (sub_quantisers * bits + 7) // 8:
        raise _Corrupt(f"code size {code_size} for M={sub_quantisers} nbits={bits}")
    centroids, _ = cursor.vector(4)
    if centroids != dim * 2**bits:
        raise _Corrupt(f"{centroids} PQ centroid floats, expected {dim * 2**bits}")
    return sub_quantisers, bits


def _ivfpq(cursor: _Cursor, dim: int, count: int) -> None:
    _header(cursor, IVFPQ, dim, count)
    nlist = _ivf_lists(cursor, count)
    _flat(cursor, dim, nlist)  # the coarse quantiser: one centroid per list
    _no_direct_map(cursor)
    _, code_size = cursor.unpack("?Q")  # by_residual, code_size
    _product_quantiser(cursor, dim, code_size)
    _inverted_lists(cursor, nlist, code_size, count)


def _ivfpq_fastscan(cursor: _Cursor, dim: int, count: int) -> None:
    _header(cursor, IVFPQ_FASTSCAN, dim, count)
    nlist = _ivf_lists(cursor, count)
    _hnsw(cursor, dim, nlist)  # the coarse quantiser: a graph over one centroid per list
    _no_direct_map(cursor)
    _, code_size, block_vectors, packed_sub_quantisers, _, _ = cursor.unpack("?QiQiQ")  # by_residual,
    # code_size, bbs, M2 (sub-quantisers rounded up to even), implem, qbs2
    sub_quantisers, bits = _product_quantiser(cursor, dim, code_size)
    if bits != 4 or block_vectors != FASTSCAN_BLOCK_VECTORS or packed_sub_quantisers != sub_quantisers + sub_quantisers % 2:
        raise _Corrupt(f"fast scan of {bits}-bit codes in blocks of {block_vectors} with M2={packed_sub_quantisers}")
    _block_lists(cursor, nlist, block_vectors * packed_sub_quantisers // 2, count)


def _block_lists(cursor: _Cursor, nlist: int, block_bytes: int, count: int) -> None:
    """Fast scan's inverted lists: per list its ids, then its codes in whole blocks."""
    if cursor.take(4) != b"ilbl":
        raise _Corrupt("inverted lists that are not in FAISS's block format")
    lists, code_size, block_vectors, found_block_bytes = cursor.unpack("QQQQ")
    if (lists, code_size, block_vectors, found_block_bytes) != (nlist, _NO_CODE_SIZE, FASTSCAN_BLOCK_VECTORS, block_bytes):
        raise _Corrupt(f"{lists} block lists of {block_vectors} vectors in {found_block_bytes} bytes, "
                       f"expected {nlist} of {FASTSCAN_BLOCK_VECTORS} in {block_bytes}")
    ids = []
    for _ in range(nlist):
        size, list_ids = cursor.vector(8)
        code_bytes, _ = cursor.vector(1)
        if code_bytes != -(-size // FASTSCAN_BLOCK_VECTORS) * block_bytes:
            raise _Corrupt(f"a list of {size} vectors with {code_bytes} bytes of codes")
        ids.append(list_ids)
    total = sum(len(chunk) // 8 for chunk in ids)
    if total != count:
        raise _Corrupt(f"inverted lists hold {total} vectors but map.json says {count}")
    _check_ids(ids, count)


def _check_ids(chunks: list[bytes], count: int) -> None:
    """The lists' ids must name every place once: search results index the map's places with them."""
    ids = np.frombuffer(b"".join(chunks), dtype="<i8")
    if ids.size and (ids.min() < 0 or ids.max() >= count or np.unique(ids).size != count):
        raise _Corrupt(f"inverted lists name place ids outside 0..{count - 1} or one place twice")


def _inverted_lists(cursor: _Cursor, nlist: int, code_size: int, count: int) -> None:
    if cursor.take(4) != b"ilar":
        raise _Corrupt("inverted lists that are not in FAISS's array format")
    lists, list_code_size = cursor.unpack("QQ")
    if lists != nlist or list_code_size != code_size:
        raise _Corrupt(f"{lists} inverted lists of code size {list_code_size}, expected {nlist} of {code_size}")
    layout = cursor.take(4)
    if layout == b"full":
        length, raw = cursor.vector(8)
        if length != nlist:
            raise _Corrupt(f"{length} list sizes for {nlist} lists")
        sizes = struct.unpack(f"<{length}Q", raw)
    elif layout == b"sprs":
        length, raw = cursor.vector(8)
        pairs = struct.unpack(f"<{length}Q", raw)
        if length % 2 or any(list_no >= nlist for list_no in pairs[0::2]):
            raise _Corrupt("sparse list sizes that name lists which do not exist")
        sizes = pairs[1::2]
    else:
        raise _Corrupt(f"inverted list layout {layout!r}")
    if sum(sizes) != count:
        raise _Corrupt(f"inverted lists hold {sum(sizes)} vectors but map.json says {count}")
    ids = []
    for size in sizes:
        cursor.take(size * code_size)  # codes
        ids.append(cursor.take(size * 8))
    _check_ids(ids, count)


_WALKERS = {"flat": _flat, "hnsw": _hnsw, "ivfpq": _ivfpq, "fastscan": _ivfpq_fastscan}


def _flat_bytes(dim: int, count: int) -> int:
    return _HEADER_BYTES + _VECTOR_LENGTH_BYTES + 4 * count * dim


def _hnsw_levels(neighbors: int) -> int:
    mult = 1 / math.log(neighbors)
    level = 0
    while math.exp(-level / mult) * (1 - math.exp(-1 / mult)) >= _HNSW_LEVEL_PROBABILITY_FLOOR:
        level += 1
    return level


def _hnsw_bytes(dim: int, count: int, neighbors: int) -> int:
    """The most bytes an HNSW structure of `count` vectors can take: every place on the top level."""
    vector = _VECTOR_LENGTH_BYTES
    neighbors = max(2, neighbors)
    levels = _hnsw_levels(neighbors)
    per_place = 2 * neighbors + neighbors * (levels - 1)  # level 0 keeps 2M neighbours, the others M
    graph = (vector + 8 * levels + vector + 4 * (levels + 1) + vector + 4 * count
             + vector + 8 * (count + 1) + vector + 4 * count * per_place + struct.calcsize("<iiiii"))
    return _HEADER_BYTES + graph + _flat_bytes(dim, count)


def index_size_limit(structure: str, dim: int, count: int, options: dict) -> int:
    """The most bytes a serialised `structure` index of `count` x `dim` vectors with these options
    can take: a file beyond it is refused before it is read. Exact for flat; for HNSW it assumes every
    place on the top level, for IVF-PQ sparse list sizes."""
    vector = _VECTOR_LENGTH_BYTES
    if structure == "flat":
        return _flat_bytes(dim, count)
    if structure == "hnsw":
        return _hnsw_bytes(dim, count, int(options.get("M") or 2))
    nlist = int(options.get("nlist") or max(count, 1))
    sub_quantisers = int(options.get("m") or dim)
    if structure == "fastscan":
        block_bytes = FASTSCAN_BLOCK_VECTORS * (sub_quantisers + sub_quantisers % 2) // 2
        quantisers = (_HEADER_BYTES + 16 + _hnsw_bytes(dim, nlist, FASTSCAN_QUANTISER_M) + 1 + vector
                      + struct.calcsize("<?QiQiQ") + 24 + vector + 4 * dim * 2**4)
        blocks = count // FASTSCAN_BLOCK_VECTORS + nlist  # each list at most one block short of full
        return quantisers + 4 + 32 + nlist * 2 * vector + 8 * count + blocks * block_bytes
    bits = int(options.get("nbits") or 8)
    code_size = (sub_quantisers * bits + 7) // 8
    quantisers = (_HEADER_BYTES + 16 + _flat_bytes(dim, nlist) + 1 + vector + 9 + 24
                  + vector + 4 * dim * 2**bits)
    lists = 4 + 16 + 4 + vector + 16 * nlist + count * (code_size + 8)
    return quantisers + lists


def check_index_bytes(data: bytes, structure: str, dim: int, count: int, label: str) -> None:
    """Refuse `data` unless it is exactly a serialised `structure` index of `count` x `dim` vectors."""
    cursor = _Cursor(data)
    try:
        _WALKERS[structure](cursor, dim, count)
        if cursor.position != len(data):
            raise _Corrupt(f"{len(data) - cursor.position} bytes follow the index")
    except (_Corrupt, struct.error) as error:
        raise InputError(f"{label} is truncated or corrupt, or does not match map.json "
                         f"(expected a {structure} index of {count} x {dim}): {error}") from None
