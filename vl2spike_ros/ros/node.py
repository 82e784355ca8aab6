"""`vpr_node`: the ROS 2 place-recognition node, a thin rclpy lifecycle shell over `Localizer`.

Interface (design §3; schema and examples in the README, section ROS 2):
- subscribes `image` (sensor_msgs/Image) or `image/compressed` (sensor_msgs/CompressedImage), per
  parameter `transport`, with sensor-data QoS; the callback only checks the message and puts it in a
  one-frame slot (newest frame wins, a replaced frame counts as a drop); a worker thread runs
  inference, so no backlog can form;
- publishes `~/match` (std_msgs/String JSON), `~/pose` (PoseWithCovarianceStamped, when the map has
  poses and the match is accepted), `~/match_image` (query beside its best match, only while
  subscribed) and `/diagnostics` (DiagnosticArray);
- services `~/save_map` (std_srvs/Trigger) and `~/set_mapping` (std_srvs/SetBool);
- lifecycle: configure loads and checks model and map, activate subscribes, deactivate and cleanup
  release; parameter `autostart` (default true) configures and activates at start.
"""
from __future__ import annotations

import json
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import numpy as np

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vl2spike_ros.ros import image_messages as ros_images
from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.node_support import (PARAMETERS, PARAMETER_SPECS, FrameSlot, NodeStats, check_parameter,
                        diagnostic_values, match_json)

NODE_NAME = "vpr_node"
RUNTIME_TUNABLE = ("mode", "top_k", "match_threshold", "novelty_threshold", "publish_match_image",
                   "pose_variance", "invalid_log_period")
THUMBNAIL_HEIGHT = 120
MAX_THUMBNAILS = 20000


def _descriptor(spec) -> ParameterDescriptor:
    description = spec.description
    if spec.choices:
        description += f" (one of: {', '.join(spec.choices)})"
    descriptor = ParameterDescriptor(description=description, read_only=spec.read_only)
    if spec.low is not None:
        if isinstance(spec.default, int) and not isinstance(spec.default, bool):
            descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                                     step=int(spec.step or 1))]
        else:
            descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                  to_value=float(spec.high), step=0.0)]
    if spec.choices:
        descriptor.additional_constraints = f"one of: {', '.join(spec.choices)}"
    return descriptor


def _thumbnail(rgb: np.ndarray, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    import cv2

    if rgb.shape[0] <= height:
        return rgb.copy()
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def side_by_side(query: np.ndarray, reference: np.ndarray | None, caption: str) -> np.ndarray:
    """Query (left) beside the matched reference (right), both scaled to one height, with a caption."""
    import cv2

    height = max(query.shape[0], reference.shape[0] if reference is not None else 0, 96)

    def scaled(image: np.ndarray) -> np.ndarray:
        width = max(1, round(image.shape[1] * height / image.shape[0]))
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)

    panels = [scaled(query)] + ([scaled(reference)] if reference is not None else [])
    canvas = np.concatenate(panels, axis=1) if len(panels) > 1 else panels[0].copy()
    banner = np.zeros((24, canvas.shape[1], 3), dtype=np.uint8)
    if reference is None:
        caption += " (reference image unavailable)"
    cv2.putText(banner, caption, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([banner, canvas], axis=0))


