"""benchmarks/cross_domain.py: every set through `vl2spike evaluate`, resize modes as checkpoint copies."""
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np

from helpers import photo, write_tiny_checkpoint
from vl2spike_ros.core.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "cross_domain.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cross_domain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sets_of_mixed_sizes_are_evaluated_under_each_resize_mode(tmp_path):
    data = tmp_path / "data"
    names = ("astronaut", "coffee", "chelsea", "rocket", "camera")
    for folder, size in (("ref", (97, 97)), ("query", (97, 72))):  # the two visits differ in aspect
        (data / "essex3in1" / folder).mkdir(parents=True)
        for index in range(24):  # Recall@20 needs 20 references
            image = np.roll(photo(names[index % len(names)], size), 7 * index, axis=1)
            cv2.imwrite(str(data / "essex3in1" / folder / f"images-{index:05d}.png"),
                        cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    script = load_script()
    assert script.main(["--out", str(tmp_path / "out"), "--data", str(data), "--checkpoint", str(checkpoint),
                        "--resize-modes", "letterbox"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())["recall@1"]
    assert set(results) == {"patch-normalised pixels", "patch-normalised pixels (letterbox)", "tiny",
                            "tiny (letterbox)"}
    assert all(set(row) == {"essex3in1"} and 0.0 <= row["essex3in1"] <= 100.0 for row in results.values())
    assert "| tiny (letterbox) |" in (tmp_path / "out" / "results.md").read_text()
    variant = script.with_resize_mode(str(checkpoint), "letterbox", tmp_path)
    model, info = load_checkpoint(variant)
    assert model.config.resize_mode == "letterbox"
    assert info.fingerprint != load_checkpoint(checkpoint)[1].fingerprint
