import json

import pytest
import torch
from safetensors.torch import save_file

from helpers import tiny_student, write_tiny_checkpoint
from vl2spike_ros.core.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig


def test_round_trip_keeps_weights_config_and_fingerprint(tmp_path):
    model = tiny_student(seed=3)
    path = tmp_path / "student.safetensors"
    fingerprint = save_checkpoint(path, model, {"command": "test"})
    loaded, info = load_checkpoint(path)
    assert info.fingerprint == fingerprint
    assert info.config == model.config
    assert info.provenance == {"command": "test"}
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    assert not loaded.training


def test_fingerprint_identifies_weights(tmp_path):
    first = save_checkpoint(tmp_path / "a.safetensors", tiny_student(seed=0))
    again = save_checkpoint(tmp_path / "b.safetensors", tiny_student(seed=0))
    other = save_checkpoint(tmp_path / "c.safetensors", tiny_student(seed=1))
    assert first == again != other


def test_truncated_file_is_refused_with_its_name(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "student.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"checkpoint .*student\.safetensors: unreadable"):
        read_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", json.dumps({"a": 1}).encode()])
def test_foreign_file_is_refused(tmp_path, content):
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match="foreign.safetensors"):
        read_checkpoint(path)


def test_safetensors_of_another_kind_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(InputError, match="format 'pt'; expected a vl2spike-student"):
        read_checkpoint(path)


def test_pickle_file_is_refused_without_being_executed(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(InputError, match="model.pt: unreadable"):
        read_checkpoint(path)


def test_modified_weights_are_detected(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "student.safetensors")
    info, state = read_checkpoint(path)
    name = next(iter(state))
    state[name] = state[name] + 1
    metadata = {"format": "vl2spike-student", "format_version": "1", "config": info.config.to_json(),
                "provenance": "{}", "fingerprint": info.fingerprint}
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(InputError, match="do not match its recorded fingerprint"):
        read_checkpoint(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_checkpoint(tmp_path / "absent.safetensors")


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_tiny_checkpoint(tmp_path / "student.safetensors", seed=0)
    before = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("vl2spike_ros.core.checkpoint.save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, tiny_student(seed=1))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]


def test_checkpoint_from_before_a_new_config_field_still_loads(tmp_path):
    """Config fields added later take their defaults; the fingerprint stays that of the file."""
    from vl2spike_ros.core.checkpoint import fingerprint_of

    model = tiny_student()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    old_config = {key: value for key, value in model.config.to_dict().items()
                  if key not in ("pool_grid_rows", "pool_grid_cols")}
    config_json = json.dumps(old_config, sort_keys=True)
    metadata = {"format": "vl2spike-student", "format_version": "1", "config": config_json,
                "provenance": "{}", "fingerprint": fingerprint_of(config_json, state)}
    path = tmp_path / "old.safetensors"
    save_file(state, str(path), metadata=metadata)
    loaded, info = load_checkpoint(path)
    assert info.fingerprint == metadata["fingerprint"]
    assert info.config.pool_grid_rows == 1


@pytest.mark.parametrize("where", ["folder", "missing parent"])
def test_save_refuses_a_folder_or_a_missing_parent(tmp_path, where):
    out = tmp_path if where == "folder" else tmp_path / "nope" / "student.safetensors"
    with pytest.raises(InputError, match="is a directory" if where == "folder" else "its folder .* does not exist"):
        save_checkpoint(out, tiny_student())
    assert list(tmp_path.iterdir()) == []


def test_config_beyond_limits_is_refused_before_building():
    with pytest.raises(InputError, match="embed_dims must be an integer in \\[1, 4096\\], got 1000000"):
        StudentConfig(embed_dims=1_000_000)
    with pytest.raises(InputError, match="tokens .* expected at most 4096"):
        StudentConfig(image_height=1024, image_width=1024)
    with pytest.raises(InputError, match="weights .* expected at most 200,000,000"):
        StudentConfig(embed_dims=4096, num_heads=4, depths=48)
