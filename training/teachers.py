"""Teachers behind one interface: image embeddings, optional text embeddings, an identity string.

Specs (`teacher.spec` in the training config):
- `hf-clip:DIR`, `hf-siglip:DIR`, `hf:DIR`: a Hugging Face `transformers` CLIP or SigLIP directory
  (config.json + weights, tokenizer files for the text side), loaded offline.
- `open-clip:ARCH:FILE`: an open_clip model from a local checkpoint (only where open_clip imports;
  it needs torchvision).
- `ann:FILE`: one of our own ANN encoders (see ann_encoder.py); it has no text side.
The identity hashes the weights, the config and the preprocessing, so cached features of one
teacher can never be mistaken for another's.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vl2spike_ros.errors import InputError

from .ann_encoder import load_ann_encoder

# CLIP's published normalisation, used when a directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class Teacher(Protocol):
    identity: str
    description: str
    embed_dim: int

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 images of any size -> float [N, E], rows unit length."""

    def embed_texts(self, prompts: list[str]) -> torch.Tensor | None:
        """Prompts -> float [K, E], rows unit length; None when the teacher has no text side."""


def _hash_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _square_resize(images: Sequence[np.ndarray], size: int, mean, std) -> torch.Tensor:
    """The whole frame squeezed to size x size: a centre crop would cut away half of a wide
    place image, and a place is the whole view."""
    batch = np.stack([cv2.resize(np.asarray(image), (size, size), interpolation=cv2.INTER_CUBIC)
                      for image in images]).astype(np.float32) / 255.0
    batch = (batch - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output with the projected features in pooler_output;
    older releases return the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HuggingFaceTeacher:
    """CLIP or SigLIP from a local `save_pretrained` directory."""

    def __init__(self, directory: str | Path, expected_type: str | None, batch_size: int = 64) -> None:
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise InputError(f"teacher {directory}: no config.json; expected a Hugging Face CLIP/SigLIP "
                             "directory written by save_pretrained")
        weight_files = [file for file in directory.iterdir() if file.suffix in WEIGHT_SUFFIXES]
        if not weight_files:
            raise InputError(f"teacher {directory}: no weights (model.safetensors or pytorch_model.bin); "
                             "expected a complete save_pretrained directory")
        try:
            import transformers
        except ImportError:
            raise InputError("teacher: the Hugging Face teacher needs `transformers` "
                             "(pip install 'vl2spike_ros[train]')") from None
        model_config = json.loads((directory / "config.json").read_text())
        model_type = model_config.get("model_type")
        classes = {"clip": transformers.CLIPModel, "siglip": transformers.SiglipModel}
        if model_type not in classes or (expected_type and model_type != expected_type):
            wanted = expected_type or " or ".join(classes)
            raise InputError(f"teacher {directory}: model_type {model_type!r}; expected {wanted}")
        self.model = classes[model_type].from_pretrained(str(directory)).eval()
        self.model_type = model_type
        preprocessor = directory / "preprocessor_config.json"
        settings = json.loads(preprocessor.read_text()) if preprocessor.is_file() else {}
        default_mean, default_std = (CLIP_MEAN, CLIP_STD) if model_type == "clip" else ((0.5,) * 3, (0.5,) * 3)
        self.mean = tuple(settings.get("image_mean", default_mean))
        self.std = tuple(settings.get("image_std", default_std))
        self.image_size = int(self.model.config.vision_config.image_size)
        self.batch_size = batch_size
        self.directory = directory
        self.embed_dim = int(getattr(self.model.config, "projection_dim", 0)
                             or self.model.config.text_config.hidden_size)
        preprocessing = f"square-resize-cubic:{self.image_size}:mean={self.mean}:std={self.std}"
        self.identity = f"hf-{model_type}:{_hash_files(weight_files + [directory / 'config.json'])}:{preprocessing}"
        self.description = f"Hugging Face {model_type} from {directory}"
        self._tokenizer = None

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = _square_resize(images[start:start + self.batch_size], self.image_size, self.mean, self.std)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)))
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    @torch.inference_mode()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor | None:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.directory))
            except (OSError, ValueError, TypeError) as error:
                raise InputError(f"teacher {self.directory}: no usable tokenizer for the text side "
                                 f"({str(error).splitlines()[0]})") from None
        # SigLIP was trained on text padded to its full length; CLIP pads to the longest prompt.
        padding = "max_length" if self.model_type == "siglip" else True
        tokens = self._tokenizer(prompts, padding=padding, truncation=True, return_tensors="pt")
        features = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                attention_mask=tokens.get("attention_mask"))
        return F.normalize(_features(features).float(), dim=-1)


