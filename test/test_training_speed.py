"""Training speed options: bf16 autocast of the student's forward, and the teacher cache that lets
runs with the same teacher settings and data share one trained CNN teacher."""
import copy
from pathlib import Path

import cv2
import pytest
import torch
import torch.nn.functional as F

from helpers import tiny_student
from training_fixtures import TINY_STUDENT, write_traverses
from vl2spike_ros.errors import InputError
from vl2spike_training.config import config_digest, load_config
from vl2spike_training.distillation import student_forward
from vl2spike_training.teacher_training import resolve_teacher


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
    # Gradients move more than outputs: a spike that flips near threshold in bf16 moves the
    # surrogate gradients of every layer before it (0.64 on this tiny random student).
    assert float(F.cosine_similarity(grad_off, grad_bf16, dim=0)) > 0.5


def test_autocast_setting_is_checked_and_off_leaves_the_config_digest_as_before():
    with pytest.raises(InputError, match="optim.autocast must be one of"):
        load_config(None, ["optim.autocast=fp16"])
    config = load_config(None)
    before = copy.deepcopy(config)  # a config written before these settings existed
    del before["optim"]["autocast"], before["teacher"]["cache_dir"]
    assert config_digest(config) == config_digest(before)
    assert config_digest(load_config(None, ["teacher.cache_dir=/elsewhere"])) == config_digest(config)
    assert config_digest(load_config(None, ["optim.autocast=bf16"])) != config_digest(config)


def teacher_config(root: Path, run: str, *extra: str) -> dict:
    student = [f"student.{key}={value}" for key, value in TINY_STUDENT.items()]
    return load_config(None, student + [
        f"data.reference={root / 'route' / 'summer'}", f"data.query={root / 'route' / 'winter'}",
        "data.block_size=4", f"run.out_dir={root / run}", "run.progress=false", "teacher.spec=train-cnn",
        "teacher.cnn.widths=[4, 8]", "teacher.cnn.strides=[2, 2]", "teacher.cnn.epochs=1",
        "teacher.cnn.batch_size=8", "teacher.cnn.embed_dim=8", *extra])


def test_a_trained_teacher_is_reused_by_the_next_run_and_retrained_when_what_shapes_it_changes(tmp_path):
    summer, _ = write_traverses(tmp_path / "route", places=24)
    runs = []
    for run, extra in (("first", ()), ("second", ()), ("other_lr", ("teacher.cnn.lr=0.001",)), ("pixels", ())):
        if run == "pixels":  # the same settings, one image changed
            image = next(summer.iterdir())
            cv2.imwrite(str(image), 255 - cv2.imread(str(image)))
        messages = []
        _, info, _ = resolve_teacher(teacher_config(tmp_path, run, *extra), messages.append)
        epochs = [message for message in messages if message.startswith("teacher epoch")]
        runs.append((info, epochs, messages))
    (first, first_epochs, _), (second, second_epochs, second_log), (other, other_epochs, _), (pixels, pixel_epochs, _) = runs
    assert first["cache"] == "trained" and len(first_epochs) == 1
    assert Path(first["path"]).parent == tmp_path / "teacher_cache"  # beside the run directories
    assert second["cache"] == "reused" and not second_epochs and second["path"] == first["path"]
    assert any("reused" in message and first["path"] in message for message in second_log)
    assert other["cache"] == "trained" and len(other_epochs) == 1 and other["path"] != first["path"]
    assert pixels["cache"] == "trained" and len(pixel_epochs) == 1 and pixels["path"] != first["path"]
    assert len(list((tmp_path / "teacher_cache").glob("teacher-*.safetensors"))) == 3
