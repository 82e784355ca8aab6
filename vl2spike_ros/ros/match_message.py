"""What vpr_node publishes on `~/match` and answers on `~/save_map` (docs/ros_interface.md).

Where the package's own interfaces are built (a colcon build, or `make`: tools/build_interfaces.sh),
`~/match` is a `vl2spike_ros/msg/PlaceMatch` and `~/save_map` a `vl2spike_ros/srv/SaveMap`. Where they
are not (a plain `pip install`), `~/match` carries the same fields as one JSON object in a
`std_msgs/String` and `~/save_map` is a `std_srvs/Trigger`; `TYPED_UNAVAILABLE` then says why.
`match_fields` reads either form into the JSON's dict, for the package's own subscribers.
"""
from __future__ import annotations

import json
import math
from typing import Any

from std_msgs.msg import String
from std_srvs.srv import Trigger

from vl2spike_ros.core.localizer import Match

try:
    from vl2spike_ros.msg import PlaceMatch
    from vl2spike_ros.srv import SaveMap
except ImportError as error:  # interfaces not generated here: JSON and Trigger instead
    PlaceMatch = SaveMap = None
    TYPED_UNAVAILABLE: str | None = (
        f"the package's messages are not built here ({error}): ~/match is std_msgs/String JSON and "
        "~/save_map std_srvs/Trigger (build the package with colcon, or run `make venv`)")
else:
    TYPED_UNAVAILABLE = None

MATCH_SCHEMA_VERSION = 1
MATCH_TYPE = PlaceMatch if PlaceMatch is not None else String
SAVE_MAP_TYPE = SaveMap if SaveMap is not None else Trigger
NO_ID = -1  # PlaceMatch's integer fields that hold no id (Place.frame, added_place_id, best_place.place_id)


def match_json(match: Match, sec: int, nanosec: int, frame_id: str, mode: str, map_size: int,
               sequence_length: int = 1) -> dict[str, Any]:
    """The JSON body for one frame's match; `sec`, `nanosec` and `frame_id` come from the image header."""
    return {
        "schema_version": MATCH_SCHEMA_VERSION,
        "stamp": {"sec": int(sec), "nanosec": int(nanosec)},
        "frame_id": frame_id,
        "query_index": match.query_index,
        "place_ids": [int(i) for i in match.place_ids],
        "scores": [float(s) if math.isfinite(s) else None for s in match.scores],
        "accepted": bool(match.accepted),
        "sequence_length": int(sequence_length),
        "latency_ms": float(match.latency_ms),
        "mode": mode,
        "added_place_id": match.added_place_id,
        "map_size": int(map_size),
        "best_place": match.best_place.to_json() if match.best_place is not None else None,
    }


def match_message(match: Match, header: Any, mode: str, map_size: int, sequence_length: int = 1) -> Any:
    """The `~/match` message of one frame: a PlaceMatch, or String JSON where it is not built.
    `header` is the query image's (its stamp and frame_id are copied)."""
    if PlaceMatch is None:
        body = match_json(match, header.stamp.sec, header.stamp.nanosec, header.frame_id, mode, map_size,
                          sequence_length)
        return String(data=json.dumps(body))
    message = PlaceMatch()
    message.header.stamp = header.stamp
    message.header.frame_id = header.frame_id
    message.query_index = int(match.query_index)
    message.place_ids = [int(i) for i in match.place_ids]
    message.scores = [float(s) for s in match.scores]
    message.accepted = bool(match.accepted)
    place = match.best_place
    best = message.best_place
    best.place_id = place.place_id if place is not None else NO_ID
    best.stamp = math.nan
    best.frame = NO_ID
    if place is not None:
        best.source = place.source
        best.frame = place.frame if place.frame is not None else NO_ID
        best.stamp = place.stamp if place.stamp is not None else math.nan
        if place.pose is not None:
            best.has_pose = True
            position, orientation = best.pose.position, best.pose.orientation
            position.x, position.y, position.z = place.pose[:3]
            orientation.x, orientation.y, orientation.z, orientation.w = place.pose[3:]
    message.sequence_length = int(sequence_length)
    message.latency_ms = float(match.latency_ms)
    message.mode = mode
    message.added_place_id = match.added_place_id if match.added_place_id is not None else NO_ID
    message.map_size = int(map_size)
    return message


def match_fields(message: Any) -> dict[str, Any]:
    """A `~/match` message of either form as the JSON's dict (keys in docs/ros_interface.md)."""
    if isinstance(message, String):
        return json.loads(message.data)
    place = message.best_place
    best_place = None if place.place_id == NO_ID else {
        "place_id": place.place_id, "source": place.source,
        "frame": place.frame if place.frame != NO_ID else None,
        "stamp": place.stamp if math.isfinite(place.stamp) else None,
        "pose": [place.pose.position.x, place.pose.position.y, place.pose.position.z, place.pose.orientation.x,
                 place.pose.orientation.y, place.pose.orientation.z, place.pose.orientation.w]
        if place.has_pose else None,
    }
    return {
        "schema_version": MATCH_SCHEMA_VERSION,
        "stamp": {"sec": message.header.stamp.sec, "nanosec": message.header.stamp.nanosec},
        "frame_id": message.header.frame_id,
        "query_index": message.query_index,
        "place_ids": [int(i) for i in message.place_ids],
        "scores": [float(s) if math.isfinite(s) else None for s in message.scores],
        "accepted": message.accepted,
        "sequence_length": message.sequence_length,
        "latency_ms": message.latency_ms,
        "mode": message.mode,
        "added_place_id": message.added_place_id if message.added_place_id != NO_ID else None,
        "map_size": message.map_size,
        "best_place": best_place,
    }
