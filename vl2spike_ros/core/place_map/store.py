"""A map directory on disk, written crash-safely and read as one consistent snapshot.

Layout: `index.faiss`, `descriptors.npy`, `places.json` and, written last, `map.json`, which
records (format 2) the size and sha256 of each of the other three files.

Writing (`write_map_directory`): every file is written and fsynced in a staging directory beside
the target (same filesystem), then swapped in with two renames: target -> `.<name>.previous`,
staging -> target; then the previous map is deleted. A crash before the first rename leaves the old
map in place; after the second, the new one. A crash between them leaves no target but the intact
old map at `.<name>.previous`: readers read it from there, and the next save first renames it
back. One writer per target at a time: the staging and backup names are fixed.

Reading (`read_map_directory`): a reader in another process may run while a save swaps
directories. It opens the map directory once and opens every file relative to that open directory,
so all four files come from the same directory even if it is renamed meanwhile; a file that
vanished (the old map being deleted) means "start again" rather than "mix". Then each file's size
and sha256 are checked against map.json, which also catches files edited or copied in by hand.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import fsync_path

FORMAT_VERSION = 2
# Format 1 (before content hashes) is still read: the snapshot read keeps it consistent too.
READABLE_FORMAT_VERSIONS = (1, 2)
PAYLOAD_FILES = ("index.faiss", "descriptors.npy", "places.json")
METADATA_FILE = "map.json"
MAP_FILES = (*PAYLOAD_FILES, METADATA_FILE)
# A save swaps directories in microseconds; this many back-to-back saves during one read is a writer
# in a loop, not a race worth waiting out.
READ_ATTEMPTS = 50
MAX_METADATA_BYTES = 1 << 20


def sibling(target: Path, role: str) -> Path:
    return target.with_name(f".{target.name}.{role}")


# --- writing -------------------------------------------------------------------------------------
def check_replaceable(target: Path) -> None:
    """Refuse `target` unless it is absent, an empty directory or verifiably a map of this package:
    exactly the map files, and a map.json of a format we write. Nothing else is ever deleted."""
    if not target.exists():
        return
    if not target.is_dir():
        raise InputError(f"cannot save map to {target}: it exists and is not a directory")
    entries = sorted(entry.name for entry in target.iterdir())
    if not entries:
        return
    reason = None
    if set(entries) != set(MAP_FILES):
        extra = sorted(set(entries) - set(MAP_FILES))
        reason = f"it holds {', '.join(extra[:5]) or 'too few files'}" if extra else "files are missing"
    elif not (target / METADATA_FILE).is_file():  # a FIFO would block the read below
        reason = "its map.json is not a regular file"
    else:
        try:
            metadata = json.loads((target / METADATA_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            metadata = None
        if not isinstance(metadata, dict) or metadata.get("format_version") not in READABLE_FORMAT_VERSIONS \
                or not isinstance(metadata.get("model_fingerprint"), str):
            reason = "its map.json is not one vl2spike writes"
    if reason is not None:
        raise InputError(f"cannot save map to {target}: it is a non-empty directory that is not a map of "
                         f"vl2spike ({reason}); refusing to replace it")


def write_map_directory(target: Path, payloads: dict[str, bytes], metadata: dict[str, Any]) -> None:
    """Write the payload files and map.json (with their sizes and hashes) to `target`, atomically."""
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_save(target)
    check_replaceable(target)
    staging = sibling(target, "saving")
    if staging.exists():
        shutil.rmtree(staging)  # left by a save that crashed before its swap
    staging.mkdir()
    try:
        files = {}
        for name in PAYLOAD_FILES:
            _write_synced(staging, target, name, payloads[name])
            files[name] = {"bytes": len(payloads[name]), "sha256": hashlib.sha256(payloads[name]).hexdigest()}
        _write_synced(staging, target, METADATA_FILE,
                      (json.dumps({"format_version": FORMAT_VERSION, **metadata, "files": files}, indent=2)
                       + "\n").encode("utf-8"))
        fsync_path(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, target)


def _write_synced(staging: Path, target: Path, name: str, data: bytes) -> None:
    """Write `name` in the staging folder; an error names the file where the user will look for it."""
    try:
        with open(staging / name, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(target / name)) from None


def _recover_interrupted_save(target: Path) -> None:
    """Finish what a save that crashed mid-swap left behind."""
    previous = sibling(target, "previous")
    if not previous.exists():
        return
    if target.exists():
        shutil.rmtree(previous)  # the crash came after the new map was in place
    else:
        os.rename(previous, target)
        fsync_path(target.parent)


def _swap_into_place(staging: Path, target: Path) -> None:
    previous = sibling(target, "previous")
    had_previous = target.exists()
    if had_previous:
        os.rename(target, previous)
    try:
        os.rename(staging, target)
    except BaseException:
        if had_previous:
            os.rename(previous, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(target.parent)
    if had_previous:
        shutil.rmtree(previous)


# --- reading -------------------------------------------------------------------------------------
class _Vanished(Exception):
    """A file disappeared between opening the directory and opening the file."""


def read_map_directory(target: Path, size_limits: Callable[[dict[str, Any]], dict[str, int]]
                       ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(map.json as parsed, payload bytes by file name) of one consistent map at `target`.

    Format, per-file sizes (before reading: the recorded size and the most `size_limits(metadata)`
    allows for each payload) and hashes are verified; contents are not interpreted.
    """
    for _ in range(READ_ATTEMPTS):
        source = _readable_directory(target)
        try:
            directory = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # swapped away between the check and the open
        except OSError as error:
            raise InputError(f"map {target}: cannot open it ({error.strerror})") from None
        files: dict[str, int] = {}
        try:
            # Open all, then read: an open file stays readable even if its directory is deleted.
            for name in MAP_FILES:
                files[name] = _open_in(target, directory, name)
            metadata = _parse_metadata(target, _read_open(target, METADATA_FILE, files[METADATA_FILE], None))
            limits = size_limits(metadata)
            contents = {name: _read_open(target, name, files[name], _recorded_size(target, metadata, name),
                                         limits.get(name))
                        for name in PAYLOAD_FILES}
        except _Vanished:
            if _still_at(source, directory):
                missing = [name for name in MAP_FILES if not (source / name).is_file()]
                raise InputError(f"map {target} is incomplete: missing {', '.join(missing)}") from None
            continue
        finally:
            for descriptor in files.values():
                os.close(descriptor)
            os.close(directory)
        _verify_hashes(target, metadata, contents)
        return metadata, contents
    raise InputError(f"map {target} was replaced {READ_ATTEMPTS} times while being read; try again")


