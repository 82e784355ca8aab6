"""vpr_node's parameters: one table (default, description, range or choices, mutability) and the
check every value goes through, at start-up and on updates. ROS-free and light (no torch, FAISS or
OpenCV): `node.py` turns the table into rclpy parameter descriptors, and the launch file's
arguments take their defaults and descriptions from it."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from vl2spike_ros.core.backends import AUTO, backend_names
from vl2spike_ros.core.limits import DEFAULT_MAX_IMAGE_PIXELS, MODES

TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: default, description, range (numbers) or choices (strings), mutability."""

    name: str
    default: Any
    description: str
    read_only: bool = False
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model_path", "", "student checkpoint (.safetensors); empty: the model the package ships",
                  read_only=True),
    ParameterSpec("map_path", "", "place map directory built with `vl2spike build-map`: loaded at configure "
                  "(mode 'localize' needs it); ~/save_map writes here", read_only=True),
    ParameterSpec("reference_images", "", "folder holding the map's reference images (place 'source' names), "
                  "for ~/match_image; empty: only absolute sources are found", read_only=True),
    ParameterSpec("mode", "localize", "'localize': match against the map; 'map': also add keyframes "
                  "(see ~/set_mapping)", choices=MODES),
    ParameterSpec("top_k", 5, "number of best places reported per frame", low=1, high=100, step=1),
    ParameterSpec("sequence_length", 1, "sequence matching over the last L frames (1: single frame)",
                  read_only=True, low=1, high=100, step=1),
    ParameterSpec("match_threshold", 0.0, "a match is accepted when its best score is at least this "
                  "(cosine similarity)", low=-1.0, high=1.0),
    ParameterSpec("centre", False, "centre the map on its mean and each frame on the running mean of the "
                  "frames so far (per-traverse standardisation, as `vl2spike evaluate --centre`; needs mode 'localize')",
                  read_only=True),
    ParameterSpec("novelty_threshold", 0.9, "mapping mode: a frame whose best similarity is below this "
                  "becomes a new place", low=-1.0, high=1.0),
    ParameterSpec("transport", "raw", "'raw': subscribe 'image' (sensor_msgs/Image); 'compressed': "
                  "'image/compressed' (sensor_msgs/CompressedImage)", read_only=True, choices=TRANSPORTS),
    ParameterSpec("autostart", True, "configure and activate at start (no lifecycle manager needed)",
                  read_only=True),
    ParameterSpec("device", "cpu", "torch device for the student, e.g. 'cpu' or 'cuda:0'", read_only=True),
    ParameterSpec("backend", AUTO, "where the student runs; either serves the other's maps ('auto': "
                  "onnxruntime, exported on first use into the user cache, or torch where that cannot start)",
                  read_only=True, choices=backend_names()),
    ParameterSpec("num_threads", 1, "CPU threads of torch, onnxruntime and FAISS in this node. 1 leaves the "
                  "other cores to the robot's other nodes; raise it where cores are free and a large model or "
                  "map makes frames slow (0: the libraries' defaults, which spin on every core)",
                  read_only=True, low=0, high=256, step=1),
    ParameterSpec("index", "flat", "FAISS index kind of a map started empty in mode 'map' "
                  "(ivfpq keeps keyframes exactly until it has enough to train)",
                  read_only=True, choices=("flat", "hnsw", "ivfpq", "fastscan")),
    ParameterSpec("publish_match_image", True, "publish ~/match_image (only while someone subscribes)"),
    ParameterSpec("map_frame", "map", "frame_id of ~/pose", read_only=True),
    ParameterSpec("pose_variance", 25.0, "variance (m^2, rad^2) on the diagonal of ~/pose's covariance",
                  low=0.0, high=1.0e6),
    ParameterSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", read_only=True,
                  low=0.1, high=60.0),
    ParameterSpec("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "frames whose header claims more pixels "
                  "than this are invalid (checked before decoding; default 2^25, 8K UHD fits)",
                  low=1, high=2**31 - 1, step=1),
    ParameterSpec("invalid_log_period", 5.0, "seconds between log lines about invalid frames (throttle)",
                  low=0.0, high=3600.0),
)
PARAMETER_SPECS = {spec.name: spec for spec in PARAMETERS}


def check_parameter(name: str, value: Any) -> str | None:
    """Why `value` is not acceptable for parameter `name`, or None when it is."""
    spec = PARAMETER_SPECS.get(name)
    if spec is None:
        return None  # not ours (use_sim_time and friends): rclpy checks those
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        return f"{name} must be a {expected.__name__}, got {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value!r}"
    if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
        return f"{name} must be in [{spec.low:g}, {spec.high:g}], got {value!r}"
    return None
