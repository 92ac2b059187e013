"""Feature heads and cache models: methods on frozen image features and class text embeddings.

They never see pixels: they train (or search) on cached features of the support images and their
augmented views, so a grid of them encodes each image once. ``base.py`` holds the interface.
"""

from vlpeft.methods.heads import (
    ape,
    clap,
    clip_adapter,
    cross_modal,
    linear_probe,
    lp_pp,
    taskres,
    tip_adapter,
    zero_shot,
)
from vlpeft.methods.heads.base import FeatureHead

__all__ = [
    "FeatureHead",
    "ape",
    "clap",
    "clip_adapter",
    "cross_modal",
    "linear_probe",
    "lp_pp",
    "taskres",
    "tip_adapter",
    "zero_shot",
]
