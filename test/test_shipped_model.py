"""The student the package ships: it loads by default, carries its provenance, and serves the CLI."""
import json

from vl2spike_ros.core.checkpoint import default_checkpoint_path
from vl2spike_ros.cli import main
from vl2spike_ros.demo.run import run as run_demo
from vl2spike_ros.core.encoder import DescriptorEncoder
from vl2spike_ros.core.place_map import PlaceMap


def test_shipped_model_loads_by_default_with_its_provenance():
    encoder = DescriptorEncoder()
    assert encoder.info.path == default_checkpoint_path()
    sidecar = json.loads(default_checkpoint_path().with_suffix(".json").read_text())
    assert sidecar["fingerprint"] == encoder.fingerprint
    assert sidecar["provenance"]["command"][:2] == ["vl2spike-train", "train"]
    assert encoder.info.provenance["final"] == sidecar["metrics"]
    assert default_checkpoint_path().stat().st_size < 20_000_000


def test_demo_and_cli_run_on_the_shipped_model(tmp_path, capsys):
    metrics = run_demo(None, tmp_path / "demo", None, tolerance=10, live=False)
    assert metrics["num_queries"] == metrics["num_references"] == 179
    assert 0.0 <= metrics["recall@1"] <= metrics["recall@5"] <= 100.0
    reference = tmp_path / "demo" / "route" / "reference"
    assert main(["build-map", "--images", str(reference), "--out", str(tmp_path / "map")]) == 0
    assert PlaceMap.load(tmp_path / "map").fingerprint == DescriptorEncoder().fingerprint


def test_live_demo_runs_the_shipped_model_in_the_node(tmp_path):
    import shutil

    from vl2spike_ros.demo.route import write_demo_route
    from vl2spike_ros.demo.live import run_live_demo
    from vl2spike_ros.evaluation.runner import build_map, open_checked_sequence

    reference, query = write_demo_route(tmp_path / "route")
    build_map(DescriptorEncoder(), open_checked_sequence(reference), progress=False).save(tmp_path / "map")
    for count in (12, 20):  # the same work_dir twice: the second traverse must not meet the first's bag
        subset = tmp_path / f"query{count}"
        subset.mkdir()
        for image in sorted(query.iterdir())[:count]:
            shutil.copy(image, subset / image.name)
        result = run_live_demo(None, tmp_path / "map", subset, work_dir=tmp_path / "live", progress=False)
        assert result["num_queries"] == count and result["answered"] + result["dropped"] == count
        assert result["answered"] > 0