def _readable_directory(target: Path) -> Path:
    if target.is_dir():
        return target
    previous = sibling(target, "previous")
    if previous.is_dir():
        return previous  # a save crashed (or is) between its two renames; this is the intact old map
    if target.is_dir():
        return target  # a save finished its second rename and removed the old map between the checks
    if target.exists():
        raise InputError(f"map {target} is not a directory")
    raise InputError(f"map {target} does not exist or is not a directory")


def _open_in(target: Path, directory: int, name: str) -> int:
    try:
        # Non-blocking, so that opening a FIFO returns at once and is refused below instead of
        # waiting forever for a writer; reads of a regular file ignore the flag.
        descriptor = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=directory)
    except FileNotFoundError:
        raise _Vanished(name) from None
    except OSError as error:
        raise InputError(f"map {target}: cannot open {name} ({error.strerror})") from None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise InputError(f"map {target}: {name} is not a regular file (a FIFO, device or folder); "
                         "expected the file a map save writes")
    return descriptor


def _read_open(target: Path, name: str, descriptor: int, expected_size: int | None,
               size_limit: int | None = None) -> bytes:
    """The whole file; its size is checked first, so nothing is read that is not recorded."""
    size = os.fstat(descriptor).st_size
    if expected_size is not None and size != expected_size:
        raise InputError(f"map {target}: {name} is truncated or corrupt: {size} bytes but map.json "
                         f"records {expected_size}")
    if size_limit is not None and size > size_limit:
        raise InputError(f"map {target}: {name} is {size} bytes, more than the {size_limit} that the "
                         "count, dim and index structure in map.json allow")
    if name == METADATA_FILE and size > MAX_METADATA_BYTES:
        raise InputError(f"map {target}: map.json is {size} bytes; a map's map.json is a few hundred")
    try:
        with os.fdopen(os.dup(descriptor), "rb") as stream:
            return stream.read(size)
    except OSError as error:
        raise InputError(f"map {target}: cannot read {name} ({error.strerror})") from None


def _still_at(source: Path, directory: int) -> bool:
    try:
        linked = os.stat(source)
    except FileNotFoundError:
        return False
    opened = os.fstat(directory)
    return (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino)


def parse_json(target: Path, name: str, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise InputError(f"map {target}: cannot read {name}: {error}") from None
    except RecursionError:
        raise InputError(f"map {target}: cannot read {name}: JSON nested too deeply") from None


def _parse_metadata(target: Path, data: bytes) -> dict[str, Any]:
    metadata = parse_json(target, METADATA_FILE, data)
    if not isinstance(metadata, dict):
        raise InputError(f"map {target}: map.json must hold a JSON object")
    version = metadata.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise InputError(
            f"map {target} has format_version {version!r:.40}; this version of vl2spike_ros reads "
            f"format_version {', '.join(map(str, READABLE_FORMAT_VERSIONS))}; rebuild the map"
        )
    return metadata


def _file_record(target: Path, metadata: dict[str, Any], name: str) -> dict[str, Any] | None:
    if metadata["format_version"] < 2:
        return None
    files = metadata.get("files")
    record = files.get(name) if isinstance(files, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("bytes"), int) \
            or not isinstance(record.get("sha256"), str):
        raise InputError(f"map {target}: map.json has no valid record of {name} (size and sha256)")
    return record


def _recorded_size(target: Path, metadata: dict[str, Any], name: str) -> int | None:
    record = _file_record(target, metadata, name)
    return None if record is None else record["bytes"]


def _verify_hashes(target: Path, metadata: dict[str, Any], contents: dict[str, bytes]) -> None:
    for name in PAYLOAD_FILES:
        record = _file_record(target, metadata, name)
        if record is not None and hashlib.sha256(contents[name]).hexdigest() != record["sha256"]:
            raise InputError(f"map {target}: {name} is corrupt or was modified: its sha256 does not "
                             "match the one map.json records")
