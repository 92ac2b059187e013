"""vlpeft: parameter-efficient adaptation of vision-language models (CLIP, SigLIP and kin).

The public API is imported lazily so that ``import vlpeft`` (and the CLI) start fast; the
dataset registry (the standard datasets and the embedded world's) is filled on import.
"""

from __future__ import annotations

from typing import Any

from vlpeft import world as _world  # noqa: F401  (registers the generated world datasets)
from vlpeft._version import __version__
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
