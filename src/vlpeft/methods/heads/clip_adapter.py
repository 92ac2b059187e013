"""CLIP-Adapter: a residual bottleneck MLP on the image features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.methods.base import register_method
from vlpeft.methods.configs import TrainedHeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData
from vlpeft.training.loop import train_head


@dataclass
class CLIPAdapterConfig(TrainedHeadConfig):
    # gaopengcuhk/CLIP-Adapter clip_adapter.py (adapter, ratio 0.2); its README says to train with
    # CoOp's recipe: KaiyangZhou/CoOp configs/trainers/CoOp/rn50.yaml (SGD 0.002, batch 32, 200
    # epochs, cosine, 1 constant warm-up epoch at 1e-5) with Dassl defaults (wd 5e-4, momentum 0.9).
    templates: str = "single"  # CoOp's CUSTOM_TEMPLATES, one per dataset (ImageNet too)
    reduction: int = 4
    ratio: float = 0.2  # residual ratio: f' = ratio * A(f) + (1 - ratio) * f


@register_method
class CLIPAdapter(FeatureHead):
    """CLIP-Adapter: ``f' = r * MLP(f) + (1 - r) * f``; logits ``s * cos(f', t)``.

    Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters", IJCV 2023,
    https://arxiv.org/abs/2110.04544; official code gaopengcuhk/CLIP-Adapter. The MLP is
    ``Linear(D, D/4, no bias) -> ReLU -> Linear(D/4, D, no bias) -> ReLU`` on the raw image
    feature. The released code fixes r = 0.2 (the paper tunes it per dataset).

    Example: ``vlpeft train --method clip-adapter --set ratio=0.6 ...``
    """

    name = "clip-adapter"
    paper = "https://arxiv.org/abs/2110.04544"
    config_class = CLIPAdapterConfig
    trained_by_gradient = True

    def build(self, num_classes: int, embed_dim: int) -> None:
        hidden = embed_dim // self.config.reduction
        self.adapter = nn.Sequential(
            nn.Linear(embed_dim, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, embed_dim, bias=False),
            nn.ReLU(inplace=True),
        )

    def prepare(self, data: HeadData) -> None:
        self.build(data.num_classes, data.train.features.shape[-1])
        self.register_buffer("weights", data.text.weights(self.config.templates))
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        return train_head(self, data, self.config)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        ratio = self.config.ratio
        adapted = ratio * self.adapter(features) + (1 - ratio) * features
        return self.logit_scale * F.normalize(adapted, dim=-1) @ self.weights.t()
