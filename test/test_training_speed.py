"""Training speed options: bf16 autocast of the student's forward."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_student
from vl2spike_ros.errors import InputError
from vl2spike_training.config import config_digest, load_config
from vl2spike_training.distillation import student_forward


def test_bf16_autocast_runs_the_student_in_bfloat16_and_returns_float32_close_to_float32():
    images = torch.rand(8, 3, 32, 64, generator=torch.Generator().manual_seed(0))
    results = []
    for autocast in ("off", "bf16"):
        student = tiny_student().train()
        dtypes = []
        handle = student.backbone.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype) and None)
        output = student_forward(student, images, True, autocast)
        handle.remove()
        assert output.descriptor.dtype == torch.float32
        assert all(v.dtype == torch.float32 for v in output.membrane_potentials)
        loss = F.cross_entropy(output.descriptor[:4] @ output.descriptor[4:].T / 0.05, torch.arange(4))
        loss.backward()
        gradient = torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None])
        results.append((dtypes[0], output.descriptor.detach(), loss.item(), gradient))
    (dtype_off, descriptor_off, loss_off, grad_off), (dtype_bf16, descriptor_bf16, loss_bf16, grad_bf16) = results
    assert (dtype_off, dtype_bf16) == (torch.float32, torch.bfloat16)
    assert not torch.equal(descriptor_off, descriptor_bf16)
    assert float((descriptor_off * descriptor_bf16).sum(dim=1).min()) > 0.9
    assert loss_bf16 == pytest.approx(loss_off, rel=0.1)
    assert float(F.cosine_similarity(grad_off, grad_bf16, dim=0)) > 0.8


def test_autocast_setting_is_checked_and_off_leaves_the_config_digest_as_before():
    with pytest.raises(InputError, match="optim.autocast must be one of"):
        load_config(None, ["optim.autocast=fp16"])
    config = load_config(None)
    before = copy.deepcopy(config)  # a config written before these settings existed
    del before["optim"]["autocast"]
    assert config_digest(config) == config_digest(before)
    assert config_digest(load_config(None, ["optim.autocast=bf16"])) != config_digest(config)