class OpenClipTeacher:
    """open_clip from a local checkpoint file; open_clip imports only beside torchvision."""

    def __init__(self, architecture: str, checkpoint: str | Path, batch_size: int = 64) -> None:
        try:
            import open_clip
        except Exception as error:  # ImportError, or torchvision failing inside open_clip's import
            raise InputError(f"teacher open-clip: open_clip cannot be imported here ({type(error).__name__}: "
                             f"{str(error).splitlines()[0] if str(error) else ''}); it needs torchvision, "
                             "which does not install beside the CPU torch; use hf-clip:DIR instead") from None
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise InputError(f"teacher open-clip: checkpoint {checkpoint} not found")
        self.model = open_clip.create_model(architecture, pretrained=str(checkpoint)).eval()
        self._tokenizer = open_clip.get_tokenizer(architecture)
        visual = self.model.visual
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(getattr(visual, "image_mean", None) or CLIP_MEAN)
        self.std = tuple(getattr(visual, "image_std", None) or CLIP_STD)
        self.batch_size = batch_size
        self.embed_dim = int(self.model.text_projection.shape[1])
        preprocessing = f"square-resize-cubic:{self.image_size}:mean={self.mean}:std={self.std}"
        self.identity = f"open-clip:{architecture}:{_hash_files([checkpoint])}:{preprocessing}"
        self.description = f"open_clip {architecture} from {checkpoint}"

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        chunks = [self.model.encode_image(_square_resize(images[start:start + self.batch_size],
                                                         self.image_size, self.mean, self.std))
                  for start in range(0, len(images), self.batch_size)]
        return F.normalize(torch.cat(chunks).float(), dim=-1)

    @torch.inference_mode()
    def embed_texts(self, prompts: list[str]) -> torch.Tensor | None:
        return F.normalize(self.model.encode_text(self._tokenizer(prompts)).float(), dim=-1)


class AnnTeacher:
    """One of our own image encoders (ann_encoder.py); images are resized like the student's."""

    def __init__(self, checkpoint: str | Path, batch_size: int = 256) -> None:
        self.model, self.config, weights_identity, self.provenance = load_ann_encoder(checkpoint)
        self.batch_size = batch_size
        self.embed_dim = int(self.config["embed_dim"])
        size = (self.config["image_width"], self.config["image_height"])
        self.size = size
        self.identity = f"ann:{weights_identity}:area-resize:{size[0]}x{size[1]}"
        self.description = f"ANN {self.config['architecture']} from {checkpoint}"

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        resized = [cv2.resize(np.asarray(image), self.size, interpolation=cv2.INTER_AREA) for image in images]
        if self.config["in_channels"] == 1:
            resized = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None] for image in resized]
        batch = np.stack(resized)
        return torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        chunks = [self.model(self.preprocess(images[start:start + self.batch_size]))
                  for start in range(0, len(images), self.batch_size)]
        return torch.cat(chunks).float()

    def embed_texts(self, prompts: list[str]) -> torch.Tensor | None:
        return None


def load_teacher(spec: str, batch_size: int = 64) -> Teacher:
    kind, _, location = spec.partition(":")
    if not location:
        raise InputError(f"teacher spec {spec!r}: expected hf-clip:DIR, hf-siglip:DIR, hf:DIR, "
                         "open-clip:ARCH:FILE or ann:FILE")
    if kind in ("hf-clip", "hf-siglip", "hf"):
        return HuggingFaceTeacher(location, {"hf-clip": "clip", "hf-siglip": "siglip"}.get(kind), batch_size)
    if kind == "open-clip":
        architecture, _, checkpoint = location.partition(":")
        if not checkpoint:
            raise InputError(f"teacher spec {spec!r}: expected open-clip:ARCH:FILE (e.g. open-clip:ViT-B-32:/path/model.bin)")
        return OpenClipTeacher(architecture, checkpoint, batch_size)
    if kind == "ann":
        return AnnTeacher(location)
    raise InputError(f"teacher spec {spec!r}: unknown kind {kind!r}; expected hf-clip, hf-siglip, hf, "
                     "open-clip or ann")


def class_text_embeddings(teacher: Teacher, class_names: list[str], templates: list[str]) -> torch.Tensor | None:
    """t_k: each class's text embedding averaged over prompt templates (design §6), unit length."""
    if not templates:
        raise InputError("teacher.prompt_templates: expected at least one template such as 'a photo of a {}.'")
    per_template = []
    for template in templates:
        if "{}" not in template:
            raise InputError(f"teacher.prompt_templates: {template!r} has no '{{}}' for the class name")
        embedded = teacher.embed_texts([template.format(name.replace("_", " ")) for name in class_names])
        if embedded is None:
            return None
        per_template.append(embedded)
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
