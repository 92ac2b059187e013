"""Tiny randomly initialised CLIP/SigLIP checkpoints, for tests and offline pipelines.

``init_tiny(dir)`` writes a complete ``save_pretrained`` directory — weights, config,
tokenizer files and ``preprocessor_config.json`` — that ``load_backbone("local:dir")`` and
plain transformers both load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vlpeft.backbones.tokenizers import write_clip_tokenizer, write_siglip_tokenizer
from vlpeft.data.templates import IMAGENET_TEMPLATES
from vlpeft.data.transforms import ImageTransform
from vlpeft.errors import ConfigError
from vlpeft.io import atomic_directory

TINY_FAMILIES = ("clip", "siglip")

# Common words so that prompts and class names of the usual datasets tokenize compactly.
BASIC_WORDS = (
    "a an the of and or with in on at photo picture image texture type pet flower food aircraft satellite "
    "centered person doing cat dog bird car plane ship truck horse deer frog fish tree road river lake sea "
    "forest land crop industrial buildings residential highway pasture red green blue yellow black white "
    "gray orange purple pink brown circle square triangle star heart cross ring shape small large big one "
    "two three four five many striped dotted plain sketch drawing painting cartoon rendering noisy blurry"
)


@dataclass(frozen=True)
class TinySize:
    """Widths and depths of a tiny model (both towers use the same transformer size)."""

    width: int = 32
    layers: int = 2
    heads: int = 2
    mlp: int = 64
    embed_dim: int = 16
    image_size: int = 32
    patch_size: int = 8
    context_length: int = 77


def tiny_corpus() -> list[str]:
    return [*IMAGENET_TEMPLATES, BASIC_WORDS]


def _tower(size: TinySize) -> dict:
    return dict(
        hidden_size=size.width,
        intermediate_size=size.mlp,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
    )


def _clip_model(directory: Path, size: TinySize, corpus: list[str]):
    from transformers import CLIPConfig, CLIPModel

    vocab = write_clip_tokenizer(directory, corpus, max_length=size.context_length)
    text = dict(_tower(size), vocab_size=vocab, max_position_embeddings=size.context_length)
    text.update(bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    vision = dict(_tower(size), image_size=size.image_size, patch_size=size.patch_size)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.embed_dim)
    transform = ImageTransform(shortest_edge=size.image_size, crop=(size.image_size, size.image_size))
    return CLIPModel(config), transform, "CLIPImageProcessor"


def _siglip_model(directory: Path, size: TinySize, corpus: list[str]):
    from transformers import SiglipConfig, SiglipModel

    length = min(size.context_length, 64)
    vocab = write_siglip_tokenizer(directory, corpus, max_length=length)
    text = dict(_tower(size), vocab_size=vocab, max_position_embeddings=length, projection_size=size.width)
    text.update(pad_token_id=1, eos_token_id=1, bos_token_id=None)
    vision = dict(_tower(size), image_size=size.image_size, patch_size=size.patch_size)
    config = SiglipConfig(text_config=text, vision_config=vision)
    hw = (size.image_size, size.image_size)
    transform = ImageTransform(shortest_edge=None, size=hw, crop=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    return SiglipModel(config), transform, "SiglipImageProcessor"


def init_tiny(
    directory: str | os.PathLike,
    family: str = "clip",
    seed: int = 0,
    size: TinySize | None = None,
    corpus: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a tiny random ``family`` checkpoint to ``directory`` (atomically) and return its path."""
    if family not in TINY_FAMILIES:
        raise ConfigError(f"Unknown model family '{family}'. Choose one of {list(TINY_FAMILIES)}.")
    size = size or TinySize()
    build = _clip_model if family == "clip" else _siglip_model
    with atomic_directory(directory, overwrite=overwrite) as tmp, torch.random.fork_rng():
        torch.manual_seed(seed)
        model, transform, processor_type = build(tmp, size, corpus or tiny_corpus())
        model.save_pretrained(tmp)
        processor = {"image_processor_type": processor_type, **transform.to_processor_config()}
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2), encoding="utf-8")
    return Path(directory)
