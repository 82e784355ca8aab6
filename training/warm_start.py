"""Starting a student from another trained student of the same shape (typically its ANN twin,
`student.neuron: relu`): the weights carry over one to one, the neurons may differ."""
from __future__ import annotations


import torch

from vl2spike_ros.core.checkpoint import read_checkpoint
from vl2spike_ros.errors import InputError
from vl2spike_ros.model import SpikformerStudent

# What may differ between the checkpoint and the student: how neurons fire and for how long,
# not the layout of any weight.
NEURON_FIELDS = {"neuron", "spike_levels", "readout", "timesteps", "lif_tau", "bn_momentum"}


@torch.no_grad()
def initialise_from_checkpoint(student: SpikformerStudent, path: str) -> str:
    """Loads the weights of the runtime checkpoint at `path` into `student`; returns a log line.
    Refuses a checkpoint of another shape; neuron parameters the checkpoint lacks (a learnt tau)
    keep their initial values."""
    info, state = read_checkpoint(path)
    theirs, ours = info.config.to_dict(), student.config.to_dict()
    differing = sorted(key for key in ours if key not in NEURON_FIELDS and theirs.get(key) != ours[key])
    if differing:
        shown = ", ".join(f"{key} {theirs.get(key)!r} vs {ours[key]!r}" for key in differing[:4])
        raise InputError(f"run.init_checkpoint {path}: another student shape ({shown}); expected one that "
                         f"differs at most in {sorted(NEURON_FIELDS)}")
    neuron_parameters = {name for name, _ in student.named_parameters()
                         if any(name.startswith(prefix) for prefix in _neuron_prefixes(student))}
    try:
        result = student.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise InputError(f"run.init_checkpoint {path}: weights do not fit the student "
                         f"({str(error).splitlines()[-1].strip()})") from None
    missing = [name for name in result.missing_keys if name not in neuron_parameters]
    if missing or result.unexpected_keys:
        raise InputError(f"run.init_checkpoint {path}: weights do not fit the student "
                         f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    changed = {key: (theirs.get(key), ours[key]) for key in sorted(NEURON_FIELDS) if theirs.get(key) != ours[key]}
    return (f"student initialised from {path} (fingerprint {info.fingerprint[:12]})"
            + (f"; differs in {changed}" if changed else ""))


def _neuron_prefixes(student: SpikformerStudent) -> list[str]:
    names = {id(module): name for name, module in student.named_modules()}
    return [names[id(node)] + "." for node in student.neurons]
