"""Config, data, trainer, resume, export, ablation and the CLI, on tiny models and tiny data."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import NORDLAND, require_dir
from vl2spike_ros.core.checkpoint import load_checkpoint, save_checkpoint
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent, StudentConfig
from vl2spike_training.ablation import run_ablation
from vl2spike_training.cli import main
from vl2spike_training.compare import compare_table
from vl2spike_training.config import load_config
from vl2spike_training.data import (as_float, load_class_folders, load_place_traverses, split_places,
                                    to_student_tensor)
from vl2spike_training.trainer import train_student

from training_fixtures import TINY_STUDENT, write_class_folders, write_tiny_clip, write_traverses


def tiny_overrides(out_dir, **extra):
    items = {f"student.{key}": value for key, value in TINY_STUDENT.items()}
    items.update({"run.out_dir": str(out_dir), "run.progress": False, "optim.epochs": 1,
                  "optim.batch_size": 8, "optim.warmup_epochs": 0})
    items.update(extra)
    return [f"{key}={json.dumps(value) if isinstance(value, list) else value}" for key, value in items.items()]


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(InputError, match="unknown key 'optim.epoch'"):
        load_config(None, ["optim.epoch=3"])
    with pytest.raises(InputError, match="must be a number"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(InputError, match="key=value"):
        load_config(None, ["optim.lr"])
    path = tmp_path / "c.yaml"
    path.write_text("student:\n  patch_size: 5\n")
    with pytest.raises(InputError, match="patch_size"):
        load_config(path)
    assert load_config(None, ["optim.epochs=7"])["optim"]["epochs"] == 7


def test_class_folders_need_two_classes_and_images(tmp_path):
    config = StudentConfig(image_height=32, image_width=32)
    write_class_folders(tmp_path / "one", classes=("cat",))
    with pytest.raises(InputError, match="expected at least 2"):
        load_class_folders(tmp_path / "one", config)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        load_class_folders(tmp_path / "empty", config)


def test_place_split_keeps_neighbours_apart():
    split = split_places(1892, 100, 4, 2)
    assert len(set(split.train) & set(split.heldout)) == 0
    distance = np.abs(split.train[:, None] - split.heldout[None, :]).min()
    assert distance > 2
    assert set(split.heldout) == set(range(300, 400)) | set(range(700, 800)) | set(range(1100, 1200)) | set(range(1500, 1600))


def test_traverses_pair_by_frame_number_in_route_order(tmp_path):
    """Unpadded names spelt differently in the two traverses: row i of both is one frame number."""
    import cv2

    rng = np.random.default_rng(0)
    summer = {number: rng.integers(0, 255, (32, 64, 3), dtype=np.uint8) for number in (1, 2, 10, 11)}
    winter = {number: image // 2 for number, image in summer.items()}  # the same places, darker
    for folder, names in (("summer", {1: "frame1", 2: "frame2", 10: "frame10"}),
                          ("winter", {2: "img_2", 10: "img_10", 11: "img_11"})):
        (tmp_path / folder).mkdir()
        for number, name in names.items():
            image = (summer if folder == "summer" else winter)[number]
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    traverses = load_place_traverses(tmp_path / "summer", tmp_path / "winter", StudentConfig(**TINY_STUDENT))
    assert traverses.frames.tolist() == [2, 10]
    assert traverses.names == ["frame2.png", "frame10.png"]
    for row, number in enumerate((2, 10)):
        assert np.array_equal(traverses.reference_raw[row], summer[number])
        assert np.array_equal(traverses.query_raw[row], winter[number])


def test_training_preprocessing_matches_the_runtime_encoder(tmp_path):
    config = StudentConfig(**TINY_STUDENT)
    path = tmp_path / "s.safetensors"
    save_checkpoint(path, SpikformerStudent(config), {})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (48, 100, 3), dtype=np.uint8) for _ in range(3)]
    runtime = DescriptorEncoder(path).preprocess(images)
    assert torch.equal(as_float(to_student_tensor(images, config)), runtime)


def test_vlm_path_end_to_end_with_tiny_clip(tmp_path):
    pytest.importorskip("transformers")
    clip = write_tiny_clip(tmp_path / "clip")
    data = write_class_folders(tmp_path / "data")
    export = tmp_path / "student.safetensors"
    overrides = tiny_overrides(tmp_path / "run", **{
        "task": "classification", "data.train": str(data), "data.val": str(data),
        "student.image_width": 32, "teacher.spec": f"hf-clip:{clip}", "run.export": str(export),
        "distill.align_weight": 1.0, "distill.relation_weight": 1.0, "distill.temporal_weight": 1.0,
        "distill.membrane_weight": 0.1, "distill.rate_weight": 0.1, "distill.prototype_weight": 0.5,
        "distill.logit_kd_weight": 0.5})
    assert main(["train", *sum((["--set", item] for item in overrides), [])]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for term in ("task", "align", "relation", "temporal", "prototype", "logit_kd"):
        assert f"loss_{term}" in summary["final"]
    assert "zero_shot_accuracy" in summary["teacher"]["metrics"]
    model, info = load_checkpoint(export)
    assert info.provenance["teacher"]["spec"].startswith("hf-clip:")
    assert json.loads(export.with_suffix(".json").read_text())["fingerprint"] == info.fingerprint


def test_resume_continues_where_an_interrupted_run_stopped(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=24)
    base = tiny_overrides(tmp_path / "x", **{"data.reference": str(summer), "data.query": str(winter),
                                             "data.block_size": 4, "optim.epochs": 2})
    reference = train_student(load_config(None, base + [f"run.out_dir={tmp_path / 'full'}"]), log=lambda _: None)

    class Interrupt(Exception):
        pass

    def stop_after_first_epoch(message):
        if message.startswith("student epoch 1/"):
            raise Interrupt

    config = load_config(None, base + [f"run.out_dir={tmp_path / 'cut'}"])
    with pytest.raises(Interrupt):
        train_student(config, log=stop_after_first_epoch)
    messages = []
    resumed = train_student(config, log=messages.append)
    assert any(message.startswith("resuming") for message in messages)
    assert resumed["final"]["loss_task"] == pytest.approx(reference["final"]["loss_task"], rel=1e-5)
    assert resumed["final"]["recall@1"] == reference["final"]["recall@1"]


def test_place_ablation_with_trained_cnn_teacher(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=24)
    overrides = tiny_overrides(tmp_path / "ablation", **{
        "data.reference": str(summer), "data.query": str(winter), "data.block_size": 4,
        "teacher.spec": "train-cnn", "teacher.cnn.widths": [4, 8], "teacher.cnn.strides": [2, 2],
        "teacher.cnn.epochs": 1, "teacher.cnn.batch_size": 8, "teacher.cnn.embed_dim": 8,
        "distill.align_weight": 1.0, "distill.temporal_weight": 0.5, "distill.prototype_weight": 1.0})
    report = run_ablation(load_config(None, overrides), log=lambda _: None)
    assert [row["variant"] for row in report["rows"]] == ["student", "student+SVS"]
    assert "no text side" in report["skipped"]["student+SVS+SPL"]
    assert "recall@1" in report["teacher"]["metrics"]
    assert report["teacher"]["energy"]["ann_energy_pj"] > 0
    for key in ("json", "markdown", "plot"):
        assert (tmp_path / "ablation" / f"report.{ {'json': 'json', 'markdown': 'md', 'plot': 'png'}[key]}").is_file()


def test_classification_distils_from_a_trained_cnn_teacher(tmp_path):
    """train-cnn on a classification task: the teacher (with its own classifier) learns the classes,
    then the student is distilled from it."""
    classes = write_class_folders(tmp_path / "classes", classes=("red", "green", "blue"), per_class=8)
    overrides = tiny_overrides(tmp_path / "run", **{
        "task": "classification", "data.train": str(classes), "data.val": str(classes),
        "student.image_height": 32, "student.image_width": 32, "student.input_normalization": "standard",
        "teacher.spec": "train-cnn", "teacher.cnn.widths": [8, 16], "teacher.cnn.strides": [2, 2],
        "teacher.cnn.epochs": 8, "teacher.cnn.batch_size": 8, "teacher.cnn.embed_dim": 8,
        "distill.align_weight": 1.0})
    messages = []
    summary = train_student(load_config(None, overrides), log=messages.append)
    teacher_lines = [m for m in messages if m.startswith("teacher epoch 8/8")]
    assert teacher_lines and "held-out accuracy 100.0%" in teacher_lines[0]  # colours are easy
    assert summary["teacher"]["cache"] == "trained"
    assert Path(summary["teacher"]["path"]).parent == tmp_path / "teacher_cache"
    assert summary["distillation"]["weights"]["align_weight"] == 1.0
    assert 0.0 <= summary["final"]["accuracy"] <= 100.0


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    write_class_folders(tmp_path / "one", classes=("cat",))
    code = main(["train", "--set", "task=classification", "--set", f"data.train={tmp_path / 'one'}",
                 "--set", f"data.val={tmp_path / 'one'}", "--set", f"run.out_dir={tmp_path / 'run'}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("vl2spike-train: error:") and "\n" not in error


def test_nordland_smoke(tmp_path):
    """Real data: a few places, one short epoch; the pipeline runs and reports held-out recall."""
    nordland = require_dir(NORDLAND)
    overrides = tiny_overrides(tmp_path / "run", **{
        "data.reference": str(nordland / "summer"), "data.query": str(nordland / "winter"),
        "data.max_places": 120, "data.block_size": 30, "optim.batch_size": 16})
    summary = train_student(load_config(None, overrides), log=lambda _: None)
    assert 0.0 <= summary["final"]["recall@1"] <= 100.0
    assert "blocks [3]" in summary["data"]


def test_hard_negative_batches_cover_each_place_once_with_near_neighbours(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=40)
    from vl2spike_training.tasks import PlaceTask

    config = load_config(None, tiny_overrides(tmp_path / "run", **{
        "data.reference": str(summer), "data.query": str(winter), "data.block_size": 10,
        "data.hard_negative_run": 4}))
    task = PlaceTask(config, StudentConfig.from_dict(config["student"]), None, "")
    batches = task.epoch_batches(8, torch.Generator().manual_seed(0))
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(task.num_train))
    places = [task.split.train[batch] for batch in batches]
    # every batch holds places two apart (hard negatives); places one apart are masked in the loss
    assert all((np.abs(p[:, None] - p[None, :]) == 2).any() for p in places)


def test_twin_then_integer_student_from_it_with_layer_and_energy_terms(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=24)
    data = {"data.reference": str(summer), "data.query": str(winter), "data.block_size": 4}
    twin_path = tmp_path / "twin.safetensors"
    twin = train_student(load_config(None, tiny_overrides(tmp_path / "twin", **data, **{
        "student.neuron": "relu", "student.timesteps": 1, "run.export": str(twin_path)})), log=lambda _: None)
    assert twin["energy"]["ratio"] == pytest.approx(1.0)
    messages = []
    student = train_student(load_config(None, tiny_overrides(tmp_path / "student", **data, **{
        "student.neuron": "integer", "student.spike_levels": 3, "student.timesteps": 1,
        "run.init_checkpoint": str(twin_path), "distill.twin_weight": 1.0,
        "distill.twin_checkpoint": str(twin_path), "distill.energy_weight": 0.5, "optim.epochs": 2,
        "optim.eval_every": 2, "run.export": str(tmp_path / "student.safetensors")})), log=messages.append)
    assert any(line.startswith(f"student initialised from {twin_path}") for line in messages)
    first, last = student["epochs"]
    assert "recall@1" not in first and "recall@1" in last  # eval_every 2
    assert 0.0 < last["loss_twin"] < 1.0
    assert 0.0 < last["loss_energy"] / 0.5 < 1.0  # an SNN/ANN energy ratio
    assert last["epoch_cpu_seconds"] > 0 and last["epoch_wall_seconds"] >= last["train_seconds"]
    encoder = DescriptorEncoder(tmp_path / "student.safetensors")
    assert encoder.config.neuron == "integer" and encoder.config.spike_levels == 3


def test_twin_stage_in_train_and_in_the_seeded_ablation(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=24)
    data = {"data.reference": str(summer), "data.query": str(winter), "data.block_size": 4,
            "student.neuron": "integer", "student.spike_levels": 2, "student.timesteps": 1,
            "optim.twin_epochs": 1}
    messages = []
    summary = train_student(load_config(None, tiny_overrides(tmp_path / "train", **data)), log=messages.append)
    assert any(line.startswith("twin stage: the ANN twin first") for line in messages)
    assert summary["twin"]["checkpoint"] == str(tmp_path / "train" / "twin" / "twin.safetensors")
    assert "recall@1" in summary["twin"]["final"] and summary["twin"]["energy"]["ratio"] == pytest.approx(1.0)
    assert summary["config"]["run"]["init_checkpoint"] == summary["twin"]["checkpoint"]
    table = compare_table([str(tmp_path / "train"), str(tmp_path / "train" / "twin")]).splitlines()
    assert table[2].startswith("| train | integer | 0..2 | 1 | spikes | twin | task only | 1 |")
    assert table[3].startswith("| twin | relu |  | 1 | spikes | scratch | task only | 1 |")
    assert main(["compare", str(tmp_path / "nothing")]) == 2

    report = run_ablation(load_config(None, tiny_overrides(tmp_path / "ablation", **data, **{
        "run.seeds": [0, 1]})), log=lambda _: None)
    assert [row["variant"] for row in report["rows"]] == ["student", "student+twin"]
    for seed in (0, 1):
        assert (tmp_path / "ablation" / f"twin-seed{seed}" / "twin.safetensors").is_file()
    with pytest.raises(InputError, match="set one of them"):
        load_config(None, tiny_overrides(tmp_path / "x", **data, **{"run.init_checkpoint": "twin.safetensors"}))
