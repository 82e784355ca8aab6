"""Distillation and task losses (design §6): hand-made values, zero where student and target agree,
and gradients that reach the student's first, real-valued layer."""
import math

import pytest
import torch
import torch.nn.functional as F

from vl2spike_ros.model import SpikformerStudent, StudentConfig
from vl2spike_training.losses import (ManifoldAlignment, PrototypeBank, alignment_cosine,
                                      cross_season_info_nce, membrane_consistency,
                                      prototype_text_info_nce, rate_consistency, relation_loss,
                                      step_consistency_kl, temporal_warmup_weight, text_logit_kd)

TINY = StudentConfig(embed_dims=16, num_heads=2, depths=1, timesteps=2, descriptor_dim=8)


@pytest.fixture
def student_output():
    torch.manual_seed(0)
    model = SpikformerStudent(TINY).train()
    output = model(torch.rand(4, 3, 32, 64), return_membrane=True)
    return model, output


def first_layer_gradient(model, loss) -> float:
    model.zero_grad()
    loss.backward()
    return float(model.first_stage.block[0].weight.grad.abs().sum())


def test_cosine_alignment_values():
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(alignment_cosine(teacher, teacher)) == pytest.approx(0.0)
    orthogonal = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert float(alignment_cosine(orthogonal, teacher)) == pytest.approx(1.0)


def test_relation_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(relation_loss(a, a)) == pytest.approx(0.0)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # off-diagonal similarity 1 vs 0, twice, over B^2 = 4
    assert float(relation_loss(same, a)) == pytest.approx(0.5)


def test_alignment_gradient_reaches_first_layer(student_output):
    model, output = student_output
    alignment = ManifoldAlignment(TINY.descriptor_dim, 6)
    teacher = F.normalize(torch.randn(4, 6), dim=-1)
    loss = alignment_cosine(alignment.project(output.descriptor), teacher) + relation_loss(output.descriptor, teacher)
    assert first_layer_gradient(model, loss) > 0


def test_info_nce_hand_value_and_near_positive_mask():
    query = torch.eye(3)
    # logits with temperature 1: diagonal 1, off-diagonal 0 -> CE = log(1 + 2/e) - 0 ... per row
    expected = -math.log(math.e / (math.e + 2))
    value = cross_season_info_nce(query, query, torch.tensor([0, 10, 20]), temperature=1.0)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    # places 0 and 1 are neighbours: masked out of each other's softmax
    masked = cross_season_info_nce(query, query, torch.tensor([0, 1, 20]), temperature=1.0)
    row_masked = -math.log(math.e / (math.e + 1))
    assert float(masked) == pytest.approx((2 * row_masked + expected) / 3, rel=1e-5)


def test_temporal_terms_zero_when_steps_agree():
    same = torch.randn(1, 3, 5).expand(4, 3, 5)
    assert float(step_consistency_kl(same)) == pytest.approx(0.0, abs=1e-7)
    assert float(rate_consistency(same)) == pytest.approx(0.0)
    assert float(membrane_consistency([same, same * 2])) == pytest.approx(0.0)


def test_temporal_hand_values():
    rates = torch.tensor([[[0.0]], [[1.0]]])  # T=2: mean 0.5, each step 0.5 away
    assert float(rate_consistency(rates)) == pytest.approx(0.25)
    logits = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]]])  # p = (.5,.5) and (.75,.25)
    mean = torch.tensor([0.625, 0.375])
    kl = lambda p: float((mean * (mean.log() - p.log())).sum())
    expected = 0.5 * (kl(torch.tensor([0.5, 0.5])) + kl(torch.tensor([0.75, 0.25])))
    assert float(step_consistency_kl(logits)) == pytest.approx(expected, rel=1e-5)


def test_temporal_gradient_reaches_first_layer(student_output):
    model, output = student_output
    logits = torch.einsum("tbd,tcd->tbc", output.step_descriptors, output.step_descriptors) / 0.1
    loss = (step_consistency_kl(logits) + membrane_consistency(output.membrane_potentials)
            + rate_consistency(output.token_rates))
    assert first_layer_gradient(model, loss) > 0


def test_warmup_weight():
    assert temporal_warmup_weight(0.0, 4.0) == 0.0
    assert temporal_warmup_weight(2.0, 4.0) == 0.5
    assert temporal_warmup_weight(9.0, 4.0) == 1.0
    assert temporal_warmup_weight(0.0, 0.0) == 1.0


def test_prototype_info_nce_value_and_ema():
    text = torch.eye(2)
    bank = PrototypeBank(num_classes=2, dim=2, momentum=0.5)
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    classes, prototypes = bank.current(embeddings, torch.tensor([0, 1]))
    assert torch.allclose(prototypes, text)  # first sight: the batch mean itself
    expected = -math.log(math.e / (math.e + 1))
    assert float(prototype_text_info_nce(prototypes, classes, text, 1.0)) == pytest.approx(expected, rel=1e-5)
    # second batch points the other way: the EMA keeps half of the old prototype
    _, mixed = bank.current(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert torch.allclose(mixed[0], F.normalize(torch.tensor([0.5, 0.5]), dim=0))


def test_prototype_gradient_reaches_first_layer(student_output):
    model, output = student_output
    alignment = ManifoldAlignment(TINY.descriptor_dim, 3)
    text = F.normalize(torch.randn(2, 3), dim=-1)
    bank = PrototypeBank(2, 3, momentum=0.9)
    classes, prototypes = bank.current(alignment.project(output.descriptor), torch.tensor([0, 1, 0, 1]))
    assert first_layer_gradient(model, prototype_text_info_nce(prototypes, classes, text)) > 0


def test_logit_kd_zero_when_agreeing_and_hand_value():
    text = torch.eye(2)
    image = F.normalize(torch.tensor([[1.0, 0.2]]), dim=-1)
    # student temperature 0.01 gives the same scale (100) as the teacher: identical logits
    assert float(text_logit_kd(image, image, text, 2.0, 0.01)) == pytest.approx(0.0, abs=1e-6)
    teacher = torch.tensor([[1.0, 0.0]])
    student = torch.tensor([[0.0, 1.0]])
    p = torch.softmax(torch.tensor([100.0, 0.0]) / 4.0, 0)
    q = torch.softmax(torch.tensor([0.0, 1.0]) / 1.0 / 4.0, 0)
    expected = 16.0 * float((p * (p.log() - q.log())).sum())
    assert float(text_logit_kd(student, teacher, text, 4.0, 1.0)) == pytest.approx(expected, rel=1e-4)


def test_logit_kd_gradient_reaches_first_layer(student_output):
    model, output = student_output
    alignment = ManifoldAlignment(TINY.descriptor_dim, 3)
    text = F.normalize(torch.randn(2, 3), dim=-1)
    teacher = F.normalize(torch.randn(4, 3), dim=-1)
    loss = text_logit_kd(alignment.project(output.descriptor), teacher, text, 2.0, 0.01)
    assert first_layer_gradient(model, loss) > 0


def test_centering_the_head_zeroes_the_mean_projection():
    from vl2spike_training.calibration import center_descriptor_head

    torch.manual_seed(0)
    model = SpikformerStudent(TINY)
    images = torch.rand(8, 3, 32, 64)
    center_descriptor_head(model, images)
    captured = []
    handle = model.projection.register_forward_hook(lambda module, inputs, output: captured.append(output))
    with torch.no_grad():
        model.train()(images)
    handle.remove()
    assert captured[0].mean(dim=(0, 1)).abs().max() < 1e-4
