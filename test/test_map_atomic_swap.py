"""Readers see the old map or the new one, never a mix: one process saves two maps over each other
in a loop while this one loads the same directory as fast as it can."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from vl2spike_ros.core.place_map import Place, PlaceMap

from test_place_map import FINGERPRINT, unit_vectors


def two_maps() -> list[PlaceMap]:
    """Two maps of the same shape (a mix would pass every size check) and different content."""
    maps = []
    for name, seed in (("A", 1), ("B", 2)):
        place_map = PlaceMap(16, FINGERPRINT)
        place_map.add(unit_vectors(40, 16, seed), [Place(place_id=i, source=f"{name}{i}") for i in range(40)])
        maps.append(place_map)
    return maps

WRITER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    from test_map_atomic_swap import two_maps

    target, saves_wanted = sys.argv[1], int(sys.argv[2])
    maps = two_maps()
    print("ready", flush=True)
    for saves in range(saves_wanted):
        maps[saves % 2].save(target)
        time.sleep(0.01)  # leaves the reader time to load between saves on a busy machine
    print(saves_wanted, flush=True)
    """
)


def test_concurrent_reader_never_sees_half_of_a_map(tmp_path):
    target = tmp_path / "map"
    candidates = two_maps()
    candidates[0].save(target)
    repo = Path(__file__).resolve().parents[1]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), "60", str(Path(__file__).parent)],
        env={**os.environ, "PYTHONPATH": str(repo)}, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        # A count of saves, not a time span, so the race runs as long on a loaded machine.
        seen = [0, 0]
        deadline = time.monotonic() + 300.0
        while writer.poll() is None and time.monotonic() < deadline:
            loaded = PlaceMap.load(target, expected_fingerprint=FINGERPRINT)  # never refused
            which = [np.array_equal(loaded.descriptors, c.descriptors) for c in candidates]
            assert sum(which) == 1, "descriptors.npy of neither map"
            expected = candidates[which.index(True)]
            assert loaded.places == expected.places
            # The index must be the same map's: each place finds itself first (flat, exact).
            _, ids = loaded.search(expected.descriptors[:8], k=1)
            assert ids[:, 0].tolist() == list(range(8)), "index.faiss of the other map"
            seen[which.index(True)] += 1
        saves = int(writer.communicate(timeout=60)[0].strip())
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == 0
    print(f"{saves} saves, loads of each map: {seen}")
    assert saves == 60 and min(seen) > 0, (saves, seen)  # the race really ran, both maps were read
    assert [p.name for p in tmp_path.iterdir()] == ["map"]
