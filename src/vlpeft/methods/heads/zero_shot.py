"""Zero-shot CLIP."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlpeft.methods.base import register_method
from vlpeft.methods.configs import HeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import ClassText, HeadData


@dataclass
class ZeroShotConfig(HeadConfig):
    # KaiyangZhou/CoOp trainers/zsclip.py: ZeroshotCLIP uses the dataset's template ("single");
    # ZeroshotCLIP2 the 7 selected ImageNet templates + the dataset's ("ensemble").
    templates: str = "single"


@register_method
class ZeroShot(FeatureHead):
    """Zero-shot classification: ``logit_scale * cos(image, class prompt) + logit_bias``.

    Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
    ICML 2021, https://arxiv.org/abs/2103.00020. Class weights are the normalised mean of the
    normalised prompt embeddings over the templates.

    Example: ``vlpeft train --method zero-shot --set templates=ensemble ...``
    """

    name = "zero-shot"
    paper = "https://arxiv.org/abs/2103.00020"
    config_class = ZeroShotConfig
    identity_at_init = True
    needs_train = False
    transfers_to_new_classes = True  # new classes: the weights of their prompts (base-to-new, cross-dataset)

    def prepare(self, data: HeadData) -> None:
        self.register_buffer("weights", data.text.weights(self.config.templates))  # (C, D)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))
        self.register_buffer("logit_bias", torch.tensor(float(data.logit_bias)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(features, dim=-1) @ self.weights.t() + self.logit_bias

    def retarget(self, backbone, text: ClassText) -> None:
        """Zero-shot weights of the new classes' prompts (with their dataset's templates)."""
        self.bind(backbone)
        self.weights = text.weights(self.config.templates).to(self.weights)

    def bind(self, backbone) -> None:
        object.__setattr__(self, "_backbone", backbone)

    def export_parts(self, merge: bool = False):
        weight = (self.logit_scale * self.weights).float().cpu()
        return (
            self.__dict__["_backbone"].model,
            weight,
            self.logit_bias.float().cpu().expand(len(weight)).clone(),
        )
