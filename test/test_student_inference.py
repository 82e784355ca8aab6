"""The student's inference path (no autograd): pooling without indices and spikes without the
surrogate give exactly the autograd path's outputs, and training afterwards is unaffected."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import tiny_student
from vl2spike_ros.model.student import Heaviside, MaxPoolWithoutIndices


@pytest.mark.parametrize("shape", [(2, 3, 8, 16), (1, 4, 7, 9), (3, 1, 5, 5)])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 0), (3, 1, 1)])
def test_pooling_without_indices_equals_max_pool2d(shape, kernel, stride, padding):
    x = torch.randn(shape) - 2.0  # mostly negative, so the -inf padding must never win
    pool = MaxPoolWithoutIndices(nn.MaxPool2d(kernel, stride, padding))
    with torch.no_grad():
        assert torch.equal(pool(x), F.max_pool2d(x, kernel, stride, padding))


def test_inference_outputs_equal_the_autograd_path():
    model = tiny_student(seed=3, pool_grid_rows=2, pool_grid_cols=2)
    images = torch.rand(3, 3, 32, 64)
    with_grad = model(images, return_membrane=True)
    with torch.inference_mode():
        without = model(images, return_membrane=True)
    assert torch.equal(with_grad.descriptor.detach(), without.descriptor)
    assert torch.equal(with_grad.tokens.detach(), without.tokens)
    for a, b in zip(with_grad.membrane_potentials, without.membrane_potentials):
        assert torch.equal(a.detach(), b)
    assert any(isinstance(node.surrogate_function, Heaviside) for node in model.neurons)


def test_training_after_inference_has_the_same_gradients():
    fresh = tiny_student(seed=4).train()
    used = copy.deepcopy(fresh)
    images = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        used(images)  # nodes now fire through Heaviside
    for model in (fresh, used):
        model(images).descriptor.sum().backward()
    assert not any(isinstance(node.surrogate_function, Heaviside) for node in used.neurons)
    for (name, a), (_, b) in zip(fresh.named_parameters(), used.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in used.backbone.parameters())
