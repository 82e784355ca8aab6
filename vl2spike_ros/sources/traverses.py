"""Open a traverse from a path: a rosbag2 or an image folder, whichever it is."""
from pathlib import Path

from vl2spike_ros.errors import InputError
from vl2spike_ros.sources.frames import ImageSequence
from vl2spike_ros.sources.image_folders import ImageFolderSequence


BAG_STORAGE_SUFFIXES = (".db3", ".mcap")


def is_bag(path: str | Path) -> bool:
    """A rosbag2 directory (with metadata.yaml) or a single .db3 / .mcap file."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in BAG_STORAGE_SUFFIXES


def open_sequence(path: str | Path, topic: str | None = None) -> ImageSequence:
    """Open a rosbag2 or an image folder, whichever `path` is; `topic` applies to bags only."""
    if is_bag(path):
        # Imported only for bags: rosbags is not needed to read image folders.
        from vl2spike_ros.sources.bags import BagSequence

        return BagSequence(path, topic=topic)
    if topic is not None:
        raise InputError(f"topic {topic!r}: only a rosbag2 has topics, {path} is an image folder")
    try:
        return ImageFolderSequence(path)
    except InputError:
        storage_files = _bag_storage_files(Path(path))
        if not storage_files:
            raise
        raise InputError(
            f"{path}: looks like a rosbag2 folder without metadata.yaml (it holds {storage_files[0]}); "
            "expected metadata.yaml beside the storage files (`ros2 bag reindex` rebuilds it), "
            "or give the .db3 / .mcap file itself"
        ) from None


def _bag_storage_files(folder: Path) -> list[str]:
    """Names of the rosbag2 storage files (.db3 / .mcap) directly in `folder`."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in folder.iterdir() if entry.suffix.lower() in BAG_STORAGE_SUFFIXES)
