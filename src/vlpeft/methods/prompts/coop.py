"""CoOp: learned context vectors in front of each class name (and its CoCoOp-paper setting)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlpeft.methods.base import register_method
from vlpeft.methods.prompts.base import PromptConfig, PromptHead, coop_epochs


@register_method
class CoOp(PromptHead):
    """CoOp: context optimisation — learned context vectors in front of each class name.

    Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
    https://arxiv.org/abs/2109.01134; official code KaiyangZhou/CoOp ``trainers/coop.py``.
    Unified or class-specific context, class token at the end/middle/front, random N(0, 0.02) or
    word initialisation. Epochs follow ``scripts/coop/main.sh``: 50 for 1 shot, 100 for 2-4, 200
    for 8-16; ImageNet always 50. Trains on cached augmented views in float32 (the code uses
    float16 CLIP). See ``coop-ctxv1`` for the setting the CoCoOp paper used.

    Example: ``vlpeft train --method coop --shots 16 --set n_ctx=16 --set class_specific=true ...``
    """

    name = "coop"
    paper = "https://arxiv.org/abs/2109.01134"

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        return {**super().preset(dataset, shots), **coop_epochs(dataset, shots)}


@dataclass
class CoOpCtxV1Config(PromptConfig):
    # KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ctxv1.yaml (vit_b16_ep50_ctxv1 for ImageNet), as
    # scripts/cocoop/base2new_train.sh runs CoOp for the CoCoOp paper: init "a photo of a" (4 tokens).
    ctx_init: str = "a photo of a"
    n_ctx: int = 4


@register_method
class CoOpCtxV1(CoOp):
    """CoOp as the CoCoOp paper ran it: context initialised from "a photo of a", 200 epochs.

    Same method as ``coop`` (IJCV 2022); the setting of Zhou et al., "Conditional Prompt Learning
    for Vision-Language Models", CVPR 2022 (``configs/trainers/CoOp/vit_b16_ctxv1.yaml``).
    With the dataset template "a photo of a {}." it starts exactly at zero-shot CLIP.

    Example: ``vlpeft train --method coop-ctxv1 --subsample base ...``
    """

    name = "coop-ctxv1"
    paper = "https://arxiv.org/abs/2203.05557"
    config_class = CoOpCtxV1Config
    identity_at_init = True

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        return {"epochs": 50} if dataset == "ImageNet" else {}
