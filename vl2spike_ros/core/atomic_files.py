"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial one.

Every writer goes to a temporary file in the target's own directory (so the final rename stays on one
filesystem and is atomic), flushes it to disk, renames it over the target and then flushes the
directory entry, so the rename itself survives a power cut.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's or a directory's data and metadata to disk."""
    # Directories cannot be opened for writing; O_RDONLY is enough for fsync on both.
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success make it `path` atomically, on failure delete it.

    The temporary name keeps the target's suffix, so writers that pick a format from the
    extension (matplotlib, numpy) behave as they would for `path` itself.
    """
    target = Path(path)
    descriptor, temporary_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(descriptor)
    temporary = Path(temporary_name)
    # mkstemp creates 0600; a map or checkpoint should get the permissions any new file gets
    # (a node running as another user must be able to read it).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        fsync_path(temporary)
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _named_error(error, target) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_path(target.parent)


def _named_error(error: OSError, path: str | os.PathLike[str]) -> OSError:
    """`error` naming `path` where it names no file or only a temporary one: a full disk fails a
    write() that knows no path, and the user never sees the temporary name."""
    names_temporary = error.filename is not None and Path(error.filename).name.startswith(f".{Path(path).name}.")
    if error.filename is not None and not names_temporary:
        return error
    return OSError(error.errno, error.strerror, str(path))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented UTF-8 JSON to `path` atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
