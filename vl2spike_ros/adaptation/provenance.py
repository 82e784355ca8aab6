"""The adapted checkpoint: the weights the run kept, with what made them in its provenance."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from vl2spike_ros.adaptation.loop import AdaptationResult, AdaptationSettings
from vl2spike_ros.core.checkpoint import CheckpointInfo, save_checkpoint


def adaptation_provenance(result: AdaptationResult, base: CheckpointInfo, traverse: str, frames: int,
                          positives: str, settings: AdaptationSettings) -> dict:
    return {
        "kind": "adapted" if result.kept == "adapted" else "adaptation kept the base",
        "base_fingerprint": base.fingerprint,
        "base_checkpoint": str(base.path),
        "base_provenance_kind": base.provenance.get("kind"),
        "traverse": traverse,
        "frames": frames,
        "positives": positives,
        "kept": result.kept,
        "reason": result.reason,
        "steps": result.steps,
        "final_loss": round(result.final_loss, 6),
        "seconds": round(result.seconds, 1),
        "settings": dataclasses.asdict(settings),
        "self_check": result.self_check,
        "energy_uj_per_frame": {"base": result.energy_before.snn_energy_pj * 1e-6,
                                "written": result.energy_after.snn_energy_pj * 1e-6},
        "energy_ratio_to_ann": {"base": result.energy_before.ratio, "written": result.energy_after.ratio},
    }


def write_adapted(path: str | Path, result: AdaptationResult, provenance: dict) -> str:
    """Writes the checkpoint atomically; returns its fingerprint (the base's when the base was kept)."""
    return save_checkpoint(path, result.model, provenance)
