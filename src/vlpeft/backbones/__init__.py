"""Backbones: one interface over transformers CLIP and SigLIP checkpoints."""

from vlpeft.backbones.base import Backbone
from vlpeft.backbones.loading import load_backbone, parse_spec
from vlpeft.backbones.tiny import TinySize, init_tiny

__all__ = ["Backbone", "TinySize", "init_tiny", "load_backbone", "parse_spec"]
