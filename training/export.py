"""Export of a trained student as a runtime checkpoint (what `vl2spike --checkpoint` loads), with a
JSON sidecar of metrics and provenance beside it."""
from __future__ import annotations

from pathlib import Path

import torch

from vl2spike_ros.core.checkpoint import save_checkpoint
from vl2spike_ros.core.atomic_files import write_json_atomic
from vl2spike_ros.model import SpikformerStudent


def energy_of(model: SpikformerStudent, images: torch.Tensor) -> dict:
    """Energy per frame (design §5) measured on `images`; the energy module is another part of
    the runtime, so a runtime without it yields a recorded reason instead of figures."""
    try:
        from vl2spike_ros.core.energy import estimate_energy
    except ImportError as error:
        return {"unavailable": f"vl2spike_ros.core.energy not importable ({error})"}
    report = estimate_energy(model, images)
    return {"snn_energy_pj": report.snn_energy_pj, "ann_energy_pj": report.ann_energy_pj,
            "ratio": report.ratio, "frames": report.num_frames}


def export_student(path: str | Path, model: SpikformerStudent, summary: dict) -> dict:
    """Writes the checkpoint and `<path stem>.json`; returns {path, fingerprint, sidecar}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    provenance = {key: summary[key] for key in ("task", "data", "split", "splits", "metric", "final",
                                                 "distillation", "command", "energy")}
    provenance["teacher"] = {key: value for key, value in summary["teacher"].items() if key != "training"}
    fingerprint = save_checkpoint(path, model.eval(), provenance)
    sidecar = path.with_suffix(".json")
    write_json_atomic(sidecar, {"checkpoint": path.name, "fingerprint": fingerprint,
                                "metrics": summary["final"], "teacher_metrics": summary["teacher"].get("metrics", {}),
                                "energy": summary["energy"], "split": summary["split"],
                                "splits": summary["splits"], "provenance": summary})
    return {"path": str(path), "fingerprint": fingerprint, "sidecar": str(sidecar)}