class VprNode(LifecycleNode):
    """Lifecycle node `vpr_node`; see the module docstring for its interface."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.Lock()  # guards the localizer (worker vs. services and parameters)
        self._localizer = None
        self._slot = FrameSlot()
        self._vpr_stats = NodeStats()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._image_sub = None
        self._vpr_pubs: dict[str, Any] = {}
        self._vpr_srvs: list[Any] = []
        self._thumbnails: dict[int, np.ndarray] = {}
        self._vpr_state = "unconfigured"
        self._last_invalid_reported = 0
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self._vpr_settings = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self._vpr_settings["diagnostics_period"],
                                                    self._publish_diagnostics)
        self.get_logger().info(f"{NODE_NAME} from {Path(__file__).resolve().parent} "
                               f"(image conversion: {ros_images.BACKEND})")

    # --- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            reason = check_parameter(parameter.name, parameter.value)
            if reason is not None:
                return SetParametersResult(successful=False, reason=reason)
        updates = {p.name: p.value for p in parameters if p.name in PARAMETER_SPECS}
        if not hasattr(self, "_vpr_settings"):  # declaration at start-up: values are read afterwards
            return SetParametersResult(successful=True)
        with self._lock:
            localizer = self._localizer
            if localizer is not None and "mode" in updates:
                try:
                    localizer.set_mode(updates["mode"])
                except InputError as error:
                    return SetParametersResult(successful=False, reason=str(error))
            if localizer is not None:
                for name in ("top_k", "match_threshold", "novelty_threshold"):
                    if name in updates:
                        setattr(localizer, name, updates[name])
            self._vpr_settings.update(updates)
        for name, value in updates.items():
            self.get_logger().info(f"parameter {name} = {value!r}")
        return SetParametersResult(successful=True)

    # --- lifecycle ----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self._vpr_settings
        try:
            import torch

            from vl2spike_ros.core.localizer import Localizer

            if settings["num_threads"] > 0:
                torch.set_num_threads(settings["num_threads"])
            localizer = Localizer.from_paths(
                settings["model_path"] or None, settings["map_path"] or None, device=settings["device"],
                index_kind=settings["index"], top_k=settings["top_k"],
                sequence_length=settings["sequence_length"], match_threshold=settings["match_threshold"],
                novelty_threshold=settings["novelty_threshold"], mode=settings["mode"])
        except InputError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001 - a broken file must not kill the node
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}")
            self.get_logger().debug(traceback.format_exc())
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._localizer = localizer
            self._thumbnails.clear()
        self._vpr_pubs = {
            "match": self.create_publisher(String, "~/match", 10),
            "pose": self.create_publisher(PoseWithCovarianceStamped, "~/pose", 10),
            "match_image": self.create_publisher(Image, "~/match_image", 1),
        }
        self._vpr_srvs = [
            self.create_service(Trigger, "~/save_map", self._on_save_map),
            self.create_service(SetBool, "~/set_mapping", self._on_set_mapping),
        ]
        encoder = localizer.encoder
        self.get_logger().info(
            f"configured: model {encoder.fingerprint[:12]} (dim {encoder.dim}, {settings['device']}), "
            f"map {settings['map_path'] or '(new)'} with {len(localizer.place_map)} places, "
            f"mode {localizer.mode}")
        self._vpr_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._vpr_settings["transport"] == "compressed":
            self._image_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed, qos_profile_sensor_data)
        else:
            self._image_sub = self.create_subscription(
                Image, "image", self._on_image, qos_profile_sensor_data)
        self._slot.reopen()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="vpr_inference", daemon=True)
        self._worker.start()
        self._vpr_state = "active"
        self.get_logger().info(f"active: listening on {self._image_sub.topic_name} "
                               f"({self._vpr_settings['transport']})")
        return TransitionCallbackReturn.SUCCESS

    def _release_active(self) -> None:
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

    def _release_configured(self) -> None:
        for publisher in self._vpr_pubs.values():
            self.destroy_publisher(publisher)
        self._vpr_pubs = {}
        for service in self._vpr_srvs:
            self.destroy_service(service)
        self._vpr_srvs = []
        with self._lock:
            self._localizer = None
            self._thumbnails.clear()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._vpr_state = "inactive"
        self.get_logger().info("inactive: unsubscribed")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._vpr_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._vpr_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._vpr_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    @property
    def state(self) -> str:
        return self._vpr_state

    # --- input ----------------------------------------------------------------------------------
    def _invalid(self, error: InputError) -> None:
        self._vpr_stats.record_invalid(str(error))
        self.get_logger().warning(f"dropped an invalid frame: {error} ({self._vpr_stats.invalid} so far)",
                                  throttle_duration_sec=float(self._vpr_settings["invalid_log_period"]))

    def _on_image(self, message: Image) -> None:
        try:
            ros_images.check_image(message, self._vpr_settings["max_image_pixels"])
        except InputError as error:
            self._invalid(error)
            return
        self._slot.put(message)

    def _on_compressed(self, message: CompressedImage) -> None:
        try:
            ros_images.check_compressed(message, self._vpr_settings["max_image_pixels"])
        except InputError as error:
            self._invalid(error)
            return
        self._slot.put(message)

    def _work(self) -> None:
        while not self._stop.is_set():
            message = self._slot.take(timeout=0.2)
            if message is None:
                continue
            try:
                self._process(message)
            except InputError as error:
                self._invalid(error)
            except Exception as error:  # noqa: BLE001 - keep serving the next frame
                self.get_logger().error(f"frame failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
                self.get_logger().debug(traceback.format_exc())

    def _process(self, message: Any) -> None:
        from vl2spike_ros.core.place_map import Place

        rgb = ros_images.message_to_rgb(message, self._vpr_settings["max_image_pixels"])
        stamp = message.header.stamp
        with self._lock:
            localizer = self._localizer
            if localizer is None:
                return
            place = None
            if localizer.mode == "map":
                seconds = stamp.sec + stamp.nanosec * 1e-9
                topic = self._image_sub.topic_name if self._image_sub is not None else "image"
                place = Place(place_id=len(localizer.place_map),
                              source=f"{topic}@{stamp.sec}.{stamp.nanosec:09d}",
                              frame=localizer.query_count, stamp=seconds)
            match = localizer.localize(rgb, place=place)
            if match.added_place_id is not None and len(self._thumbnails) < MAX_THUMBNAILS:
                self._thumbnails[match.added_place_id] = _thumbnail(rgb)
            body = match_json(match, stamp.sec, stamp.nanosec, message.header.frame_id,
                              localizer.mode, localizer.place_map)
            best = localizer.place_map.places[match.best_place_id] if match.place_ids else None
            has_poses = localizer.place_map.has_poses
        self._vpr_stats.record_match(match)
        publishers = self._vpr_pubs
        if not publishers:
            return
        publishers["match"].publish(String(data=json.dumps(body)))
        if match.accepted and has_poses and best is not None and best.pose is not None:
            publishers["pose"].publish(self._pose_message(message.header.stamp, best.pose))
        if self._vpr_settings["publish_match_image"] and publishers["match_image"].get_subscription_count() > 0:
            publishers["match_image"].publish(self._match_image(rgb, match, best, message.header))

    def _pose_message(self, stamp: Any, pose: list[float]) -> PoseWithCovarianceStamped:
        message = PoseWithCovarianceStamped()
        message.header.stamp = stamp
        message.header.frame_id = self._vpr_settings["map_frame"]
        p = message.pose.pose
        p.position.x, p.position.y, p.position.z = pose[0], pose[1], pose[2]
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = pose[3], pose[4], pose[5], pose[6]
        variance = float(self._vpr_settings["pose_variance"])
        covariance = [0.0] * 36
        for axis in range(6):
            covariance[axis * 7] = variance
        message.pose.covariance = covariance
        return message

    def _reference_image(self, place) -> np.ndarray | None:
        if place is None:
            return None
        if place.place_id in self._thumbnails:
            return self._thumbnails[place.place_id]
        candidates = [Path(place.source)] if Path(place.source).is_absolute() else []
        if self._vpr_settings["reference_images"] and place.source:
            candidates.append(Path(self._vpr_settings["reference_images"]) / place.source)
        for path in candidates:
            if path.is_file():
                try:
                    from vl2spike_ros.core.images import read_image

                    return read_image(path)
                except InputError:
                    return None
        return None

    def _match_image(self, rgb: np.ndarray, match, best, header) -> Image:
        if match.place_ids:
            caption = (f"query {match.query_index} -> place {match.place_ids[0]} "
                       f"score {match.scores[0]:.3f} {'accepted' if match.accepted else 'rejected'}")
        else:
            caption = f"query {match.query_index}: empty map"
        composite = side_by_side(rgb, self._reference_image(best), caption)
        return ros_images.rgb_to_image(composite, header)

    # --- services ---------------------------------------------------------------------------------
    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        path = self._vpr_settings["map_path"]
        if not path:
            response.success, response.message = False, "map_path is empty: set it to save the map"
            return response
        with self._lock:
            if self._localizer is None:
                response.success, response.message = False, "not configured: no map to save"
                return response
            try:
                self._localizer.place_map.save(path)
                count = len(self._localizer.place_map)
            except (InputError, OSError) as error:
                response.success, response.message = False, f"cannot save the map: {error}"
                self.get_logger().error(response.message)
                return response
        response.success, response.message = True, f"saved {count} places to {path}"
        self.get_logger().info(response.message)
        return response

    def _on_set_mapping(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        mode = "map" if request.data else "localize"
        result = self.set_parameters([Parameter("mode", Parameter.Type.STRING, mode)])[0]
        response.success = result.successful
        response.message = f"mode {mode}" if result.successful else result.reason
        return response

    # --- diagnostics ----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        stats = self._vpr_stats.snapshot()
        with self._lock:
            localizer = self._localizer
            extra = {"state": self._vpr_state, "mode": localizer.mode if localizer else self._vpr_settings["mode"],
                     "map_size": len(localizer.place_map) if localizer else 0,
                     "model": localizer.encoder.fingerprint[:12] if localizer else "n/a",
                     "transport": self._vpr_settings["transport"], "image_conversion": ros_images.BACKEND}
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: place recognition"
        status.hardware_id = "vl2spike_ros"
        new_invalid = stats["invalid_frames"] - self._last_invalid_reported
        self._last_invalid_reported = stats["invalid_frames"]
        if self._vpr_state != "active":
            status.level, status.message = DiagnosticStatus.WARN, f"{self._vpr_state}: not processing images"
        elif new_invalid:
            status.level = DiagnosticStatus.WARN
            status.message = f"{new_invalid} invalid frame(s) dropped: {stats['last_invalid_reason']}"
        else:
            status.level, status.message = DiagnosticStatus.OK, f"{stats['rate_hz']:.1f} Hz"
        status.values = [KeyValue(key=k, value=v) for k, v in
                         diagnostic_values(stats, self._slot.received, self._slot.dropped, extra)]
        message = DiagnosticArray()
        message.header.stamp = self.get_clock().now().to_msg()
        message.status = [status]
        self._diagnostics.publish(message)


def main(args: list[str] | None = None) -> int:
    """Console script `vpr_node`: `vpr_node --ros-args -p map_path:=... -r image:=/camera/image_raw`."""
    argv = sys.argv if args is None else args
    if any(flag in argv[1:] for flag in ("-h", "--help")) and "--ros-args" not in argv:
        print(__doc__)
        print("usage: vpr_node [--ros-args -p NAME:=VALUE ... -r image:=TOPIC]\n\nparameters:")
        for spec in PARAMETERS:
            flags = " (read-only)" if spec.read_only else ""
            print(f"  {spec.name} [{spec.default!r}]{flags}: {spec.description}")
        return 0
    rclpy.init(args=argv)
    node = None
    code = 0
    try:
        try:
            node = VprNode()
        except Exception as error:  # noqa: BLE001 - invalid parameter overrides, mainly
            print(f"vpr_node: error: {error}", file=sys.stderr)
            return 2
        if node.get_parameter("autostart").value:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("autostart: configure failed (see above); exiting")
                return 1
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().fatal("autostart: activate failed; exiting")
                return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
    finally:
        if node is not None:
            node._release_active()
            node._release_configured()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
