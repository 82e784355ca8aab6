"""Pieces every training loop here shares: seeding, batches, the LR schedule, the optimizer, and
resumable training state in safetensors (no pickle)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vl2spike_ros.errors import InputError
from vl2spike_ros.core.atomic_files import atomic_path
from vl2spike_ros.core.tensor_files import read_safetensors

STATE_FORMAT = "vl2spike-training-state"


def log_line(message: str) -> None:
    """Progress lines go out at once: the long runs are watched through a redirected log file."""
    print(message, flush=True)


def seed_everything(seed: int, threads: int) -> torch.Generator:
    """Seeds torch, numpy and random; returns the generator that orders batches and augments."""
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)


def epoch_batches(count: int, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """A random permutation cut into batches; a last batch under 2 items is dropped (a
    contrastive batch of one has no negatives)."""
    order = torch.randperm(count, generator=generator).numpy()
    batches = [order[start:start + batch_size] for start in range(0, count, batch_size)]
    return [batch for batch in batches if len(batch) >= 2]


def learning_rate(base: float, progress_epochs: float, warmup_epochs: float, total_epochs: float) -> float:
    """Linear warm-up, then cosine decay to zero: warm-up keeps the first AdamW steps, taken with
    poor second-moment estimates, from throwing the spiking layers out of their firing range."""
    if warmup_epochs > 0 and progress_epochs < warmup_epochs:
        return base * (progress_epochs + 1e-3) / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-9)
    return base * 0.5 * (1.0 + np.cos(np.pi * min(1.0, (progress_epochs - warmup_epochs) / span)))


def make_optimizer(modules: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; biases, norms, GeM's p and other 1-d parameters are not decayed."""
    decay = [p for p in modules.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in modules.parameters() if p.requires_grad and p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def save_state(path: Path, modules: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               epoch: int, digest: str, records: list[dict]) -> None:
    """Everything needed to continue after `epoch` completed epochs, written atomically."""
    tensors = {f"modules.{name}": tensor.detach().contiguous() for name, tensor in modules.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).contiguous()
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {"format": STATE_FORMAT, "epoch": str(epoch), "config_digest": digest,
                "param_groups": json.dumps(optimizer_state["param_groups"]), "records": json.dumps(records)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_state(path: Path, modules: nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
               digest: str) -> tuple[int, list[dict]]:
    """Restores a state written by save_state for the same config; returns (epochs done, records)."""
    tensors, metadata = read_safetensors(path, "training state", "delete it or set run.resume=false")
    if metadata.get("format") != STATE_FORMAT:
        raise InputError(f"training state {path}: not a {STATE_FORMAT} file")
    if metadata.get("config_digest") != digest:
        raise InputError(f"training state {path}: written for a different training config; use another "
                         "run.out_dir or set run.resume=false to start over")
    prefix = "modules."
    modules.load_state_dict({name[len(prefix):]: tensor for name, tensor in tensors.items()
                             if name.startswith(prefix)})
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["epoch"]), json.loads(metadata["records"])
