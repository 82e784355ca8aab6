"""The integer backend (ONNX Runtime's int8 kernels for the spiking blocks) against the float ONNX
path: same descriptors within a cosine of 0.995 and Recall@1 within half a point on Nordland's
validation blocks and test stretch, with the shipped model. Fails when quantisation drifts."""
import onnx
import pytest

from vl2spike_ros.benchmark.integer_agreement import integer_agreement
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.onnx_quantize import PATCH_EMBEDDING, quantised_nodes

MIN_COSINE = 0.995
MAX_RECALL_POINTS = 0.5


@pytest.fixture(scope="module")
def encoders():
    return (DescriptorEncoder(None, backend="onnxruntime", threads=1),
            DescriptorEncoder(None, backend="onnxruntime-int8", threads=1))


def test_integer_backend_gives_the_float_answers_on_nordland(encoders, nordland):
    agreement = integer_agreement(*encoders, nordland)
    print(agreement)
    assert agreement["cosine_mean"] >= MIN_COSINE
    for split in ("validation", "test"):
        assert abs(agreement[f"recall_at_1_{split}_points"]) <= MAX_RECALL_POINTS, split


def test_the_spiking_blocks_run_in_int8_and_the_stem_and_projection_in_float(encoders):
    integer = encoders[1].backend
    assert integer.name == "onnxruntime-int8"
    model = onnx.load(str(integer.path))
    weights = {initializer.name: initializer for initializer in model.graph.initializer}
    int8_weights = [name for name, tensor in weights.items() if tensor.data_type == onnx.TensorProto.INT8]
    assert int8_weights and not any(name.startswith(PATCH_EMBEDDING) for name in int8_weights)
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    # Per output channel: one scale per filter of each quantised convolution.
    per_channel = [tensor for name, tensor in weights.items() if name.endswith("_scale") and tensor.dims]
    assert per_channel and all(tensor.dims[0] > 1 for tensor in per_channel)
    float_graph = onnx.load(str(encoders[0].backend.path)).graph
    quantise, keep = quantised_nodes(onnx.load(str(encoders[0].backend.path)))
    kept_ops = [node.op_type for node in float_graph.node if node.name in keep]
    # Every MatMul (the attention products, the projection) stays float; every Conv quantised is a block's.
    assert kept_ops.count("MatMul") == sum(node.op_type == "MatMul" for node in float_graph.node)
    assert quantise and all(node.op_type == "Conv" and not node.input[1].startswith(PATCH_EMBEDDING)
                            for node in float_graph.node if node.name in quantise)
