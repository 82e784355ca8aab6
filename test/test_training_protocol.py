"""Issue 7's protocol: the route_tail split, strong augmentation, weight averaging, per-split
figures (student, teacher, patch-normalised pixels; single frame and sequences) in the run
directory and the exported sidecar, and the ablation over seeds."""
import json

import numpy as np
import pytest
import torch

from vl2spike_ros.core.checkpoint import load_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_training.ablation import run_ablation
from vl2spike_training.augmentation import augment
from vl2spike_training.config import load_config
from vl2spike_training.data import split_route_tail
from vl2spike_training.evaluation import recall_from_embeddings
from vl2spike_ros.evaluation.baselines import evaluate_similarity
from vl2spike_ros.evaluation.metrics import RECALL_KS
from vl2spike_training.trainer import train_student

from test_training_pipeline import tiny_overrides
from training_fixtures import write_traverses

NORDLAND_FRAMES = np.arange(210, 24001, 10)


def test_training_recall_is_the_runtime_recall():
    rng = np.random.default_rng(0)
    reference = torch.nn.functional.normalize(torch.randn(60, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    query = torch.nn.functional.normalize(reference + 0.4 * torch.from_numpy(rng.normal(size=(60, 16))).float(), dim=1)
    frames = np.arange(60) * 10
    runtime = evaluate_similarity((query @ reference.T).numpy(), frames, frames, tolerance=10).metrics
    assert recall_from_embeddings(query, reference, frames, 10) == {
        f"recall@{k}": runtime[f"recall@{k}"] for k in RECALL_KS}


def test_route_tail_split_keeps_the_test_stretch_out_of_every_choice():
    split = split_route_tail(NORDLAND_FRAMES, 100, 4, 2, validation_until_frame=17800, test_after_frame=18200)
    frames = NORDLAND_FRAMES
    assert (frames[split.test] > 18200).all() and len(split.test) == (frames > 18200).sum()
    assert (frames[split.train] <= 17800).all() and (frames[split.heldout] <= 17800).all()
    assert not set(split.train) & set(split.heldout)
    assert np.abs(split.train[:, None] - split.heldout[None, :]).min() > 2   # guard places
    assert set(split.named_sets()) == {"validation", "test"}
    assert "route_tail" in split.description and "JOINS" not in split.description
    final = split_route_tail(NORDLAND_FRAMES, 100, 4, 2, 17800, 18200, test_in_training=True)
    assert set(split.test) <= set(final.train) and "JOINS TRAINING" in final.description
    with pytest.raises(InputError, match="must be below"):
        split_route_tail(NORDLAND_FRAMES, 100, 4, 2, 18200, 18200)
    with pytest.raises(InputError, match="non-empty"):
        split_route_tail(NORDLAND_FRAMES, 100, 4, 2, 17800, 30000)


def test_strong_augmentation_is_seeded_bounded_and_varied():
    images = torch.rand(16, 3, 32, 64)
    first = augment(images, torch.Generator().manual_seed(3), "strong")
    again = augment(images, torch.Generator().manual_seed(3), "strong")
    other = augment(images, torch.Generator().manual_seed(4), "strong")
    assert first.shape == images.shape and torch.equal(first, again)
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not torch.allclose(first, other) and (first - images).abs().mean() > 0.05
    with pytest.raises(InputError, match="augmentation policy"):
        augment(images, torch.Generator(), "wild")
    with pytest.raises(InputError, match="augment_policy"):
        load_config(None, ["data.augment_policy=wild"])


def route_tail_overrides(tmp_path, name, **extra):
    summer, winter = write_traverses(tmp_path / "route", places=40)   # frames 210 ... 600
    return tiny_overrides(tmp_path / name, **{
        "data.reference": str(summer), "data.query": str(winter), "data.split": "route_tail",
        "data.block_size": 4, "data.validation_until_frame": 440, "data.test_after_frame": 470,
        "data.augment_policy": "strong", **extra})


def test_a_run_reports_every_split_for_student_teacher_and_patchnorm(tmp_path):
    export = tmp_path / "student.safetensors"
    overrides = route_tail_overrides(tmp_path, "run", **{
        "teacher.spec": "train-cnn", "teacher.cnn.widths": [4, 8], "teacher.cnn.strides": [2, 2],
        "teacher.cnn.epochs": 1, "teacher.cnn.batch_size": 8, "teacher.cnn.embed_dim": 8,
        "distill.align_weight": 1.0, "optim.ema_decay": 0.9, "run.export": str(export)})
    summary = train_student(load_config(None, overrides), log=lambda _: None)
    assert summary["split"] == "route_tail"
    assert set(summary["splits"]) == {"validation", "test", "whole_route"}
    assert summary["splits"]["test"]["places"] == 13                    # frames 480 ... 600
    for entry in summary["splits"].values():
        assert set(entry) == {"places", "student", "teacher", "patchnorm"}
        for model in ("student", "teacher", "patchnorm"):
            assert set(entry[model]) == {"L1", "L10"}
            assert 0.0 <= entry[model]["L1"]["recall@1"] <= 100.0
    assert summary["splits"]["test"]["patchnorm"]["L1"]["recall@1"] == 100.0  # an easy synthetic route
    sidecar = json.loads(export.with_suffix(".json").read_text())
    assert sidecar["split"] == "route_tail" and sidecar["splits"] == summary["splits"]
    _, info = load_checkpoint(export)
    assert "test stretch" in info.provenance["data"] and "splits" in info.provenance
    state_keys = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "recall@1" in state_keys


def test_ablation_over_seeds_reports_mean_and_spread(tmp_path):
    overrides = route_tail_overrides(tmp_path, "ablation", **{
        "run.seeds": [0, 1], "teacher.spec": "train-cnn", "teacher.cnn.widths": [4, 8],
        "teacher.cnn.strides": [2, 2], "teacher.cnn.epochs": 1, "teacher.cnn.batch_size": 8,
        "teacher.cnn.embed_dim": 8, "distill.align_weight": 1.0})
    report = run_ablation(load_config(None, overrides), log=lambda _: None)
    assert report["seeds"] == [0, 1] and [row["variant"] for row in report["rows"]] == ["student", "student+SVS"]
    for row in report["rows"]:
        assert row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
        values = [figures["test recall@1 L1"] for figures in row["per_seed"]]
        assert row["mean"]["test recall@1 L1"] == pytest.approx(np.mean(values))
        assert row["std"]["test recall@1 L1"] == pytest.approx(np.std(values, ddof=1))
        assert "energy µJ" in row["mean"] and "test recall@1 L10" in row["mean"]
    assert "patchnorm" in report["teacher"]["splits"]["test"]
    markdown = (tmp_path / "ablation" / "report.md").read_text()
    assert "±" in markdown and "seeds 0, 1" in markdown
    assert (tmp_path / "ablation" / "student-seed1" / "summary.json").is_file()


def test_a_finished_run_is_reused_not_evaluated_again(tmp_path):
    config = load_config(None, route_tail_overrides(tmp_path, "run"))
    first = train_student(config, log=lambda _: None)
    messages = []
    again = train_student(config, log=messages.append)
    assert any("summary.json reused" in message for message in messages)
    assert again["splits"] == first["splits"]
    changed = load_config(None, route_tail_overrides(tmp_path, "run") + ["run.seed=1"])
    with pytest.raises(InputError, match="different training config"):
        train_student(changed, log=lambda _: None)

    # A state whose digest hashed settings this code leaves out (a folder, say): the finished
    # summary of the same config is still recognised, not refused.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state_path = tmp_path / "run" / "state.safetensors"
    with safe_open(str(state_path), "pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(state_path)), str(state_path), metadata={**metadata, "config_digest": "0" * 64})
    messages = []
    train_student(config, log=messages.append)
    assert any("summary.json reused" in message for message in messages)


def test_report_gives_the_split_figures_of_a_checkpoint(tmp_path, capsys):
    from vl2spike_training.cli import main

    export = tmp_path / "student.safetensors"
    overrides = route_tail_overrides(tmp_path, "run", **{"run.export": str(export)})
    summary = train_student(load_config(None, overrides), log=lambda _: None)
    sets = sum((["--set", item] for item in overrides), [])
    out = tmp_path / "report.json"
    assert main(["report", *sets, "--checkpoint", str(export), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["split"] == "route_tail" and set(report["splits"]["test"]) == {"places", "student", "patchnorm"}
    # the exported checkpoint in eval mode gives what the run measured at its end
    assert report["splits"]["test"]["patchnorm"] == summary["splits"]["test"]["patchnorm"]
    assert main(["report", *sets, "--set", "teacher.spec=train-cnn", "--checkpoint", str(export)]) == 2
    assert "would train a teacher" in capsys.readouterr().err
