"""Energy per frame (design §5) on a real tiny student and real photographs."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from helpers import photo, require_training, tiny_student
from vl2spike_ros.core.energy import E_AC_PJ, E_MAC_PJ, EnergyReport, ann_energy_of, count_macs, estimate_energy

H, W, C, HEADS, D = 32, 64, 32, 2, 16   # tiny config: 32x64 input, patch 4, 8x16 = 128 tokens
N = (H // 4) * (W // 4)


def photos(names=("astronaut", "coffee")) -> torch.Tensor:
    images = np.stack([photo(name, (W, H)) for name in names])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def hand_flops() -> dict:
    """MACs per timestep per frame, from Cout*Cin*k*k*Hout*Wout and the token counts."""
    s0, s1, s2, s3 = C // 8, C // 4, C // 2, C
    cph = C // HEADS
    return {
        "backbone.patch_embed.stages.0.conv_bn.block.0": s0 * 3 * 9 * H * W,
        "backbone.patch_embed.stages.1.conv_bn.block.0": s1 * s0 * 9 * H * W,
        "backbone.patch_embed.stages.2.conv_bn.block.0": s2 * s1 * 9 * H * W,        # pools after
        "backbone.patch_embed.stages.3.conv_bn.block.0": s3 * s2 * 9 * (H // 2) * (W // 2),
        "backbone.patch_embed.positional_encoding.conv_bn.block.0": C * C * 9 * (H // 4) * (W // 4),
        "backbone.blocks.0.attn.qkv_conv_bn.0": 3 * C * C * N,
        "backbone.blocks.0.attn.matmul_v_kT": C * cph * N,    # per head [Cph,N]@[N,Cph], summed
        "backbone.blocks.0.attn.matmul_vkT_q": C * cph * N,   # per head [Cph,Cph]@[Cph,N], summed
        "backbone.blocks.0.attn.proj_conv_bn.0": C * C * N,
        "backbone.blocks.0.mlp.fc1.0": 4 * C * C * N,
        "backbone.blocks.0.mlp.fc2.0": C * 4 * C * N,
        "projection": C * D,
    }


FIRST = "backbone.patch_embed.stages.0.conv_bn.block.0"
MAC_LAYERS = (FIRST, "projection")


def calibrated(timesteps: int = 2):
    """Tiny student whose BN running statistics were moved onto real images, so neurons fire."""
    model = tiny_student(descriptor_dim=D, timesteps=timesteps).train()
    images = photos()
    with torch.no_grad():
        for _ in range(20):
            model(images)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return calibrated()


def by_name(report: EnergyReport) -> dict:
    return {layer.name: layer for layer in report.layers}


def set_backbone_bn_bias(model, value: float, only_first: bool = False) -> None:
    modules = model.first_stage.modules() if only_first else model.backbone.modules()
    with torch.no_grad():
        for module in modules:
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.bias.fill_(value)


def test_flops_of_every_layer_equal_the_hand_formula(model):
    report = estimate_energy(model, photos())
    layers = by_name(report)
    assert list(layers) == list(hand_flops())          # execution order, nothing missing or extra
    for name, flops in hand_flops().items():
        assert layers[name].flops == flops, name
    assert layers[FIRST].kind == "mac" and layers[FIRST].timesteps == 1   # runs once per frame
    assert layers["projection"].kind == "mac" and layers["projection"].timesteps == 2
    assert all(layer.kind == "sop" and layer.timesteps == 2
               for name, layer in layers.items() if name not in MAC_LAYERS)


def test_low_rates_give_ratio_below_one_and_layers_follow_the_convention(model):
    report = estimate_energy(model, photos())
    sop = [layer for layer in report.layers if layer.kind == "sop"]
    rates = [layer.input_spikes_per_entry for layer in sop]
    assert all(0.0 <= rate < 0.2 for rate in rates) and sum(r > 0 for r in rates) >= 5
    for layer in report.layers:
        if layer.kind == "sop":
            assert layer.operations == pytest.approx(layer.input_spikes_per_entry * 2 * layer.flops)
            assert layer.energy_pj == pytest.approx(E_AC_PJ * layer.operations)
        else:
            assert layer.input_spikes_per_entry == layer.input_fraction_firing == 1.0
            assert layer.operations == layer.flops * layer.timesteps
            assert layer.energy_pj == pytest.approx(E_MAC_PJ * layer.operations)
        assert layer.ann_energy_pj == pytest.approx(E_MAC_PJ * layer.flops)
    # per-layer sums equal the totals
    assert report.snn_energy_pj == pytest.approx(sum(layer.energy_pj for layer in report.layers))
    assert report.ann_energy_pj == pytest.approx(E_MAC_PJ * sum(hand_flops().values()))
    assert report.ratio == pytest.approx(report.snn_energy_pj / report.ann_energy_pj)
    assert report.ratio < 1.0
    assert report.snn_energy_pj > E_MAC_PJ * (hand_flops()[FIRST] + 2 * C * D)  # spikes do cost
    assert report.timesteps == 2 and report.num_frames == 2


def test_silent_network_costs_only_the_mac_layers(model):
    silent = copy.deepcopy(model)
    set_backbone_bn_bias(silent, -1e3, only_first=True)   # first LIF never fires, nor anything after
    report = estimate_energy(silent, photos())
    assert all(layer.input_spikes_per_entry == 0.0 and layer.energy_pj == 0.0
               for layer in report.layers if layer.kind == "sop")
    flops = hand_flops()
    expected = E_MAC_PJ * (flops[FIRST] + 2 * flops["projection"])
    assert report.snn_energy_pj == pytest.approx(expected, rel=1e-12)
    assert report.snn_energy_pj == pytest.approx(
        sum(layer.energy_pj for layer in report.layers if layer.kind == "mac"), rel=1e-12)


@pytest.mark.parametrize("timesteps", [2, 3])
def test_always_firing_network_ratio_equals_the_hand_computation(timesteps):
    saturated = calibrated(timesteps)
    set_backbone_bn_bias(saturated, 1e3)                    # every LIF fires at every step
    report = estimate_energy(saturated, photos())
    layers = by_name(report)
    assert all(layers[name].input_fraction_firing == 1.0 for name in layers)
    flops = hand_flops()
    # Residual inputs carry one spike per branch: the stem's stage and position (2) feed qkv, and
    # the attention's projection adds a third for fc1.
    levels = {"backbone.blocks.0.attn.qkv_conv_bn.0": 2, "backbone.blocks.0.mlp.fc1.0": 3}
    assert all(layers[name].input_spikes_per_entry == levels.get(name, 1) for name in layers)
    sop_total = sum(levels.get(name, 1) * f for name, f in flops.items() if name not in MAC_LAYERS)
    snn = E_MAC_PJ * (flops[FIRST] + timesteps * flops["projection"]) + E_AC_PJ * timesteps * sop_total
    ann = E_MAC_PJ * sum(flops.values())
    assert report.snn_energy_pj == pytest.approx(snn, rel=1e-12)
    assert report.ann_energy_pj == pytest.approx(ann, rel=1e-12)
    assert report.ratio == pytest.approx(snn / ann, rel=1e-12)
    assert report.timesteps == timesteps
    # int8: 8-bit multiply 0.2 pJ and add 0.03 pJ per ANN MAC; the student's SOPs are 8-bit adds.
    sop_count = sum(layer.operations for layer in report.layers if layer.kind == "sop")
    mac_count = sum(layer.operations for layer in report.layers if layer.kind == "mac")
    assert report.ann_int8_energy_pj == pytest.approx(0.23 * sum(flops.values()), rel=1e-12)
    assert report.snn_int8_energy_pj == pytest.approx(0.23 * mac_count + 0.03 * sop_count, rel=1e-12)
    assert report.ratio_int8 == pytest.approx(report.snn_int8_energy_pj / report.ann_int8_energy_pj)


def test_spikes_per_entry_count_levels_and_the_fraction_firing_counts_entries(model):
    captured = {}

    def keep(key, tensor):  # a forward hook must return None, or it replaces the output
        captured.setdefault(key, tensor.clone())

    attn = model.backbone.blocks[0].attn
    handles = [
        model.backbone.patch_embed.stages[1].conv_bn.block[0].register_forward_hook(
            lambda m, i, o: keep("stage1", i[0])),
        attn.qkv_lif.register_forward_hook(lambda m, i, o: keep("qkv", o)),
        model.backbone.blocks[0].mlp.fc1[0].register_forward_hook(
            lambda m, i, o: keep("fc1", i[0])),
    ]
    try:
        with torch.no_grad():
            model(photos())
    finally:
        for handle in handles:
            handle.remove()
    report = estimate_energy(model, photos())
    layers = by_name(report)

    def firing(x):
        return torch.count_nonzero(x).item() / x.numel()

    def per_entry(x):
        return x.sum().item() / x.numel()

    q, k, v = captured["qkv"].split(C, dim=2)
    for name, x in (("backbone.patch_embed.stages.1.conv_bn.block.0", captured["stage1"]),
                    ("backbone.blocks.0.mlp.fc1.0", captured["fc1"]),
                    ("backbone.blocks.0.attn.matmul_v_kT", v), ("backbone.blocks.0.attn.matmul_vkT_q", q)):
        assert layers[name].input_fraction_firing == firing(x), name
        assert layers[name].input_spikes_per_entry == pytest.approx(per_entry(x), rel=1e-12), name
    # Binary LIF spikes: a residual entry of 2 is two spikes (one per branch), so fc1 counts more
    # spikes than entries that fire; off the residual path the two are the same.
    assert captured["fc1"].max() >= 2 and torch.equal(captured["fc1"], captured["fc1"].round())
    assert layers["backbone.blocks.0.mlp.fc1.0"].input_spikes_per_entry > firing(captured["fc1"])
    assert layers["backbone.blocks.0.attn.matmul_v_kT"].input_spikes_per_entry == pytest.approx(firing(v))


def test_attention_products_in_both_orders(model):
    executed = by_name(estimate_energy(model, photos()))
    paper = by_name(estimate_energy(model, photos(), attention_order="qk_first"))
    prefix = "backbone.blocks.0.attn."
    assert executed[prefix + "matmul_v_kT"].flops == executed[prefix + "matmul_vkT_q"].flops == C * (C // HEADS) * N
    assert paper[prefix + "matmul_q_kT"].flops == paper[prefix + "matmul_qkT_v"].flops == N * N * C
    assert paper[prefix + "matmul_q_kT"].input_spikes_per_entry == executed[prefix + "matmul_vkT_q"].input_spikes_per_entry
    assert paper[prefix + "matmul_qkT_v"].input_spikes_per_entry == executed[prefix + "matmul_v_kT"].input_spikes_per_entry
    ann_gap = sum(l.ann_energy_pj for l in paper.values()) - sum(l.ann_energy_pj for l in executed.values())
    assert ann_gap == pytest.approx(E_MAC_PJ * 2 * (N * N * C - C * (C // HEADS) * N))
    with pytest.raises(ValueError):
        estimate_energy(model, photos(), attention_order="softmax")


def test_batch_rates_average_the_frames(model):
    both = estimate_energy(model, photos(("astronaut", "coffee")))
    first = estimate_energy(model, photos(("astronaut",)))
    second = estimate_energy(model, photos(("coffee",)))
    assert both.num_frames == 2
    assert both.snn_energy_pj == pytest.approx((first.snn_energy_pj + second.snn_energy_pj) / 2, rel=1e-9)
    assert first.snn_energy_pj != second.snn_energy_pj


def test_state_is_restored_and_uint8_is_accepted(model):
    student = copy.deepcopy(model).train()
    node = student.neurons[0]
    node.store_v_seq = True
    bn = student.first_stage.block[1]
    running_mean = bn.running_mean.clone()
    images = photos()
    as_uint8 = (images * 255).round().to(torch.uint8)
    report = estimate_energy(student, as_uint8)
    assert student.training and node.store_v_seq is True
    assert torch.equal(bn.running_mean, running_mean)                # eval mode: no BN update
    assert all(getattr(n, "v", 0.0) == 0.0 for n in student.neurons)  # neurons reset
    assert report.snn_energy_pj == pytest.approx(estimate_energy(model, images).snn_energy_pj, rel=1e-6)
    with pytest.raises(ValueError):
        estimate_energy(student, images[0])


def test_report_serialises_and_formats(model):
    report = estimate_energy(model, photos())
    values = json.loads(json.dumps(report.to_dict()))
    assert len(values["layers"]) == len(report.layers)
    assert values["snn_energy_uj"] == pytest.approx(report.snn_energy_pj * 1e-6)
    assert math.isclose(values["ratio"], report.ratio)
    table = report.format_table()
    assert all(layer.name in table for layer in report.layers)
    assert "total" in table and "µJ" in table and "SNN/ANN" in table
    assert "spikes/entry" in table and "firing" in table and "int8" in table
    assert "left out: input normalisation" in table and "GeM pooling" in table
    assert values["ratio_int8"] == pytest.approx(report.ratio_int8) and "GeM pooling" in values["left_out"]


def test_ann_macs_of_conv_and_linear_layers_by_hand():
    # Conv 3->8, 3x3, stride 2 on 16x16 (8x8 out), then Linear 8*8*8 -> 10: per frame
    # 8*8*8 outputs x 27 + 10 x 512; the batch of 3 is divided out; training mode is restored.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(512, 10)).train()
    expected = 8 * 8 * 8 * 27 + 10 * 512
    assert count_macs(model, torch.rand(3, 3, 16, 16)) == expected
    assert model.training
    assert ann_energy_of(model, torch.rand(2, 3, 16, 16)) == {"macs": expected,
                                                              "ann_energy_pj": E_MAC_PJ * expected}


def test_training_energy_term_equals_the_energy_model_layer_by_layer():
    """The differentiable term of distill.energy_weight counts what estimate_energy counts, the
    attention products included."""
    require_training()
    from vl2spike_training.energy_term import EnergyTap

    student = tiny_student(neuron="integer", spike_levels=4)
    images = torch.from_numpy(np.stack([photo(name, (64, 32)) for name in ("astronaut", "coffee", "rocket")]))
    images = images.permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        for _ in range(5):
            student.train()(images)
    report = estimate_energy(student, images)
    tap = EnergyTap(student)
    student.eval()(images)
    assert any("matmul" in layer.name and layer.energy_pj > 0 for layer in report.layers)
    assert tap.ratio().item() == pytest.approx(report.ratio, rel=1e-5)

    student.train()
    ratio = EnergyTap(student)
    student(images)
    ratio.ratio().backward()
    assert student.first_stage.block[0].weight.grad.abs().sum() > 0  # fewer spikes is a direction
