"""Open a traverse from a path: a rosbag2 or an image folder, whichever it is."""
from pathlib import Path

from vl2spike_ros.errors import InputError
from vl2spike_ros.sources.frames import ImageSequence
from vl2spike_ros.sources.image_folders import ImageFolderSequence


def is_bag(path: str | Path) -> bool:
    """A rosbag2 directory (with metadata.yaml) or a single .db3 / .mcap file."""
    path = Path(path)
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in (".db3", ".mcap")


def open_sequence(path: str | Path, topic: str | None = None) -> ImageSequence:
    """Open a rosbag2 or an image folder, whichever `path` is; `topic` applies to bags only."""
    if is_bag(path):
        # Imported only for bags: rosbags is not needed to read image folders.
        from vl2spike_ros.sources.bags import BagSequence

        return BagSequence(path, topic=topic)
    if topic is not None:
        raise InputError(f"topic {topic!r}: only a rosbag2 has topics, {path} is an image folder")
    return ImageFolderSequence(path)
