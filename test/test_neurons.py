"""The student's neuron options (lif, plif, integer, relu twin), the membrane readout, their energy
accounting, their ONNX export, and starting a student from its twin's checkpoint."""
import warnings

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import neuron

from helpers import photo, require_training, tiny_student, write_tiny_checkpoint
from vl2spike_ros.cli import main as vl2spike
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.energy import estimate_energy
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig
from vl2spike_ros.model.neurons import FusedLIFNode, IntegerLIFNeuron, MembraneReadout, ReluNeuron, round_clamp


def photos(size=(64, 32)) -> torch.Tensor:
    images = [photo(name, size) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def fired(model) -> torch.Tensor:
    """Neuron outputs of one training-mode pass (after a few passes move the BN statistics)."""
    outputs = []
    handles = [node.register_forward_hook(lambda m, i, o: outputs.append(o.detach()) and None) for node in model.neurons]
    with torch.no_grad():
        model.train()(photos())
    for handle in handles:
        handle.remove()
    return torch.cat([output.flatten() for output in outputs])


def test_integer_neuron_fires_whole_spikes_up_to_its_levels_with_soft_reset():
    node = IntegerLIFNeuron(levels=3, tau=2.0, v_threshold=1.0)
    currents = torch.tensor([[0.2, 0.7, 1.4, 9.0], [0.2, 0.0, 1.4, 0.0]])  # [T=2, 4 neurons]
    spikes = node(currents)
    # step 1: v = x -> round(clamp(v)) = 0, 1, 1, 3; reset leaves 0.2, -0.3, 0.4, 6.0
    # step 2: v = 0.5 v + x = 0.3, -0.15, 1.6, 3.0 -> 0, 0, 2, 3
    assert spikes.tolist() == [[0, 1, 1, 3], [0, 0, 2, 3]]


def test_round_clamp_passes_gradient_inside_its_range_only():
    values = torch.tensor([-1.0, 0.3, 2.6, 5.0], requires_grad=True)
    round_clamp(values, 4).sum().backward()
    assert values.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("kind, node_type", [("relu", ReluNeuron), ("integer", IntegerLIFNeuron),
                                             ("plif", neuron.ParametricLIFNode), ("lif", FusedLIFNode)])
def test_every_neuron_of_the_backbone_is_the_configured_kind(kind, node_type):
    levels = 4 if kind == "integer" else 1
    model = tiny_student(neuron=kind, spike_levels=levels)
    assert len(model.neurons) == len(tiny_student().neurons)
    assert all(type(node) is node_type for node in model.neurons)


def test_outputs_are_binary_spikes_integers_or_real_as_configured():
    lif, integer, relu = (fired(tiny_student(neuron=kind, spike_levels=levels))
                          for kind, levels in (("lif", 1), ("integer", 4), ("relu", 1)))
    assert set(lif.unique().tolist()) <= {0.0, 1.0}
    assert set(integer.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0} and integer.max() > 1
    assert relu.min() >= 0 and (relu != relu.round()).any()


def test_plif_learns_its_time_constant():
    model = tiny_student(neuron="plif").train()
    model(photos()).descriptor.sum().backward()
    taus = [node.w for node in model.neurons]
    assert all(w.grad is not None for w in taus) and any(w.grad.abs() > 0 for w in taus)


def test_membrane_readout_gives_real_tokens_and_no_synaptic_layer_sees_them():
    model = tiny_student(readout="membrane")
    assert isinstance(model.backbone.blocks[-1].mlp.neuron2, MembraneReadout)
    assert len(model.neurons) == len(tiny_student().neurons) - 1
    with torch.no_grad():
        for _ in range(5):
            model.train()(photos())
        tokens = model.eval()(photos()).tokens
    assert (tokens != tokens.round()).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the energy model warns when a synaptic layer sees non-spikes
        estimate_energy(model, photos())


def test_integer_energy_counts_every_spike_and_the_twin_is_its_own_ann():
    model = tiny_student(neuron="integer", spike_levels=4)
    with torch.no_grad():
        for _ in range(5):
            model.train()(photos())
    seen = []
    fc1 = model.backbone.blocks[0].mlp.fc1
    handle = fc1.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()) and None)
    report = estimate_energy(model, photos())
    handle.remove()
    layer = next(item for item in report.layers if item.name == "backbone.blocks.0.mlp.fc1.0")
    assert layer.input_spikes_per_entry == pytest.approx(float(seen[0].mean()))  # levels, not non-zeros
    assert layer.input_fraction_firing == pytest.approx(float((seen[0] != 0).float().mean()))
    assert layer.input_spikes_per_entry > layer.input_fraction_firing

    twin = estimate_energy(tiny_student(neuron="relu"), photos())
    assert twin.ratio == pytest.approx(1.0) and twin.snn_energy_pj == pytest.approx(twin.ann_energy_pj)


