"""vlpeft: parameter-efficient adaptation of vision-language models (CLIP, SigLIP and kin).

The public API is imported lazily so that ``import vlpeft`` (and the CLI) start fast; the
dataset registry is filled on import.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from vlpeft.data import list_datasets, load_dataset

_LAZY = {
    "load_backbone": "vlpeft.backbones",
    "init_tiny": "vlpeft.backbones",
    "Backbone": "vlpeft.backbones",
    "class_embeddings": "vlpeft.text",
    "EvalConfig": "vlpeft.engine.evaluate",
    "run_zero_shot_eval": "vlpeft.engine.evaluate",
}

__all__ = ["__version__", "list_datasets", "load_dataset", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vlpeft' has no attribute '{name}'")
