"""Small stand-ins for the training tests: a tiny random CLIP directory, image folders and
frame-aligned traverses written to a temporary directory."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

TINY_STUDENT = {"embed_dims": 16, "num_heads": 2, "depths": 1, "timesteps": 2, "descriptor_dim": 16}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def write_tiny_clip(directory: Path) -> Path:
    """A randomly initialised CLIPModel and a byte-level tokenizer (no merges), save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab = {token: index for index, token in enumerate(alphabet + [c + "</w>" for c in alphabet]
                                                        + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))
    out = directory / "clip"
    tokenizer.save_pretrained(str(out))
    end, start = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
                     "eos_token_id": end, "bos_token_id": start, "pad_token_id": end},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(out))
    return out


def write_tiny_siglip(directory: Path) -> Path:
    """A randomly initialised SiglipModel with the tiny CLIP's byte-level tokenizer beside it
    (SigLIP's own tokenizer needs a SentencePiece model file, which no wheel here ships)."""
    import shutil

    import torch
    from transformers import SiglipConfig, SiglipModel

    clip = write_tiny_clip(directory / "clip_source")
    out = directory / "siglip"
    out.mkdir(parents=True)
    for name in ("tokenizer_config.json", "tokenizer.json"):
        shutil.copy(clip / name, out / name)
    vocab_size = len(json.loads((clip.parent / "vocab.json").read_text()))
    config = SiglipConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16})
    torch.manual_seed(0)
    SiglipModel(config).save_pretrained(str(out))
    return out


def write_class_folders(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 32) -> Path:
    """Classes told apart by colour, so a few steps can learn something."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[:, :, label % 3] += 150
            cv2.imwrite(str(root / name / f"{index:04d}.jpg"), image)
    return root


def write_traverses(root: Path, places: int = 40) -> tuple[Path, Path]:
    """Two 'seasons' of a route: the same random scene per place, the second darker and noisier."""
    rng = np.random.default_rng(1)
    summer, winter = root / "summer", root / "winter"
    summer.mkdir(parents=True, exist_ok=True)
    winter.mkdir(parents=True, exist_ok=True)
    for place in range(places):
        scene = rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)
        noisy = np.clip(scene * 0.6 + rng.normal(0, 10, scene.shape), 0, 255).astype(np.uint8)
        name = f"images-{210 + 10 * place:05d}.png"
        cv2.imwrite(str(summer / name), scene)
        cv2.imwrite(str(winter / name), noisy)
    return summer, winter
