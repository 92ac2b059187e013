"""``vlpeft methods show NAME``: everything a user can set on a method, and where its defaults come from."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from typing import Any

from vlpeft.methods.base import RANGES, Method, MethodConfig, get_method


def describe_method(name: str, dim: int = 512, classes: int = 100, shots: int = 16) -> dict[str, Any]:
    """A method's family, paper, summary, settings (type, default, range, note), presets, sources, needs."""
    from vlpeft.methods.params import trainable_parameter_count

    cls = get_method(name)
    config_cls = cls.config_class
    notes = _field_notes(config_cls)
    hints = typing.get_type_hints(config_cls)
    settings = [
        {
            "name": f.name,
            "type": _type_name(hints[f.name]),
            "default": _default(f),
            "range": str(RANGES[f.name]) if f.name in RANGES else "",
            "note": notes.get(f.name, ""),
        }
        for f in dataclasses.fields(config_cls)
    ]
    return {
        "name": cls.name,
        "family": cls.family,
        "paper": cls.paper,
        "summary": (inspect.getdoc(cls) or "").split("\n\n")[0],
        "module": cls.__module__,
        "settings": settings,
        "dataset_presets": {k: dict(v) for k, v in cls.dataset_presets.items()},
        "defaults_from": _sources(config_cls),
        "trainable_parameters": {
            "D": dim,
            "C": classes,
            "K": shots,
            "count": trainable_parameter_count(cls, dim, classes, shots, 512, 768),
        },
        "needs": _needs(cls),
    }


def _needs(cls: type[Method]) -> list[str]:
    out = []
    if getattr(cls, "needs_pixels", False):
        out.append("pixels: it changes the image encoder, so training encodes images (no feature cache)")
    else:
        out.append("cached image features only (each image encoded once)")
    if getattr(cls, "needs_backbone", False) or getattr(cls, "needs_pixels", False):
        out.append("the backbone's text encoder while training")
    from vlpeft.methods.prompts.deep import PixelPromptLearner

    if issubclass(cls, PixelPromptLearner):
        out.append("a CLS-pooled ViT (CLIP) for its visual prompts")
    if "towers" in cls.config_class.field_names():
        out.append("towers: which encoders it adapts (--set towers=vision|text|both)")
    return out


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _config_classes(config_cls: type[MethodConfig]) -> list[type]:
    return [c for c in config_cls.__mro__ if isinstance(c, type) and issubclass(c, MethodConfig)]


def _field_notes(config_cls: type[MethodConfig]) -> dict[str, str]:
    """The inline comment of each field, from the nearest class that declares it."""
    notes: dict[str, str] = {}
    for klass in _config_classes(config_cls):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            match = re.match(r"\s+(\w+): [^=]+=[^#]*#\s*(.+)$", line)
            if match and match.group(1) not in notes:
                notes[match.group(1)] = match.group(2).strip()
    return notes


def _sources(config_cls: type[MethodConfig]) -> list[str]:
    """The comment lines at the top of each config class body: the official files the defaults come from."""
    out = []
    for klass in _config_classes(config_cls):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        lines = lines[next(i for i, line in enumerate(lines) if line.lstrip().startswith("class ")) + 1 :]
        block = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                block.append(stripped.lstrip("# "))
            elif stripped and not stripped.startswith(('"""', "'''")):
                break
        if block:
            out.append(f"{klass.__name__}: " + " ".join(block))
    return out
