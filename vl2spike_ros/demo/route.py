"""The embedded demo route: two traverses of a panorama made from scikit-image's photographs.

A strip of real photographs (shipped inside scikit-image, no download) stands in for a route; a
camera slides along it, one place every STRIDE strip pixels. The reference traverse sees plain
crops; the query traverse sees the same places with a fixed, seeded change of appearance (gamma,
contrast, brightness, colour cast, blur, noise) and a lateral jitter of a few pixels, as a second
season would. Both are written in the Nordland layout: place i is `images-{10*i:05d}.png`, so a
tolerance of 10 frames is one place, as on Nordland.
"""
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.images import to_rgb

PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "rocket": skimage.data.rocket,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "camera": skimage.data.camera,
    "brick": skimage.data.brick,
    "grass": skimage.data.grass,
    "gravel": skimage.data.gravel,
    "coins": skimage.data.coins,
    "moon": skimage.data.moon,
    "immunohistochemistry": skimage.data.immunohistochemistry,
}
STRIP_HEIGHT = 160
WINDOW_WIDTH = 320  # window 320x160 keeps the 2:1 aspect of the 64x32 places
STRIDE = 12
MAX_JITTER = 4  # strip pixels, about one place pixel
PLACE_SIZE = (64, 32)  # width, height: like Nordland64
FRAME_STEP = 10
QUERY_SEED = 20261128
FORMAT_VERSION = 1  # bump when the appearance change changes: a route on disk is reused by it
MANIFEST = "route.json"


def build_strip() -> np.ndarray:
    """All photographs at STRIP_HEIGHT, side by side, as one RGB uint8 panorama."""
    parts = []
    for load in PHOTOS.values():
        rgb = to_rgb(load())
        height, width = rgb.shape[:2]
        size = (round(width * STRIP_HEIGHT / height), STRIP_HEIGHT)
        parts.append(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
    return np.concatenate(parts, axis=1)


def place_positions(strip_width: int) -> list[int]:
    """Left edge of every place's window, leaving room for the query's jitter on both sides."""
    last = strip_width - WINDOW_WIDTH - MAX_JITTER
    return list(range(MAX_JITTER, last + 1, STRIDE))


def _view(strip: np.ndarray, left: int) -> np.ndarray:
    window = strip[:, left:left + WINDOW_WIDTH]
    return cv2.resize(window, PLACE_SIZE, interpolation=cv2.INTER_AREA)


def _change_appearance(place: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A darker, flatter, bluish, unevenly lit, blurred and noisy view; each place varies."""
    image = place.astype(np.float32) / 255.0
    image = image ** rng.uniform(1.2, 1.6)
    image = (image - 0.5) * rng.uniform(0.65, 0.85) + 0.5 + rng.uniform(-0.08, 0.02)
    image = image * np.array([0.85, 0.95, 1.12], np.float32) * rng.uniform(0.95, 1.05, size=3)
    # Uneven light: a brightness ramp across the view in a random direction.
    angle = rng.uniform(0.0, 2.0 * np.pi)
    rows, columns = np.mgrid[-1:1:PLACE_SIZE[1] * 1j, -1:1:PLACE_SIZE[0] * 1j].astype(np.float32)
    ramp = np.cos(angle) * columns + np.sin(angle) * rows
    image = image * (1.0 + rng.uniform(0.2, 0.4) * ramp)[:, :, None]
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.5, 1.2))
    image = image + rng.normal(0.0, 0.04, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def build_demo_route() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Reference and query images (RGB uint8, 32x64), one per place, in place order."""
    return _traverses(build_strip())


def _traverses(strip: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(QUERY_SEED)
    references, queries = [], []
    for left in place_positions(strip.shape[1]):
        references.append(_view(strip, left))
        jitter = int(rng.integers(-MAX_JITTER, MAX_JITTER + 1))
        queries.append(_change_appearance(_view(strip, left + jitter), rng))
    return references, queries


def _manifest(places: int) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "places": places,
        "width": PLACE_SIZE[0],
        "height": PLACE_SIZE[1],
        "frame_step": FRAME_STEP,
        "strip_height": STRIP_HEIGHT,
        "window_width": WINDOW_WIDTH,
        "stride": STRIDE,
        "max_jitter": MAX_JITTER,
        "query_seed": QUERY_SEED,
        "photos": list(PHOTOS),
    }


def _is_route(out_dir: Path, expected: dict) -> bool:
    try:
        return json.loads((out_dir / MANIFEST).read_text()) == expected
    except (OSError, ValueError):
        return False


def write_demo_route(out_dir: str | Path) -> tuple[Path, Path]:
    """Write `out_dir/reference/` and `out_dir/query/` (Nordland layout); return both folders.

    The route is built in a staging folder and renamed into place when complete, so an existing
    `out_dir` with a matching manifest is a whole route and is reused as it is.
    """
    out_dir = Path(out_dir)
    strip = build_strip()
    expected = _manifest(len(place_positions(strip.shape[1])))
    folders = (out_dir / "reference", out_dir / "query")
    if _is_route(out_dir, expected):
        return folders
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(
            f"demo route folder {out_dir}: exists and holds no matching demo route "
            "(expected a new or empty folder)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    # Built one level down: mkdtemp's folder is private (0700), the route should not be.
    staged_route = staging / out_dir.name
    try:
        for name, images in zip(("reference", "query"), _traverses(strip)):
            (staged_route / name).mkdir(parents=True)
            for index, rgb in enumerate(images):
                path = staged_route / name / f"images-{index * FRAME_STEP:05d}.png"
                cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        (staged_route / MANIFEST).write_text(json.dumps(expected, indent=2) + "\n")
        try:
            os.replace(staged_route, out_dir)  # replaces only an empty out_dir
        except OSError:
            # Another process finished the same route first: theirs is as good as ours.
            if not _is_route(out_dir, expected):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folders