def test_spike_rate_meter_reports_mean_levels_of_integer_neurons():
    require_training()
    from vl2spike_training.evaluation import SpikeRateMeter

    model = tiny_student(neuron="integer", spike_levels=4).eval()
    meter = SpikeRateMeter(model)
    outputs = []
    handles = [node.register_forward_hook(lambda m, i, o: outputs.append(o) and None) for node in model.neurons]
    with torch.no_grad():
        model(photos())
    meter.close()
    for handle in handles:
        handle.remove()
    expected = sum(float(o.sum()) for o in outputs) / sum(o.numel() for o in outputs)
    assert meter.rate == pytest.approx(expected)


def test_config_refuses_levels_without_integer_neurons_and_unknown_kinds():
    with pytest.raises(InputError, match="spike_levels 4 needs neuron 'integer'"):
        StudentConfig(spike_levels=4)
    with pytest.raises(InputError, match="neuron must be one of"):
        StudentConfig(neuron="izhikevich")
    with pytest.raises(InputError, match="readout must be one of"):
        StudentConfig(readout="rates")


def test_a_student_starts_from_its_twin_and_a_twin_of_another_shape_is_refused(tmp_path):
    require_training()
    from vl2spike_training.warm_start import initialise_from_checkpoint

    twin_path = write_tiny_checkpoint(tmp_path / "twin.safetensors", seed=3, neuron="relu")
    student = tiny_student(seed=0, neuron="plif", spike_levels=1)
    line = initialise_from_checkpoint(student, str(twin_path))
    assert "differs in {'neuron': ('relu', 'plif')}" in line
    twin = tiny_student(seed=3, neuron="relu")
    torch.testing.assert_close(student.projection.weight, twin.projection.weight)
    torch.testing.assert_close(student.first_stage.block[0].weight, twin.first_stage.block[0].weight)

    other = write_tiny_checkpoint(tmp_path / "other.safetensors", descriptor_dim=48)
    with pytest.raises(InputError, match=r"another student shape \(descriptor_dim 48 vs 32\)"):
        initialise_from_checkpoint(tiny_student(), str(other))


@pytest.mark.parametrize("overrides", [dict(neuron="integer", spike_levels=3, readout="membrane"),
                                       dict(neuron="relu")])
def test_onnx_export_gives_the_same_descriptors(tmp_path, overrides):
    checkpoint = write_tiny_checkpoint(tmp_path / "student.safetensors", **overrides)
    images = [photo(name, (160, 90)) for name in ("astronaut", "coffee", "chelsea")]
    expected = DescriptorEncoder(checkpoint).encode(images)
    exported = tmp_path / "student.onnx"
    assert vl2spike(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(exported)]) == 0
    onnx_encoder = DescriptorEncoder(checkpoint, backend="onnxruntime", onnx_model=exported)
    assert np.abs(onnx_encoder.encode(images) - expected).max() <= 1e-5


def test_twin_layer_alignment_is_zero_for_the_twin_itself_and_grows_with_disagreement(tmp_path):
    require_training()
    from vl2spike_training.twin_distillation import NeuronTap, layer_alignment, load_twin

    twin_path = write_tiny_checkpoint(tmp_path / "twin.safetensors", seed=1, neuron="relu")
    student = tiny_student(seed=1, neuron="integer", spike_levels=4)
    twin = load_twin(str(twin_path), student)
    student_tap, twin_tap = NeuronTap(student), NeuronTap(twin)
    images = photos()
    with torch.no_grad():
        twin(images)
        twin_maps = twin_tap.take()
        twin(images)
    assert layer_alignment(twin_tap.take(), twin_maps).item() == pytest.approx(0.0, abs=1e-6)
    student.train()(images)
    loss = layer_alignment(student_tap.take(), twin_maps)
    assert 0.0 < loss.item() < 1.0
    loss.backward()
    assert student.first_stage.block[0].weight.grad.abs().sum() > 0


def test_a_spiking_checkpoint_is_refused_as_a_twin(tmp_path):
    require_training()
    from vl2spike_training.twin_distillation import load_twin

    spiking = write_tiny_checkpoint(tmp_path / "spiking.safetensors")
    with pytest.raises(InputError, match="expected an ANN twin"):
        load_twin(str(spiking), tiny_student())
