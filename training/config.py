"""Training configuration: one nested YAML file plus `--set section.key=value` overrides.

Every key is known in advance (the defaults below), so a typo is an error rather than a silently
ignored setting. The student section is validated by the runtime's own StudentConfig.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from vl2spike_ros.errors import InputError
from vl2spike_ros.model import StudentConfig

from .augmentation import AUGMENT_POLICIES
from .data import SPLITS

TASKS = ("place", "classification")
AUTOCASTS = ("off", "bf16")

DEFAULTS: dict[str, Any] = {
    "task": "place",
    "data": {
        # place: two frame-aligned traverses; the same file name in both is the same place.
        "reference": "",          # the map traverse (Nordland: summer)
        "query": "",              # the query traverse (Nordland: winter)
        # blocks (default, any route): validation blocks interleaved along the route (interpolation, no test stretch);
        # route_tail: test stretch = frames > test_after_frame (never used for any choice), validation
        # = interleaved blocks among frames <= validation_until_frame, training = the rest of those.
        "split": "blocks",
        "validation_until_frame": 17800,
        "test_after_frame": 18200,
        "test_in_training": False,  # route_tail, final model only: the test stretch joins training
        "block_size": 100,        # places per block of the split
        "holdout_every": 4,       # every k-th block (k-1, 2k-1, ...) is held out for evaluation
        "guard_places": 2,        # training places dropped on each side of a held-out block
        "max_places": 0,          # 0: all; else the first N places (pilots, tests)
        "hard_negative_run": 0,   # > 1: batches of runs of that many nearby places (hard negatives)
        "tolerance_frames": 10,   # a match within +-10 original frames (+-1 Nordland place) is correct
        # Places off the route (training/domains.py): extra training domains, each adding
        # extra_per_batch places to every step, and pairs of folders validated at every validation.
        "extra_domains": [],
        "extra_per_batch": 16,
        "validation_sets": [],
        # classification: image folders <root>/<class>/*.jpg
        "train": "",
        "val": "",
        "max_per_class": 0,       # 0: all
        "augment": True,
        "augment_policy": "shift",  # shift | strong (training/augmentation.py)
    },
    "student": StudentConfig().to_dict(),
    "teacher": {
        # none | hf-clip:DIR | hf-siglip:DIR | hf:DIR | open-clip:ARCH:FILE | ann:FILE | train-cnn
        "spec": "none",
        # Trained train-cnn teachers, by digest of what shapes them, shared by runs; "": teacher_cache
        # beside run.out_dir (runs/teacher_cache for runs/NAME).
        "cache_dir": "",
        # directory (keyed files) or one cache file; "": <teacher cache>/features
        "feature_cache": "",
        "batch_size": 64,
        "prompt_templates": ["a photo of a {}."],
        # place recognition has no class names: SPL uses these scene prompts as pseudo-classes
        # (each image takes the prompt its teacher embedding is closest to).
        "place_prompts": [],
        "cnn": {                  # the ANN teacher trained by `train-cnn`
            # place-cnn: our small CNN from scratch; efficientnet-lite0: ImageNet weights
            # fine-tuned for places (training/pretrained_encoder.py; blocks and upsample apply to it)
            "architecture": "place-cnn",
            "blocks": 10,
            "upsample": 2.0,
            "widths": [32, 64, 128, 256],
            "strides": [2, 2, 2, 2],  # 32x64 in, 2x4 out
            "embed_dim": 256,
            "epochs": 30,
            "batch_size": 128,
            "lr": 0.002,
            "weight_decay": 0.05,
            "warmup_epochs": 1,
            "temperature": 0.05,
        },
    },
    "distill": {
        "align_weight": 0.0,          # SVS manifold alignment (cosine)
        "relation_weight": 0.0,       # SVS relation term ||ZZ^T - GG^T||^2 / B^2
        "temporal_weight": 0.0,       # SVS temporal consistency (KL to the time-mean)
        "temporal_warmup_epochs": 2.0,
        "membrane_weight": 0.0,       # lambda_v inside the temporal term
        "rate_weight": 0.0,           # lambda_r inside the temporal term
        "prototype_weight": 0.0,      # SPL prototype-to-text InfoNCE
        "prototype_momentum": 0.9,
        "prototype_temperature": 0.07,
        "logit_kd_weight": 0.0,       # SPL text-logit distillation
        "kd_temperature": 2.0,
        "kd_student_temperature": 0.01,
        # The ANN twin (a student.neuron=relu checkpoint of the same shape) as a layer-by-layer
        # teacher: every spike map pulled towards the twin's activation at the same place.
        "twin_weight": 0.0,
        "twin_checkpoint": "",
        # Energy: weight of the student's SNN/ANN energy ratio on the batch (training/energy_term.py)
        # in the loss; trades accuracy for synaptic operations.
        "energy_weight": 0.0,
        # true: the twin stage keeps the teacher and the SVS alignment terms (align, relation)
        "twin_alignment": False,
    },
    "optim": {
        "epochs": 10,
        "batch_size": 64,
        "lr": 0.002,
        "weight_decay": 0.05,
        "warmup_epochs": 1.0,
        "task_temperature": 0.05,     # InfoNCE / cosine-classifier temperature
        "grad_clip": 5.0,
        "ema_decay": 0.0,             # > 0: evaluate and export an exponential moving average of the weights
        "eval_every": 1,              # validate every k epochs (and always after the last)
        # > 0: train the student's ANN twin (student.neuron=relu) for this many epochs first and
        # start the student from it (training/twin_stage.py)
        "twin_epochs": 0,
        # bf16: the student's forward in training steps under bfloat16 autocast (CPU); losses and
        # evaluation stay float32. off: float32 throughout.
        "autocast": "off",
    },
    "run": {
        "out_dir": "runs/train",
        "seed": 0,
        "seeds": [],                  # ablate: one training per seed and variant ([]: run.seed alone)
        "threads": 1,
        "resume": True,               # continue from <out_dir>/state.safetensors when it exists
        "export": "",                 # runtime checkpoint to write at the end ("": none)
        # A runtime checkpoint of the same shape whose weights start the student (e.g. its trained
        # ANN twin, student.neuron=relu); the neurons may differ, the weights' layout may not.
        "init_checkpoint": "",
        "progress": True,
    },
}


def _merge(base: dict, update: dict, where: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise InputError(f"training config: unknown key {path!r}; expected one of {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise InputError(f"training config: {path!r} must be a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, f"{path}.")
        else:
            merged[key] = value
    return merged


def _parse_override(item: str) -> dict:
    if "=" not in item:
        raise InputError(f"--set {item!r}: expected key=value, e.g. optim.epochs=3")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    nested: dict = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def _check_types(config: dict, defaults: dict, where: str = "") -> None:
    for key, default in defaults.items():
        value = config[key]
        path = f"{where}{key}"
        if isinstance(default, dict):
            _check_types(value, default, f"{path}.")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"training config: {path} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"training config: {path} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
                raise InputError(f"training config: {path} must be an integer, got {value!r}")
            config[key] = type(default)(value)
        elif isinstance(default, list) and not isinstance(value, list):
            raise InputError(f"training config: {path} must be a list, got {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            config[key] = "" if value is None else str(value)  # YAML `key:` / `null` means unset


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Defaults <- YAML file <- overrides; returns a plain nested dict, validated."""
    config = copy.deepcopy(DEFAULTS)
    if path:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"training config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise InputError(f"training config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"training config {path}: expected a mapping at the top level")
        config = _merge(config, loaded, "")
    for item in overrides or []:
        config = _merge(config, _parse_override(item), "")
    _check_types(config, DEFAULTS)
    if config["task"] not in TASKS:
        raise InputError(f"training config: task must be one of {TASKS}, got {config['task']!r}")
    for key, allowed in (("split", SPLITS), ("augment_policy", AUGMENT_POLICIES)):
        if config["data"][key] not in allowed:
            raise InputError(f"training config: data.{key} must be one of {allowed}, got {config['data'][key]!r}")
    if config["optim"]["autocast"] not in AUTOCASTS:
        raise InputError(f"training config: optim.autocast must be one of {AUTOCASTS}, got {config['optim']['autocast']!r}")
    if not 0.0 <= config["optim"]["ema_decay"] < 1.0:
        raise InputError(f"training config: optim.ema_decay must be in [0, 1), got {config['optim']['ema_decay']}")
    StudentConfig.from_dict(config["student"])  # raises InputError on a bad student shape
    if config["distill"]["twin_weight"] > 0 and not config["distill"]["twin_checkpoint"]:
        raise InputError("training config: distill.twin_weight > 0 needs distill.twin_checkpoint "
                         "(a student.neuron=relu checkpoint of the same shape)")
    if config["optim"]["twin_epochs"] < 0:
        raise InputError(f"training config: optim.twin_epochs must be >= 0, got {config['optim']['twin_epochs']}")
    if config["optim"]["twin_epochs"] > 0 and config["run"]["init_checkpoint"]:
        raise InputError("training config: optim.twin_epochs > 0 trains the twin to start from; "
                         "run.init_checkpoint names another start; set one of them")
    for key in ("epochs", "batch_size", "eval_every"):
        if config["optim"][key] <= 0:
            raise InputError(f"training config: optim.{key} must be positive")
    if config["optim"]["batch_size"] < 2:
        raise InputError("training config: optim.batch_size must be at least 2 (contrastive losses)")
    return config


