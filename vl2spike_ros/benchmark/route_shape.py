"""Route-shaped synthetic descriptors for the map benchmark, calibrated on a real route.

A fleet's map is many routes: along a route each place's descriptor is close to the previous one,
and a revisit (another season) is close to the mapped place. Isotropic random vectors have neither,
so they stay in the benchmark as the worst case. Here every route is a random walk on the unit
sphere whose every step has the cosine the model gives two consecutive places, and a query is a
mapped place turned away to the cosine the model gives one place in its two seasons; both cosines
are measured with the model on a frame-aligned pair of traverses (Nordland: summer and winter).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vl2spike_ros.errors import InputError
from vl2spike_ros.sources.image_folders import ImageFolderSequence

SEASONS = ("summer", "winter")  # the map traverse, then the query traverse
RANDOM_PAIRS = 20_000


def turned(rng: np.random.Generator, rows: np.ndarray, cosine: float) -> np.ndarray:
    """Unit rows at exactly `cosine` to each of `rows` (unit), in a random direction orthogonal to it."""
    noise = rng.standard_normal(rows.shape, dtype=np.float32)
    noise -= np.sum(noise * rows, axis=1, keepdims=True) * rows
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    moved = cosine * rows + np.sqrt(1.0 - cosine ** 2) * noise
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def route_rows(rng: np.random.Generator, count: int, dim: int, route_length: int, step_cosine: float) -> np.ndarray:
    """float32 [count, dim]: routes of `route_length` places (the last one may be shorter), stored
    route after route; each starts at a random unit vector and walks with steps of `step_cosine`."""
    routes = -(-count // route_length)
    rows = np.empty((routes, route_length, dim), dtype=np.float32)
    start = rng.standard_normal((routes, dim), dtype=np.float32)
    rows[:, 0] = start / np.linalg.norm(start, axis=1, keepdims=True)
    for position in range(1, route_length):  # every route advances together: routes x dim at a time
        rows[:, position] = turned(rng, rows[:, position - 1], step_cosine)
    return rows.reshape(routes * route_length, dim)[:count]


def route_revisits(rng: np.random.Generator, places: np.ndarray, count: int,
                   revisit_cosine: float) -> tuple[np.ndarray, np.ndarray]:
    """`count` queries, each a distinct mapped place turned to `revisit_cosine`, and those places' ids."""
    revisited = rng.choice(len(places), count, replace=False)
    return turned(rng, places[revisited], revisit_cosine), revisited


def route_cosines(places: np.ndarray, route_length: int, queries: np.ndarray, revisited: np.ndarray) -> dict:
    """The figures `measured_route` reports, measured on generated routes and their queries."""
    within = np.arange(len(places) - 1)
    within = within[(within + 1) % route_length != 0]  # no pair across the end of a route
    return {"consecutive_cosine": round(_mean_rowwise(places[within], places[within + 1]), 4),
            "revisit_cosine": round(_mean_rowwise(queries, places[revisited]), 4),
            "random_pair_cosine": round(_random_pair_cosine(places), 4)}


def measured_route(encoder, data: str | Path, max_places: int = 0) -> dict:
    """The cosines the model's descriptors have on a real route: consecutive places (within each
    season, at the traverses' usual frame spacing) and the two seasons of one place, plus the mean
    cosine of random pairs of places for comparison."""
    data = Path(data)
    folders = [data / season for season in SEASONS]
    if not all(folder.is_dir() for folder in folders):
        raise InputError(f"--route-data {data}: expected two frame-aligned traverses {data}/summer and "
                         f"{data}/winter (the same file name is the same place), e.g. nordland64")
    reference, query = (ImageFolderSequence(folder) for folder in folders)
    query_index = {frame.source: frame.index for frame in query.frames}
    shared = [frame for frame in reference.frames if frame.source in query_index]
    if max_places:
        shared = shared[:max_places]
    if len(shared) < 3:
        raise InputError(f"--route-data {data}: summer and winter share {len(shared)} file names; expected "
                         "at least 3 places seen in both")
    descriptors = {
        "summer": encoder.encode(reference.read(frame.index) for frame in shared),
        "winter": encoder.encode(query.read(query_index[frame.source]) for frame in shared),
    }
    frames = np.array([frame.frame for frame in shared])
    spacing = int(np.median(np.diff(frames)))
    # Places removed from the traverses (stops, tunnels) leave gaps: only neighbours one spacing apart count.
    neighbours = np.flatnonzero(np.diff(frames) == spacing)
    by_season = {season: _mean_rowwise(rows[neighbours], rows[neighbours + 1]) for season, rows in descriptors.items()}
    return {
        "data": str(data),
        "places": len(shared),
        "frame_spacing": spacing,
        "consecutive_cosine": round(float(np.mean(list(by_season.values()))), 4),
        "consecutive_cosine_by_season": {season: round(value, 4) for season, value in by_season.items()},
        "revisit_cosine": round(_mean_rowwise(descriptors["summer"], descriptors["winter"]), 4),
        "random_pair_cosine": round(_random_pair_cosine(descriptors["summer"]), 4),
    }


def _mean_rowwise(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.mean(np.sum(first * second, axis=1)))


def _random_pair_cosine(rows: np.ndarray) -> float:
    """Mean cosine of random pairs of distinct rows: how far apart places are in general."""
    pairs = np.random.default_rng(0).integers(0, len(rows), (RANDOM_PAIRS, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return _mean_rowwise(rows[pairs[:, 0]], rows[pairs[:, 1]])
