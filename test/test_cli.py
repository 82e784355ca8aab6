"""The `vl2spike` command on real files: bad input gives one clear line and touches nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import NORDLAND, require_dir
from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.cli import main
from vl2spike_ros.core.place_map import PlaceMap

VL2SPIKE = [sys.executable, "-m", "vl2spike_ros.cli"]
NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel")


def write_traverse(folder: Path, count: int, size=(64, 32), shift: int = 0) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        image = np.roll(photo(NAMES[i % len(NAMES)], size), shift * (i // len(NAMES) + 1), axis=1)
        cv2.imwrite(str(folder / f"images-{i * 10:05d}.png"), image)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    checkpoint = write_tiny_checkpoint(root / "student.safetensors")
    reference = write_traverse(root / "reference", 24)
    query = write_traverse(root / "query", 24, shift=2)
    assert main(["build-map", "--images", str(reference), "--checkpoint", str(checkpoint),
                 "--out", str(root / "map")]) == 0
    return root, checkpoint, reference, query


def run_cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and "Triton" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_build_map_and_evaluate_against_it(workspace, tmp_path):
    root, checkpoint, _, query = workspace
    loaded = PlaceMap.load(root / "map")
    assert len(loaded) == 24
    assert [p.place_id for p in loaded.places] == list(range(24))
    assert loaded.places[3].source == "images-00030.png" and loaded.places[3].frame == 30
    assert main(["evaluate", "--map", str(root / "map"), "--query", str(query), "--checkpoint",
                 str(checkpoint), "--tolerance", "0", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_queries"] == 24 and metrics["tolerance"] == 0
    assert (tmp_path / "eval" / "pr_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("case", ["empty folder", "zero-size image", "unreadable image"])
def test_bad_image_folders_leave_the_existing_map_alone(workspace, tmp_path, capsys, case):
    root, checkpoint, _, _ = workspace
    folder = tmp_path / "images"
    if case == "empty folder":
        folder.mkdir()
        expected = "no images in"
    else:
        write_traverse(folder, 3)
        if case == "zero-size image":
            (folder / "images-00010.png").write_bytes(b"")
            expected = "images-00010.png"
        else:
            (folder / "images-00010.png").write_bytes(b"\x89PNG garbage")
            expected = "images-00010.png"
    existing = tmp_path / "map"
    shutil.copytree(root / "map", existing)
    before = {path.name: path.read_bytes() for path in existing.iterdir()}
    code, err = run_cli(["build-map", "--images", folder, "--checkpoint", checkpoint,
                         "--out", existing, "--overwrite"], capsys)
    assert code == 2
    assert expected in one_error_line(err)
    assert {path.name: path.read_bytes() for path in existing.iterdir()} == before


def test_a_traverse_of_mixed_sizes_is_fitted_frame_by_frame(workspace, tmp_path):
    root, checkpoint, _, _ = workspace
    folder = write_traverse(tmp_path / "images", 3)
    cv2.imwrite(str(folder / "images-00010.png"), photo("coffee", (80, 60)))
    assert main(["build-map", "--images", str(folder), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "map")]) == 0
    assert len(PlaceMap.load(tmp_path / "map")) == 3


def test_existing_output_needs_overwrite(workspace, capsys):
    root, checkpoint, reference, _ = workspace
    before = (root / "map" / "index.faiss").read_bytes()
    code, err = run_cli(["build-map", "--images", reference, "--checkpoint", checkpoint,
                         "--out", root / "map"], capsys)
    assert code == 2 and "already exists" in one_error_line(err)
    assert (root / "map" / "index.faiss").read_bytes() == before


def test_map_from_another_model_is_refused(workspace, tmp_path, capsys):
    root, _, _, query = workspace
    other = write_tiny_checkpoint(tmp_path / "other.safetensors", seed=5)
    code, err = run_cli(["evaluate", "--map", root / "map", "--query", query, "--checkpoint", other,
                         "--out", tmp_path / "eval"], capsys)
    assert code == 2 and "rebuild the map" in one_error_line(err)
    assert not (tmp_path / "eval").exists()


def test_truncated_index_is_refused(workspace, tmp_path, capsys):
    root, checkpoint, _, query = workspace
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in (root / "map").iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    index = broken / "index.faiss"
    index.write_bytes(index.read_bytes()[:100])
    code, err = run_cli(["evaluate", "--map", broken, "--query", query, "--checkpoint", checkpoint,
                         "--out", tmp_path / "eval"], capsys)
    assert code == 2 and "index.faiss" in one_error_line(err)


def test_checkpoint_of_the_wrong_kind(workspace, tmp_path, capsys):
    _, _, reference, _ = workspace
    wrong = tmp_path / "model.safetensors"
    wrong.write_text(json.dumps({"not": "a model"}))
    code, err = run_cli(["build-map", "--images", reference, "--checkpoint", wrong,
                         "--out", tmp_path / "map"], capsys)
    assert code == 2 and "model.safetensors" in one_error_line(err)
    assert not (tmp_path / "map").exists()


def test_negative_tolerance(workspace, tmp_path, capsys):
    root, checkpoint, reference, query = workspace
    code, err = run_cli(["evaluate", "--reference", reference, "--query", query, "--checkpoint",
                         checkpoint, "--tolerance", "-1", "--out", tmp_path / "eval"], capsys)
    assert code == 2 and "argument --tolerance: expected an integer in [0, 10000000], got -1" in one_error_line(err)


def test_k_larger_than_the_map(workspace, tmp_path, capsys):
    _, checkpoint, _, query = workspace
    small = write_traverse(tmp_path / "small", 5)
    code, err = run_cli(["evaluate", "--reference", small, "--query", query, "--checkpoint", checkpoint,
                         "--out", tmp_path / "eval"], capsys)
    assert code == 2 and "K=20 but the map holds only 5 places" in one_error_line(err)


def test_process_exit_code_and_single_line(tmp_path):
    result = subprocess.run(VL2SPIKE + ["build-map", "--images", str(tmp_path / "absent"),
                                        "--out", str(tmp_path / "map"), "--checkpoint", "x"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2
    assert one_error_line(result.stderr) == f"vl2spike build-map: error: images {tmp_path / 'absent'}: no such folder or bag"


def test_every_command_has_help():
    result = subprocess.run(VL2SPIKE + ["--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("build-map", "evaluate", "energy", "init-checkpoint", "make-bag", "play"):
        assert command in result.stdout
        sub = subprocess.run(VL2SPIKE + [command, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage:" in sub.stdout


def test_energy_reports_a_ratio_and_exports_nothing(workspace, capsys, tmp_path, monkeypatch):
    _, checkpoint, reference, _ = workspace
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert main(["energy", "--checkpoint", str(checkpoint), "--images", str(reference), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 < report["ratio"] < 1 and report["snn_energy_pj"] > 0
    assert 0 < report["ratio_int8"] < 1 and report["ann_int8_energy_pj"] > 0
    assert not (cache / "vl2spike_ros").exists()  # counted on PyTorch: no ONNX export in the user cache


def test_nordland_end_to_end(tmp_path):
    """The design §3 contract on the real Nordland64 traverses (tiny untrained model: speed only)."""
    nordland = require_dir(NORDLAND)
    checkpoint = write_tiny_checkpoint(tmp_path / "student.safetensors")
    result = subprocess.run(
        VL2SPIKE + ["evaluate", "--reference", str(nordland / "summer"), "--query", str(nordland / "winter"),
                    "--checkpoint", str(checkpoint), "--tolerance", "10", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("recall@1", "recall@5", "recall@10", "recall@20", "pr_auc", "recall@100p", "num_queries",
                "num_references", "tolerance", "sequence_length", "checkpoint_fingerprint"):
        assert key in metrics
    assert metrics["num_queries"] == metrics["num_references"] == 1892
    assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= metrics["recall@20"]
    assert (tmp_path / "out" / "pr_curve.png").is_file()


def write_poses(path: Path, count: int, spacing: float, offset: float = 0.0, skip: int | None = None) -> Path:
    rows = ["source,x,y,z"] + [f"images-{i * 10:05d}.png,{i * spacing + offset},0,0"
                               for i in range(count) if i != skip]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_poses_reach_the_map_and_metric_ground_truth(workspace, tmp_path, capsys):
    root, checkpoint, reference, query = workspace
    reference_poses = write_poses(tmp_path / "reference.csv", 24, spacing=5.0)
    assert main(["build-map", "--images", str(reference), "--checkpoint", str(checkpoint), "--out",
                 str(tmp_path / "map"), "--poses", str(reference_poses)]) == 0
    place_map = PlaceMap.load(tmp_path / "map")
    assert place_map.has_poses and place_map.places[2].pose == [10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    query_poses = write_poses(tmp_path / "query.csv", 24, spacing=5.0, offset=1.0)
    args = ["evaluate", "--map", str(tmp_path / "map"), "--query", str(query), "--checkpoint", str(checkpoint),
            "--query-poses", str(query_poses), "--out"]
    assert main(args + [str(tmp_path / "near"), "--radius", "2"]) == 0
    assert main(args + [str(tmp_path / "far"), "--radius", "100"]) == 0
    near = json.loads((tmp_path / "near" / "metrics.json").read_text())
    far = json.loads((tmp_path / "far" / "metrics.json").read_text())
    assert near["radius"] == 2 and far["recall@1"] == 100.0  # every reference lies within 100 m
    assert near["recall@1"] < far["recall@1"]


def test_poses_must_cover_every_frame(workspace, tmp_path, capsys):
    _, checkpoint, reference, _ = workspace
    poses = write_poses(tmp_path / "poses.csv", 24, spacing=1.0, skip=5)
    code, err = run_cli(["build-map", "--images", reference, "--checkpoint", checkpoint, "--out",
                         tmp_path / "map", "--poses", poses], capsys)
    assert code == 2 and "no pose for 1 of 24 frames (first: 'images-00050.png')" in one_error_line(err)
    assert not (tmp_path / "map").exists()
