"""The student's fused LIF neuron against spikingjelly's LIFNode (what Spikformer builds): the same
spikes and membrane potentials, and the same gradients within float tolerance."""
import copy

import pytest
import torch
from spikingjelly.activation_based import functional, neuron, surrogate

from helpers import tiny_student
from vl2spike_ros.model.neurons import FusedLIFNode


def lif_pair(threshold: float) -> tuple[neuron.LIFNode, FusedLIFNode]:
    settings = dict(tau=2.0, decay_input=True, v_threshold=threshold, v_reset=0.0,
                    surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=True, step_mode="m")
    return neuron.LIFNode(**settings), FusedLIFNode(**settings)


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("threshold", [1.0, 0.5])
@pytest.mark.parametrize("store_v_seq", [False, True])
def test_fused_node_fires_charges_and_backpropagates_like_spikingjelly(steps, threshold, store_v_seq):
    generator = torch.Generator().manual_seed(steps)
    currents = torch.randn(steps, 4, 6, 5, generator=generator) * 1.5 + 0.5
    weights = torch.randn(2, steps, 4, 6, 5, generator=generator)
    results = []
    for node in lif_pair(threshold):
        node.store_v_seq = store_v_seq
        x = currents.clone().requires_grad_()
        first = node(x)
        second = node(x * 0.7)  # continues from the state the first call left
        loss = (first * weights[0]).sum() + (second * weights[1]).sum() + 0.1 * node.v.sum()
        if store_v_seq:
            loss = loss + 0.3 * node.v_seq.square().sum()
        loss.backward()
        results.append((first, second, node.v_seq, node.v, x.grad))
        functional.reset_net(node)
    (*reference, reference_grad), (*fused, fused_grad) = results
    assert 0 < float(reference[0].detach().mean()) < 1  # some fire, some do not
    for expected, actual in zip(reference, fused):
        assert (expected is None and actual is None) or torch.equal(expected, actual)
    torch.testing.assert_close(fused_grad, reference_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_fused_student_matches_the_spikingjelly_student_in_spikes_membranes_and_gradients(steps):
    fused = tiny_student(timesteps=steps).train()
    reference = copy.deepcopy(fused)
    for node in reference.neurons:
        node.fused = False
    assert all(type(node) is FusedLIFNode for node in fused.neurons)
    assert {node.v_threshold for node in fused.neurons} == {1.0, 0.5}  # attention's neuron fires at 0.5
    images = torch.rand(6, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for model in (reference, fused):
        spikes = []
        handles = [node.register_forward_hook(lambda m, i, o: spikes.append(o) and None) for node in model.neurons]
        x = images.clone().requires_grad_()
        output = model(x, return_membrane=True)
        loss = (output.descriptor @ output.descriptor.T).exp().sum() + sum(v.square().mean() for v in output.membrane_potentials)
        loss.backward()
        for handle in handles:
            handle.remove()
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results.append((spikes, output, x.grad, grads))
    (ref_spikes, ref_out, ref_grad, ref_weights), (spikes, out, grad, weights) = results
    assert "_FusedLIF" in type(spikes[0].grad_fn).__name__
    assert "_FusedLIF" not in type(ref_spikes[0].grad_fn).__name__
    assert all(torch.equal(a, b) for a, b in zip(ref_spikes, spikes))
    assert any(0 < float(s.detach().mean()) < 1 for s in spikes)
    assert all(torch.equal(a, b) for a, b in zip(ref_out.membrane_potentials, out.membrane_potentials))
    torch.testing.assert_close(out.descriptor, ref_out.descriptor, rtol=0, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert weights.keys() == ref_weights.keys() and len(weights) > 10
    for name in weights:
        torch.testing.assert_close(weights[name], ref_weights[name], rtol=1e-4, atol=1e-6, msg=name)

