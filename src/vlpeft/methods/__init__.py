"""Methods, one sub-package per family; importing this package registers every method.

- ``base.py``: the :class:`Method` interface, :class:`MethodConfig` and the registry;
  ``configs.py`` the config fields families share, ``inputs.py`` what a method learns from.
- ``heads/``: feature heads and cache models (on cached image features).
- ``prompts/``: text and visual/deep prompt learners.
- ``adapters/``: module adapters and fine-tuning (on a private copy of the backbone).

A new method is one module in its family's folder, imported by that folder's ``__init__``.
"""

from vlpeft.methods import adapters, heads, prompts
from vlpeft.methods.adapters import ModuleAdapter
from vlpeft.methods.base import METHODS, Method, MethodConfig, get_method, list_methods, register_method
from vlpeft.methods.heads import FeatureHead
from vlpeft.methods.inputs import ClassText, HeadData, PixelData
from vlpeft.methods.prompts import PixelPromptLearner, PromptHead

__all__ = [
    "METHODS",
    "ClassText",
    "FeatureHead",
    "HeadData",
    "Method",
    "MethodConfig",
    "ModuleAdapter",
    "PixelData",
    "PixelPromptLearner",
    "PromptHead",
    "adapters",
    "get_method",
    "heads",
    "list_methods",
    "prompts",
    "register_method",
]
