"""The embedded demo route: deterministic, Nordland layout, hard for raw pixels but not hopeless."""
from pathlib import Path

import numpy as np
import pytest

from vl2spike_ros.sources.image_folders import ImageFolderSequence
from vl2spike_ros.demo.route import build_demo_route, write_demo_route
from vl2spike_ros.errors import InputError


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def route(tmp_path_factory) -> tuple[Path, Path]:
    return write_demo_route(tmp_path_factory.mktemp("demo") / "route")


@pytest.fixture(scope="module")
def route_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    return build_demo_route()


def test_route_layout_count_and_size(route, route_images):
    reference_dir, query_dir = route
    reference, query = ImageFolderSequence(reference_dir), ImageFolderSequence(query_dir)
    assert 150 <= len(reference) <= 250 and len(query) == len(reference)
    assert [f.frame for f in reference.frames] == [10 * i for i in range(len(reference))]
    assert [f.source for f in query.frames] == [f.source for f in reference.frames]
    assert {image.shape for _, image in reference} | {image.shape for _, image in query} == {(32, 64, 3)}
    references, queries = route_images
    assert np.array_equal(reference.read(17), references[17])
    assert np.array_equal(query.read(17), queries[17])


def test_two_builds_give_identical_bytes(route, tmp_path: Path):
    again = write_demo_route(tmp_path / "again")
    for first, second in zip(route, again):
        assert folder_bytes(first) == folder_bytes(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no staging folder left behind


def test_existing_route_is_reused_and_other_content_refused(route, tmp_path: Path):
    reference_dir, _ = route
    before = (reference_dir / "images-00000.png").stat().st_mtime_ns
    assert write_demo_route(reference_dir.parent) == route
    assert (reference_dir / "images-00000.png").stat().st_mtime_ns == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="busy: exists and holds no matching demo route"):
        write_demo_route(tmp_path / "busy")


def test_query_differs_but_raw_pixels_still_find_most_places(route_images):
    references, queries = route_images
    reference = np.stack(references).reshape(len(references), -1).astype(np.float32)
    query = np.stack(queries).reshape(len(queries), -1).astype(np.float32)
    # Squared Euclidean distances through one matrix product.
    distances = (query ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None, :] - 2 * query @ reference.T
    places = np.arange(len(queries))
    recall_at_1 = np.mean(np.abs(distances.argmin(axis=1) - places) <= 1)
    assert 0.3 < recall_at_1 < 0.95  # appearance change is real, yet the places are findable
    assert all(np.abs(q.astype(int) - r).mean() > 10 for q, r in zip(queries, references))
