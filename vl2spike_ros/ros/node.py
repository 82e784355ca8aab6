"""`vpr_node`: the ROS 2 place-recognition node, a thin rclpy lifecycle shell over `Localizer`.

Interface (design §3; schema and examples in docs/ros_interface.md):
- subscribes `image` (sensor_msgs/Image) or `image/compressed` (sensor_msgs/CompressedImage), per
  parameter `transport`, with sensor-data QoS; the callback only checks the message and puts it in a
  one-frame slot (newest frame wins, a replaced frame counts as a drop); a worker thread runs
  inference, so no backlog can form;
- publishes `~/match` (vl2spike_ros/PlaceMatch; std_msgs/String JSON where the package's messages
  are not built, see match_message.py), `~/match_json` (the same as JSON, deprecated, only while
  subscribed), `~/pose` (PoseWithCovarianceStamped, when the map has poses and the match is
  accepted), `~/match_image` (query beside its best match, only while subscribed) and `/diagnostics`
  (DiagnosticArray);
- services `~/save_map` (vl2spike_ros/SaveMap, or std_srvs/Trigger with the JSON), `~/set_mapping`
  (std_srvs/SetBool) and `~/reset_sequence` (std_srvs/Trigger: forget recent frames, number queries
  from 0);
- lifecycle: configure loads and checks model and map, activate subscribes and starts the worker,
  deactivate and cleanup release, shutdown ends in `finalized`; parameter `autostart` (default
  true) configures and activates at start. Ctrl-C (SIGINT) and SIGTERM shut down through the
  lifecycle shutdown transition; more of them during shutdown (launch forwards Ctrl-C again) change
  nothing, up to the process's exit.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterNotDeclaredException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vl2spike_ros.core.localizer import Localizer, MapUpdateError
from vl2spike_ros.errors import InputError
from vl2spike_ros.ros.image_messages import rgb_to_image
from vl2spike_ros.sources import image_messages
from vl2spike_ros.ros.frame_slot import FrameSlot
from vl2spike_ros.ros.match_image import ReferenceImages, match_picture
from vl2spike_ros.ros.match_message import (MATCH_TYPE, SAVE_MAP_TYPE, TYPED_UNAVAILABLE, match_fields,
                                            match_message)
from vl2spike_ros.ros.node_diagnostics import NodeStats, StatusReporter, diagnostic_values
from vl2spike_ros.ros.parameters import PARAMETERS, PARAMETER_SPECS, check_parameter

NODE_NAME = "vpr_node"
SPIN_PERIOD_S = 0.1  # how soon the main loop notices Ctrl-C


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


class VprNode(LifecycleNode):
    """Lifecycle node `vpr_node`; see the module docstring for its interface."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._lock = threading.Lock()  # guards the localizer (worker vs. services and parameters)
        self._localizer: Localizer | None = None
        self._slot = FrameSlot()
        self._vpr_stats = NodeStats()
        self._status = StatusReporter()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._image_sub = None
        self._image_topic = ""
        self._vpr_pubs: dict[str, Any] = {}
        self._vpr_srvs: list[Any] = []
        self._vpr_state = "unconfigured"
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for spec in PARAMETERS:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        self._vpr_settings = {spec.name: self.get_parameter(spec.name).value for spec in PARAMETERS}
        self._references = ReferenceImages(self._vpr_settings["reference_images"])
        # /diagnostics also reports an unconfigured or inactive node, so it is not a lifecycle publisher.
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self._vpr_settings["diagnostics_period"],
                                                    self._publish_diagnostics)
        self.get_logger().info(f"{NODE_NAME} from {Path(__file__).resolve().parent} "
                               f"(image conversion: {image_messages.BACKEND})")
        if TYPED_UNAVAILABLE:
            self.get_logger().warning(TYPED_UNAVAILABLE)

    @property
    def state(self) -> str:
        return self._vpr_state

    # --- parameters ---------------------------------------------------------------------------
    def set_parameters_atomically(self, parameter_list: list[Parameter]) -> SetParametersResult:
        # The parameter services come here. rclpy's own refusal of an undeclared name lists them from
        # an exhausted generator ("undeclared parameter(s): []"); this one names them.
        undeclared = [parameter.name for parameter in parameter_list if not self.has_parameter(parameter.name)]
        if undeclared:
            raise ParameterNotDeclaredException(undeclared)
        return super().set_parameters_atomically(parameter_list)

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
            localizer = Localizer.from_paths(
                settings["model_path"] or None, settings["map_path"] or None, device=settings["device"],
                backend=settings["backend"], report=self.get_logger().warning, index_kind=settings["index"], num_threads=settings["num_threads"],
                top_k=settings["top_k"],
                sequence_length=settings["sequence_length"], match_threshold=settings["match_threshold"],
                novelty_threshold=settings["novelty_threshold"], mode=settings["mode"], centre=settings["centre"])
        except InputError as error:
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001 - a broken file must not kill the node
            self.get_logger().error(f"configure failed: {type(error).__name__}: {error}")
            self.get_logger().debug(traceback.format_exc())
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            self._localizer = localizer
            self._references.clear()
        self._vpr_pubs = {
            "match": self.create_lifecycle_publisher(MATCH_TYPE, "~/match", 10),
            "pose": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10),
            "match_image": self.create_lifecycle_publisher(Image, "~/match_image", 1),
        }
        if MATCH_TYPE is not String:  # the JSON of earlier releases, for subscribers not yet moved
            self._vpr_pubs["match_json"] = self.create_lifecycle_publisher(String, "~/match_json", 10)
        self._vpr_srvs = [
            self.create_service(SAVE_MAP_TYPE, "~/save_map", self._on_save_map),
            self.create_service(SetBool, "~/set_mapping", self._on_set_mapping),
            self.create_service(Trigger, "~/reset_sequence", self._on_reset_sequence),
        ]
        self.get_logger().info(
            f"configured: model {localizer.encoder.fingerprint[:12]} (dim {localizer.encoder.dim}, "
            f"{settings['device']}), map {settings['map_path'] or '(new)'} with {localizer.map_size} "
            f"places ({localizer.place_map.index_kind}), mode {localizer.mode}")
        self._vpr_state = "inactive"
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # activates the lifecycle publishers first
        if self._vpr_settings["transport"] == "compressed":
            subscription = self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed, qos_profile_sensor_data)
        else:
            subscription = self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data)
        self._image_sub, self._image_topic = subscription, subscription.topic_name
        self._slot.reopen()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="vpr_inference", daemon=True)
        self._worker.start()
        self._vpr_state = "active"
        self.get_logger().info(f"active: listening on {self._image_topic} ({self._vpr_settings['transport']})")
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._vpr_state = "inactive"
        self.get_logger().info("inactive: unsubscribed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_configured()
        self._vpr_state = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._vpr_state = "finalized"
        self.get_logger().info("finalized")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_active()
        self._release_configured()
        self._vpr_state = "unconfigured"
        return super().on_error(state)

    def _release_active(self) -> None:
        """Unsubscribes, then stops the worker and waits for it: no frame is in flight afterwards,
        and the next activate cannot start a second worker beside a lingering one."""
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
            self._image_sub = None
        self._stop.set()
        self._slot.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _release_configured(self) -> None:
        for publisher in self._vpr_pubs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._vpr_pubs = {}
        for service in self._vpr_srvs:
            self.destroy_service(service)
        self._vpr_srvs = []
        with self._lock:
            self._localizer = None
            self._references.clear()

    # --- input ----------------------------------------------------------------------------------
    def _invalid(self, error: InputError) -> None:
        self._vpr_stats.record_invalid(str(error))
        self.get_logger().warning(f"dropped an invalid frame: {error} ({self._vpr_stats.invalid} so far)",
                                  throttle_duration_sec=float(self._vpr_settings["invalid_log_period"]))

    def _on_image(self, message: Image) -> None:
        try:
            image_messages.check_image(message, self._vpr_settings["max_image_pixels"])
        except InputError as error:
            self._invalid(error)
            return
        self._slot.put(message)

    def _on_compressed(self, message: CompressedImage) -> None:
        try:
            image_messages.check_compressed(message, self._vpr_settings["max_image_pixels"])
        except InputError as error:
            self._invalid(error)
            return
        self._slot.put(message)

    def _work(self) -> None:
        while not self._stop.is_set():
            taken = self._slot.take(timeout=1.0)
            if taken is None:
                continue
            message, frames_skipped = taken
            try:
                self._process(message, frames_skipped)
            except InputError as error:  # found only on decoding, e.g. a cut JPEG
                self._invalid(error)
            except MapUpdateError as error:
                self._vpr_stats.record_map_error(str(error))
                self.get_logger().error(f"map error: {error} ({self._vpr_stats.map_errors} so far)",
                                        throttle_duration_sec=5.0)
            except Exception as error:  # noqa: BLE001 - keep serving the next frame
                self.get_logger().error(f"frame failed: {type(error).__name__}: {error}",
                                        throttle_duration_sec=5.0)
                self.get_logger().debug(traceback.format_exc())
            finally:
                self._slot.finish()

    def _process(self, message: Any, frames_skipped: int) -> None:
        decoding = time.perf_counter()
        rgb = image_messages.message_to_rgb(message, self._vpr_settings["max_image_pixels"])
        stamp = message.header.stamp
        started = time.perf_counter()  # latency_ms counts resizing, encoding and matching, as Localizer.localize
        # The localizer stays while the worker runs (cleanup and configure wait for deactivate, which
        # joins the worker), so encoding, the bulk of a frame, needs no lock; matching changes the
        # sequence and the map, which services and parameters also touch.
        localizer = self._localizer
        if localizer is None:
            return
        frame = localizer.encoder.frame(rgb)
        resized = time.perf_counter()
        descriptor = localizer.encoder.encode_frames(frame[None])[0]
        encoded = time.perf_counter()
        with self._lock:
            match = localizer.match_descriptor(
                descriptor, source=f"{self._image_topic}@{stamp.sec}.{stamp.nanosec:09d}",
                stamp=stamp.sec + stamp.nanosec * 1e-9, frames_skipped=frames_skipped, started=started)
            if match.added_place_id is not None:
                self._references.remember(match.added_place_id, rgb)
            messaging = time.perf_counter()
            reply = match_message(match, message.header, localizer.mode, localizer.map_size,
                                  localizer.sequence_frames)
        if match.index_note:
            self.get_logger().info(match.index_note)
        picture = (match_picture(rgb, match, self._references)
                   if self._vpr_settings["publish_match_image"]
                   and self._vpr_pubs["match_image"].get_subscription_count() > 0 else None)
        publishing = time.perf_counter()
        self._vpr_pubs["match"].publish(reply)
        json_publisher = self._vpr_pubs.get("match_json")
        if json_publisher is not None and json_publisher.get_subscription_count() > 0:
            json_publisher.publish(String(data=json.dumps(match_fields(reply))))
        if match.pose is not None:
            self._vpr_pubs["pose"].publish(self._pose_message(stamp, match.pose))
        if picture is not None:
            self._vpr_pubs["match_image"].publish(rgb_to_image(picture, message.header))
        ends = {"decode": started, "resize": resized, "encode": encoded, "message": publishing,
                "publish": time.perf_counter()}
        begins = {"decode": decoding, "resize": started, "encode": resized, "message": messaging,
                  "publish": publishing}
        self._vpr_stats.record_match(match, {**{stage: (ends[stage] - begins[stage]) * 1000.0 for stage in ends},
                                             **match.stage_ms})

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

    # --- services ---------------------------------------------------------------------------------
    def _on_save_map(self, request: Any, response: Any) -> Any:
        """SaveMap (success, message, path, place_count) or, without the package's messages, Trigger."""
        path = self._vpr_settings["map_path"]
        if not path:
            response.success, response.message = False, "map_path is empty: set it to save the map"
            return response
        with self._lock:
            if self._localizer is None:
                response.success, response.message = False, "not configured: no map to save"
                return response
            try:
                count = self._localizer.save_map(path)
            except (InputError, OSError) as error:
                response.success, response.message = False, f"cannot save the map: {error}"
                self.get_logger().error(response.message)
                return response
        response.success, response.message = True, f"saved {count} places to {path}"
        if hasattr(response, "place_count"):
            response.path, response.place_count = path, count
        self.get_logger().info(response.message)
        return response

    def _on_set_mapping(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        mode = "map" if request.data else "localize"
        result = self.set_parameters([Parameter("mode", Parameter.Type.STRING, mode)])[0]
        response.success = result.successful
        response.message = f"mode {mode}" if result.successful else result.reason
        return response

    def _on_reset_sequence(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._lock:
            if self._localizer is None:
                response.success, response.message = False, "not configured"
                return response
            self._localizer.restart()
        response.success, response.message = True, "recent frames forgotten; next query is number 0"
        self.get_logger().info(response.message)
        return response

    # --- diagnostics ----------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        stats = self._vpr_stats.snapshot()
        with self._lock:
            localizer = self._localizer
            extra = {"state": self._vpr_state, "mode": localizer.mode if localizer else self._vpr_settings["mode"],
                     "map_size": localizer.map_size if localizer else 0,
                     "model": localizer.encoder.fingerprint[:12] if localizer else "n/a",
                     "transport": self._vpr_settings["transport"], "image_conversion": image_messages.BACKEND}
        level, text = self._status.status(self._vpr_state, stats)
        status = DiagnosticStatus(name=f"{self.get_fully_qualified_name()}: place recognition",
                                  hardware_id="vl2spike_ros", level=getattr(DiagnosticStatus, level),
                                  message=text)
        status.values = [KeyValue(key=k, value=v) for k, v in
                         diagnostic_values(stats, self._slot.received, self._slot.dropped, self._slot.pending, extra)]
        message = DiagnosticArray()
        message.header.stamp = self.get_clock().now().to_msg()
        message.status = [status]
        self._diagnostics.publish(message)


def _print_help() -> None:
    print(__doc__)
    print("usage: vpr_node [--ros-args -p NAME:=VALUE ... -r image:=TOPIC]\n\nparameters:")
    for spec in PARAMETERS:
        flags = " (read-only)" if spec.read_only else ""
        print(f"  {spec.name} [{spec.default!r}]{flags}: {spec.description}")


def main(args: list[str] | None = None) -> int:
    """Console script `vpr_node`: `vpr_node --ros-args -p map_path:=... -r image:=/camera/image_raw`.

    Exit codes: 0 after a clean shutdown, 1 when autostart cannot configure or activate, 2 for
    invalid parameter overrides."""
    argv = sys.argv if args is None else args
    if any(flag in argv[1:] for flag in ("-h", "--help")) and "--ros-args" not in argv:
        _print_help()
        return 0
    # Our own handlers instead of rclpy's: a signal only asks the main loop to stop, which then takes
    # the lifecycle shutdown transition. A second SIGINT (launch forwards Ctrl-C again) finds the
    # request already made; no KeyboardInterrupt can surface in the middle of cleanup.
    stop_requested = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop_requested.set())
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    node = None
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
        while not stop_requested.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        executor.remove_node(node)
        if node.state != "finalized":
            node.get_logger().info(f"shutting down from {node.state}")
            node.trigger_shutdown()
        return 0 if node.state == "finalized" else 1
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # While the interpreter exits, Python puts the default handlers back, and a late SIGINT would
        # kill the process (exit -2 under launch). An ignored signal stays ignored until the end.
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
