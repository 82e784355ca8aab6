"""The held-out test that decides whether adapted weights are kept: the held-out frames, clean, are
the map; the same frames under a fixed draw of changed conditions and viewpoints are the queries.
Recall@1 counts a query right when its best match is its own frame (or, on a route, a frame next
to it). Base and adapted model answer the same queries."""
from __future__ import annotations

import numpy as np
import torch

from vl2spike_ros.adaptation.augmentation import change_conditions
from vl2spike_ros.adaptation.traverse import Traverse
from vl2spike_ros.model import SpikformerStudent

QUERY_VIEWS = 2          # changed copies of each held-out frame
BATCH = 64


class SelfCheck:
    def __init__(self, traverse: Traverse, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        clean = traverse.batch(traverse.held_out)
        self.map_images = clean
        self.query_images = torch.cat([change_conditions(clean, generator) for _ in range(QUERY_VIEWS)])
        positions = np.tile(traverse.held_out, QUERY_VIEWS)
        reach = 0 if traverse.positives == "views" else 1
        self._right = np.abs(positions[:, None] - traverse.held_out[None, :]) <= reach

    @property
    def queries(self) -> int:
        return len(self.query_images)

    def recall_at_1(self, model: SpikformerStudent) -> float:
        """Percent of queries whose best match is right."""
        places = describe(model, self.map_images)
        queries = describe(model, self.query_images)
        best = (queries @ places.T).argmax(dim=1).numpy()
        return 100.0 * float(self._right[np.arange(len(best)), best].mean())


def describe(model: SpikformerStudent, images: torch.Tensor) -> torch.Tensor:
    """Descriptors [N, D] of images [N, C, H, W] (uint8, or float in [0, 1]), a batch at a time."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            batch = images[start:start + BATCH]
            chunks.append(model(batch.float() / 255.0 if batch.dtype == torch.uint8 else batch).descriptor)
    return torch.cat(chunks)