def teacher_cache_dir(config: dict) -> Path:
    """teacher.cache_dir, or teacher_cache beside the run directory: one folder for the runs beside it."""
    return Path(config["teacher"]["cache_dir"] or Path(config["run"]["out_dir"]).parent / "teacher_cache")


def feature_cache_dir(config: dict) -> str:
    """teacher.feature_cache, or features/ in the teacher cache (files are keyed by teacher and pixels)."""
    return config["teacher"]["feature_cache"] or str(teacher_cache_dir(config) / "features")


# Settings added after runs were made, at the values that leave training as it was then: left out
# of the digests at those values, so earlier runs still resume and finished ones (and cached
# teachers) are still recognised. extra_per_batch counts only with extra domains.
NEUTRAL_SETTINGS = {
    ("optim", "autocast"): "off",
    ("distill", "twin_alignment"): False,
    ("data", "extra_domains"): [],
}
NEUTRAL_TEACHER_CNN = {"architecture": "place-cnn", "blocks": 10, "upsample": 2.0}


def without_neutral_settings(config: dict) -> dict:
    shaping = copy.deepcopy(config)
    for (section, key), neutral in NEUTRAL_SETTINGS.items():
        if shaping[section].get(key, neutral) == neutral:
            shaping[section].pop(key, None)
    if not config["data"]["extra_domains"]:
        shaping["data"].pop("extra_per_batch", None)
    # Validation sets are evaluated, never trained on.
    shaping["data"].pop("validation_sets", None)
    cnn = shaping["teacher"]["cnn"]
    if cnn.get("architecture", "place-cnn") == "place-cnn":
        for key in NEUTRAL_TEACHER_CNN:
            cnn.pop(key, None)
    return shaping


def config_digest(config: dict) -> str:
    """Hash of everything that shapes the trained weights (not where outputs go); settings added
    later are left out at their neutral values (NEUTRAL_SETTINGS)."""
    config = without_neutral_settings(config)
    shaping = {key: value for key, value in config.items() if key != "run"}
    # Folders, not settings: cached teachers and features are keyed by what they hold.
    shaping["teacher"] = {key: value for key, value in config["teacher"].items()
                          if key not in ("cache_dir", "feature_cache")}
    shaping["seed"] = config["run"]["seed"]
    if config["run"]["init_checkpoint"]:
        shaping["init_checkpoint"] = config["run"]["init_checkpoint"]
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()
