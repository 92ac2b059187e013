"""TaskRes: a learnable task residual on the zero-shot text classifier."""

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
class TaskResConfig(TrainedHeadConfig):
    # geekyutao/TaskRes configs/trainers/TaskRes/adam_lr2e-3_B256_ep200.yaml and scripts/train_regular.sh
    templates: str = "default"  # single template; ImageNet: the 7 selected + "a photo of a {}."
    add_dataset_template: bool = True
    residual_scale: float = 0.5  # train_regular.sh: 0.5 (1.0 for OxfordFlowers)
    optimizer: str = "adam"
    lr: float = 2e-3  # 2e-4 for ImageNet
    weight_decay: float = 5e-4  # Dassl default, coupled L2 in Adam
    epochs: int = 200  # 100 for 1/2/4 shots
    batch_size: int = 256
    views: int = 10


@register_method
class TaskRes(FeatureHead):
    """TaskRes: ``t' = t + alpha * x`` with ``x`` zero-initialised; logits ``s * cos(f, t')``.

    Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023,
    https://arxiv.org/abs/2211.10277; official code geekyutao/TaskRes ``trainers/taskres.py``.
    ``t`` is the mean of the *unnormalised* template embeddings; the residual is added before
    normalising. At initialisation the logits are exactly zero-shot CLIP's. The regular base
    is implemented (the "enhanced base" needs a separately trained text projection).

    Example: ``vlpeft train --method taskres --set residual_scale=0.5 ...``
    """

    name = "taskres"
    paper = "https://arxiv.org/abs/2211.10277"
    config_class = TaskResConfig
    trained_by_gradient = True
    identity_at_init = True
    dataset_presets = {"OxfordFlowers": {"residual_scale": 1.0}, "ImageNet": {"lr": 2e-4}}

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        out = super().preset(dataset, shots)
        if shots is not None and shots <= 4:
            out["epochs"] = 100
        return out

    def prepare(self, data: HeadData) -> None:
        base = data.text.raw_mean(self.config.templates, self.config.add_dataset_template)  # (C, D)
        self.register_buffer("base", base)
        self.residual = nn.Parameter(torch.zeros_like(base))
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        return train_head(self, data, self.config)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        weights = F.normalize(self.base + self.config.residual_scale * self.residual, dim=-1)
        return self.logit_scale * F.normalize(features, dim=-1) @ weights.t()
