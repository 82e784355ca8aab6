"""vpr_node in this process, its worker's handling of one frame called directly: what a frame blocks."""
import threading

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from helpers import photo, write_tiny_checkpoint  # noqa: E402
from vl2spike_ros.ros.image_messages import rgb_to_image  # noqa: E402
from vl2spike_ros.ros.node import VprNode  # noqa: E402

WAIT_S = 30.0  # far above the milliseconds each call takes; reached only when a call waits for the frame


@pytest.fixture
def configured_node(tmp_path):
    context = rclpy.Context()
    rclpy.init(context=context)
    node = VprNode(context=context, parameter_overrides=[
        Parameter("model_path", value=str(write_tiny_checkpoint(tmp_path / "student.safetensors"))),
        Parameter("map_path", value=str(tmp_path / "map")), Parameter("mode", value="map")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_services_parameters_and_diagnostics_do_not_wait_for_a_frame_being_encoded(configured_node):
    node = configured_node
    encoder = node._localizer.encoder
    encode_frames = encoder.encode_frames
    finished_during_encoding: list[bool] = []

    def encode_while_others_call(frames):
        calls = [lambda: node.set_parameters([Parameter("top_k", value=3)]),
                 lambda: node._on_save_map(Trigger.Request(), Trigger.Response()),
                 node._publish_diagnostics]
        threads = [threading.Thread(target=call) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        finished_during_encoding.extend(not thread.is_alive() for thread in threads)
        return encode_frames(frames)

    encoder.encode_frames = encode_while_others_call  # the real encoder, called once the others are done
    node._process(rgb_to_image(photo("astronaut", (64, 32))), frames_skipped=0)
    assert finished_during_encoding == [True, True, True]
    assert node._localizer.top_k == 3 and node._localizer.map_size == 1
