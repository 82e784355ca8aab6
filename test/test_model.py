import pytest
import torch

from helpers import photo, tiny_student
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig


def batch_of_photos() -> torch.Tensor:
    images = [photo(name, (64, 32)) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    return torch.from_numpy(__import__("numpy").stack(images)).permute(0, 3, 1, 2).float() / 255.0


def test_first_stage_runs_once_and_equals_spikingjellys_own_forward():
    # The reference is spikingjelly's Spikformer itself: its patch_embed forward on the image
    # repeated T times, then its blocks; not the project's re-wiring of the stem. Eval mode makes
    # BatchNorm per-element, so both paths must agree exactly; a few train-mode passes first move
    # the running statistics to where the neurons fire.
    from spikingjelly.activation_based import functional

    model = tiny_student(timesteps=4).train()
    images = batch_of_photos()
    with torch.no_grad():
        for _ in range(30):
            model(images)
        model.eval()
        once = model(images)
        functional.reset_net(model.backbone)
        repeated = model.normalize(images).unsqueeze(0).repeat(model.config.timesteps, 1, 1, 1, 1)
        feature_maps = model.backbone.patch_embed(repeated)
        for block in model.backbone.blocks:
            feature_maps = block(feature_maps)
    reference_tokens = feature_maps.flatten(3).transpose(2, 3)  # [T, B, N, C]
    assert reference_tokens.sum() > 0, "the comparison is only meaningful when neurons fire"
    torch.testing.assert_close(once.tokens, reference_tokens, rtol=0, atol=0)


def test_first_stage_is_called_on_one_timestep_only():
    model = tiny_student(timesteps=4).train()
    seen_leading_dims = []
    model.first_stage.register_forward_hook(lambda _m, inputs, _o: seen_leading_dims.append(inputs[0].shape[0]))
    with torch.no_grad():
        model(batch_of_photos())
    assert seen_leading_dims == [1]


def test_output_shapes_and_normalisation():
    model = tiny_student(timesteps=3).train()
    out = model(batch_of_photos(), return_membrane=True)
    config = model.config
    assert out.descriptor.shape == (4, config.descriptor_dim)
    assert out.step_descriptors.shape == (3, 4, config.descriptor_dim)
    assert out.tokens.shape == (3, 4, config.num_tokens, config.embed_dims)
    assert out.token_rates.shape == (3, 4, config.embed_dims)
    torch.testing.assert_close(out.descriptor.norm(dim=1), torch.ones(4))
    assert len(out.membrane_potentials) == len(model.neurons)
    assert all(v.shape[0] == 3 for v in out.membrane_potentials)
    out.descriptor.sum().backward()
    assert model.first_stage.block[0].weight.grad.abs().sum() > 0  # surrogate gradients reach the pixels' layer


def test_membrane_potentials_only_on_request():
    model = tiny_student().train()
    assert model(batch_of_photos()).membrane_potentials == []


def test_input_shape_is_checked():
    model = tiny_student()
    with pytest.raises(ValueError, match=r"expected \[B, 3, 32, 64\]"):
        model(torch.rand(1, 3, 30, 64))


@pytest.mark.parametrize("field, value", [("patch_size", 8), ("pooling", "max"), ("image_height", 30),
                                          ("timesteps", 0), ("embed_dims", 30)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(InputError, match=field.replace("image_height", "image size")):
        StudentConfig(**{field: value})


def test_config_rejects_unknown_keys():
    with pytest.raises(InputError, match="unknown keys"):
        StudentConfig.from_dict({"embed_dim": 64})


def test_grid_pooling_pools_each_cell_separately():
    model = tiny_student(pool_grid_rows=2, pool_grid_cols=4, pooling="mean").train()
    feature_maps = torch.arange(2 * 1 * 32 * 8 * 16, dtype=torch.float32).reshape(2, 1, 32, 8, 16)
    pooled = model._pool_cells(feature_maps)  # [T, B, 8 cells * 32 channels]
    assert pooled.shape == (2, 1, 8 * 32)
    top_right = feature_maps[:, :, :, 0:4, 12:16].mean(dim=(3, 4))  # row 0, column 3 of the grid
    torch.testing.assert_close(pooled[:, :, 3 * 32:4 * 32], top_right)


def test_pool_grid_must_divide_the_token_grid():
    with pytest.raises(InputError, match="pool grid 3x4"):
        StudentConfig(pool_grid_rows=3, pool_grid_cols=4)
