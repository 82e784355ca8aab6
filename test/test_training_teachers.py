"""Teachers (HF CLIP, ANN, open_clip's absence) and the teacher feature cache."""
import numpy as np
import pytest
import torch

from vl2spike_ros.errors import InputError
from vl2spike_training.ann_encoder import build_ann_encoder, place_cnn_config, save_ann_encoder
from vl2spike_training.feature_cache import teacher_features
from vl2spike_training.teachers import AnnTeacher, class_text_embeddings, load_teacher

from training_fixtures import write_tiny_clip, write_tiny_siglip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (32, 64, 3), dtype=np.uint8) for _ in range(5)]


def ann_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = build_ann_encoder(place_cnn_config([4, 8], [2, 2], 6, 32, 64, 3, "patch", 8))
    save_ann_encoder(path, model, {"note": "test"})
    return path


def test_hf_clip_embeds_images_and_texts(tiny_clip, images):
    teacher = load_teacher(f"hf-clip:{tiny_clip}")
    embedded = teacher.embed_images(images)
    assert embedded.shape == (5, 8)
    assert torch.allclose(embedded.norm(dim=1), torch.ones(5), atol=1e-5)
    text = class_text_embeddings(teacher, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert text.shape == (2, 8)
    assert torch.allclose(text.norm(dim=1), torch.ones(2), atol=1e-5)


def test_hf_siglip_embeds_images_and_texts(tmp_path, images):
    pytest.importorskip("transformers")
    teacher = load_teacher(f"hf-siglip:{write_tiny_siglip(tmp_path)}")
    embedded = teacher.embed_images(images)
    assert embedded.shape == (5, teacher.embed_dim)
    assert torch.allclose(embedded.norm(dim=1), torch.ones(5), atol=1e-5)
    text = class_text_embeddings(teacher, ["cat", "dog"], ["a photo of a {}."])
    assert text.shape == (2, teacher.embed_dim)
    assert teacher.identity.startswith("hf-siglip:")


def test_hf_directory_without_weights_is_one_clear_error(tiny_clip, tmp_path):
    (tmp_path / "config.json").write_text((tiny_clip / "config.json").read_text())
    with pytest.raises(InputError, match="no weights"):
        load_teacher(f"hf-clip:{tmp_path}")
    with pytest.raises(InputError, match="no config.json"):
        load_teacher(f"hf-clip:{tmp_path / 'missing'}")


def test_hf_model_type_must_match(tiny_clip):
    with pytest.raises(InputError, match="model_type 'clip'"):
        load_teacher(f"hf-siglip:{tiny_clip}")


def test_ann_teacher_has_no_text_and_a_weight_identity(tmp_path, images):
    first = AnnTeacher(ann_checkpoint(tmp_path / "a.safetensors", seed=0))
    second = AnnTeacher(ann_checkpoint(tmp_path / "b.safetensors", seed=1))
    assert first.embed_texts(["x"]) is None
    assert first.embed_images(images).shape == (5, 6)
    assert first.identity != second.identity


def test_open_clip_absent_or_bad_spec_is_a_clear_error():
    with pytest.raises(InputError, match="open-clip"):
        load_teacher("open-clip:ViT-B-32:/nonexistent/model.bin")
    with pytest.raises(InputError, match="unknown kind"):
        load_teacher("foo:/x")


def test_feature_cache_reuses_and_refuses_other_teacher(tmp_path, images):
    first = AnnTeacher(ann_checkpoint(tmp_path / "a.safetensors", seed=0))
    second = AnnTeacher(ann_checkpoint(tmp_path / "b.safetensors", seed=1))
    cache = tmp_path / "cache"
    computed = teacher_features(first, images, cache, "query")
    files = list(cache.iterdir())
    assert len(files) == 1
    assert torch.equal(teacher_features(first, images, cache, "query"), computed)
    # another teacher, keyed lookup: its own file, never the first teacher's
    teacher_features(second, images, cache, "query")
    assert len(list(cache.iterdir())) == 2
    # another teacher pointed at the first teacher's file: refused
    with pytest.raises(InputError, match="another teacher"):
        teacher_features(second, images, files[0], "query")
    # other images against a file: refused
    with pytest.raises(InputError, match="other images"):
        teacher_features(first, images[:4], files[0], "query")
