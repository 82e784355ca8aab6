"""The integer-spike student run on binary spike trains (core/spike_train.py, `--backend spikes`):
its integrate-and-fire neuron reproduces the integer neuron's rounding, ties included; it fires the
integer path's spikes exactly and gives its descriptors, on random inputs and on Nordland frames;
its synaptic counts are the energy table's."""
import copy

import numpy as np
import pytest
import torch

from conftest import NORDLAND, require_dir
from helpers import photo, tiny_student, write_tiny_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.energy import estimate_energy
from vl2spike_ros.core.spike_train import SpikeTrainStudent, if_spike_train
from vl2spike_ros.errors import InputError
from vl2spike_ros.model.neurons import is_neuron, round_clamp


def integer_levels(model, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The integer path: the student's own forward; its descriptors and every neuron's spike levels."""
    names = {id(module): name for name, module in model.named_modules()}
    levels = {}
    handles = [module.register_forward_hook(lambda m, i, o: levels.__setitem__(names[id(m)], o[0].detach()) and None)
               for module in model.modules() if is_neuron(module)]
    try:
        with torch.no_grad():
            descriptors = model.eval()(images).descriptor
    finally:
        for handle in handles:
            handle.remove()
    return descriptors, levels


def assert_same_as_integer_path(model, images: torch.Tensor, atol: float) -> None:
    result = SpikeTrainStudent(model)(images)
    descriptors, levels = integer_levels(model, images)
    assert set(result.levels) == set(levels)   # every neuron of the student, the readout aside
    for name, expected in levels.items():
        assert torch.equal(result.levels[name], expected.to(result.levels[name].dtype)), name
    assert sum(int(level.sum()) for level in levels.values()) > 0
    np.testing.assert_allclose(result.descriptors.numpy(), descriptors.double().numpy(), atol=atol)
    # Every spiking layer's binary spikes x fan-out is the energy table's synaptic count of it.
    report = estimate_energy(model, images)
    sop_layers = {layer.name: layer for layer in report.layers if layer.kind == "sop"}
    assert set(result.counts) == set(sop_layers)
    frames = images.shape[0]
    for name, layer in sop_layers.items():
        count = result.counts[name]
        assert count.synaptic_operations == pytest.approx(layer.operations * frames, rel=1e-9), name
        assert count.accumulates <= count.synaptic_operations
        if "matmul" in name or name.endswith(("qkv_conv_bn.0", "proj_conv_bn.0", "fc1.0", "fc2.0")):
            assert count.accumulates == count.synaptic_operations, name   # 1x1: every tap lands


def test_integrate_and_fire_neuron_rounds_as_torch_round_ties_to_even():
    threshold, steps = 0.5, 4
    quarters = torch.arange(-8, 26, dtype=torch.float64) / 4   # x/θ = -2 .. 6.25: every half is a tie
    rng = np.random.default_rng(0)
    currents = torch.cat([quarters, torch.from_numpy(rng.uniform(-1.0, 5.0, 5000))]) * threshold
    train = if_spike_train(currents, threshold, steps)
    assert train.shape == (steps, len(currents)) and train.dtype == torch.bool
    expected = round_clamp(currents / threshold, steps)
    assert torch.equal(train.sum(0).double(), expected)
    # The ties are there and round to even, not up: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4.
    ties = torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64)
    assert if_spike_train(ties * threshold, threshold, steps).sum(0).tolist() == [0, 2, 2, 4]
    # A level k is k spikes in the first k virtual steps (the membrane only falls).
    levels = train.sum(0)
    assert torch.equal(train, torch.arange(steps).view(-1, 1) < levels.view(1, -1))


@pytest.mark.parametrize("readout", ["membrane", "spikes"])
def test_spike_trains_equal_the_integer_path_on_random_inputs(readout):
    model = tiny_student(neuron="integer", spike_levels=4, timesteps=1, depths=2, readout=readout)
    torch.manual_seed(1)
    images = torch.rand(6, 3, 32, 64)
    with torch.no_grad():   # BatchNorm statistics of the inputs, random scales and shifts: every level fires
        for _ in range(5):
            model.train()(images)
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.normal_(1.0, 0.5)
                module.bias.uniform_(-0.5, 1.5)
    model.eval()
    _, levels = integer_levels(model, images)
    assert all(level.max() >= 1 for level in levels.values())
    assert all(any(int((level == k).sum()) > 0 for level in levels.values()) for k in range(5))
    assert_same_as_integer_path(model, images, atol=1e-6)


def test_spike_trains_equal_the_integer_path_on_nordland_frames():
    """The shipped student on real Nordland64 frames, through the registered backend too."""
    import cv2

    data = require_dir(NORDLAND)
    names = sorted((data / "winter").iterdir())[::200][:8]
    images = [cv2.cvtColor(cv2.imread(str(name)), cv2.COLOR_BGR2RGB) for name in names]
    encoder = DescriptorEncoder(backend="spikes")
    assert encoder.config.neuron == "integer" and encoder.config.timesteps == 1
    assert_same_as_integer_path(encoder.model, encoder.preprocess(images), atol=1e-6)
    torch_descriptors = DescriptorEncoder(backend="torch").encode(images)
    np.testing.assert_allclose(encoder.encode(images), torch_descriptors, atol=1e-6)
    assert encoder.backend.last.levels  # the backend keeps the last batch's spikes and counts


def test_backend_spikes_builds_a_map_and_refuses_what_it_cannot_run(tmp_path):
    checkpoint = write_tiny_checkpoint(tmp_path / "integer.safetensors", neuron="integer", spike_levels=4,
                                       timesteps=1)
    frames = [photo(name, (64, 32)) for name in ("astronaut", "coffee", "chelsea")]
    spikes = DescriptorEncoder(checkpoint, backend="spikes").encode(frames)
    np.testing.assert_allclose(spikes, DescriptorEncoder(checkpoint, backend="torch").encode(frames), atol=1e-6)
    lif = write_tiny_checkpoint(tmp_path / "lif.safetensors")
    with pytest.raises(InputError, match="integer-spike students at one timestep.*neuron lif, timesteps 2"):
        DescriptorEncoder(lif, backend="spikes")
    with pytest.raises(InputError, match="integer-spike students"):
        SpikeTrainStudent(copy.deepcopy(tiny_student(neuron="integer", spike_levels=4, timesteps=2)))
