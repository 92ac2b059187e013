"""``load_backbone(spec)``: resolve a backbone spec and load it.

Specs: ``hf:<hub id>`` (downloaded through transformers' cache), ``local:<dir>`` (a
``save_pretrained`` directory), or a bare path to such a directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from vlpeft.backbones.base import Backbone
from vlpeft.backbones.hf import FAMILIES, HFBackbone
from vlpeft.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform
from vlpeft.errors import BackboneError

logger = logging.getLogger(__name__)

SPEC_FORMS = (
    "'embedded' (vlpeft's own small CLIP), 'hf:<hub id>' (e.g. hf:openai/clip-vit-base-patch16), "
    "'local:<dir>', or a path to a checkpoint dir"
)
EMBEDDED = "embedded"
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
DTYPES |= {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def embedded_dir() -> Path:
    """Where the embedded checkpoint is installed (package data)."""
    from importlib.resources import files

    return Path(str(files("vlpeft") / "assets" / "embedded"))


def parse_spec(spec: str) -> tuple[str, str]:
    """``(kind, target)`` with kind ``hf`` or ``local`` (``embedded`` is a local directory)."""
    if spec == EMBEDDED:
        path = embedded_dir()
        if not (path / "config.json").is_file():
            raise BackboneError(
                f"The embedded checkpoint is missing from this installation ({path}); reinstall vlpeft."
            )
        return "local", str(path)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "hf" and rest:
        return "hf", rest
    if sep and prefix == "local" and rest:
        return "local", rest
    if Path(spec).expanduser().is_dir():
        return "local", spec
    if sep and len(prefix) > 1:
        raise BackboneError(f"Unknown backbone spec prefix '{prefix}:' in '{spec}'. Use {SPEC_FORMS}.")
    raise BackboneError(
        f"Backbone '{spec}' is neither a known spec nor an existing directory. Use {SPEC_FORMS}."
    )


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise BackboneError(f"Unknown dtype '{dtype}'. Choose one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def load_backbone(
    spec: str, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> Backbone:
    """Load a frozen backbone from ``spec`` onto ``device`` (see the module docstring for specs)."""
    kind, target = parse_spec(spec)
    source = target if kind == "hf" else str(_checked_local_dir(target))
    if spec == EMBEDDED and dtype is None:
        dtype = torch.float32  # stored as float16 to halve the package; computed in float32
    backbone = _load_hf(source, spec, hub=kind == "hf", dtype=resolve_dtype(dtype))
    backbone.requires_grad_(False)
    return backbone.eval().to(device)


def _checked_local_dir(target: str) -> Path:
    path = Path(target).expanduser().resolve()
    if not path.is_dir():
        raise BackboneError(f"Checkpoint directory '{path}' does not exist. Use {SPEC_FORMS}.")
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"'{path}' has no config.json, so it is not a save_pretrained checkpoint directory. "
            "Save one with `model.save_pretrained(dir)` or create a tiny one with "
            "`vlpeft models init-tiny DIR`."
        )
    weights = (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
    if not any((path / f).is_file() for f in weights):
        raise BackboneError(
            f"'{path}' has a config.json but no weights (none of {list(weights)}). A loadable checkpoint "
            "directory holds config.json, the weights (model.safetensors) and the tokenizer files, as "
            "`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)` write them; copy the missing "
            "file from the original checkpoint."
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise BackboneError(
            f"'{path}' has no tokenizer files (one of {list(TOKENIZER_FILES)}). Copy the tokenizer files "
            "of the original checkpoint into it (`tokenizer.save_pretrained(dir)`)."
        )
    return path


def _hub_error(spec: str, source: str, err: Exception) -> BackboneError:
    reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    return BackboneError(
        f"Could not load '{source}' from the Hugging Face Hub ({reason}). "
        "If the hub cannot be reached from this machine, download the checkpoint elsewhere "
        f"(`hf download {source} --local-dir DIR`), copy DIR here and use 'local:DIR'; if it is already in "
        "the local cache, set HF_HUB_OFFLINE=1. If the id is misspelled, check it on huggingface.co."
    )


def _load_hf(source: str, spec: str, hub: bool, dtype: torch.dtype | None) -> HFBackbone:
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        if hub:
            raise _hub_error(spec, source, err) from None
        raise BackboneError(f"Could not read the config of '{source}': {err}") from None
    if config.model_type not in FAMILIES:
        raise BackboneError(
            f"'{spec}' is a '{config.model_type}' checkpoint; vlpeft supports model types {list(FAMILIES)}."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as err:
        raise BackboneError(f"Could not load the tokenizer of '{spec}': {err}") from None
    model_cls = CLIPModel if config.model_type == "clip" else SiglipModel
    model = model_cls.from_pretrained(source, dtype=dtype, attn_implementation="sdpa")
    return HFBackbone(model, tokenizer, _load_transform(source, config), spec)


def _load_transform(source: str, config) -> ImageTransform:
    """The checkpoint's eval transform from its ``preprocessor_config.json`` (or family defaults)."""
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
    if path is not None and os.path.isfile(path):
        return ImageTransform.from_processor_config(json.loads(Path(path).read_text(encoding="utf-8")))
    size = int(config.vision_config.image_size)
    logger.warning(
        "'%s' has no preprocessor_config.json; using the %s default transform", source, config.model_type
    )
    if config.model_type == "siglip":
        return ImageTransform(
            shortest_edge=None, size=(size, size), crop=None, mean=(0.5,) * 3, std=(0.5,) * 3
        )
    return ImageTransform(shortest_edge=size, crop=(size, size), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
