"""ZS-LP and CLAP: a zero-shot-initialised linear probe, optionally held near the text prototypes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.configs import TrainedHeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData
from vlpeft.training.loop import train_head

CONSTRAINTS = ("none", "l2", "balanced")


@dataclass
class ZSLPConfig(TrainedHeadConfig):
    # jusiro/CLAP configs/trainers/SGD_lr1e-1_B256_ep300.yaml and trainers/adapters.py
    templates: str = "default"  # single template; ImageNet: the 7 selected + "a photo of a {}."
    add_dataset_template: bool = True
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 0.0
    epochs: int = 300
    batch_size: int = 256
    views: int = 20  # epochs_aumentation = 20 cached augmented views of the support set
    sampling: str = "pool"  # batches are drawn from the pool of all cached views
    constraint: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(f"constraint must be one of {list(CONSTRAINTS)}, got '{self.constraint}'.")


@register_method
class ZSLP(FeatureHead):
    """ZS-LP: class prototypes initialised with the zero-shot text embeddings, trained by SGD.

    Logits ``s * cos(f, w_c)`` (no bias). Baseline of Silva-Rodríguez et al., "A Closer Look at
    the Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024,
    https://arxiv.org/abs/2312.12730; official code jusiro/CLAP ``trainers/adapters.py``.
    At initialisation the logits are zero-shot CLIP's. Last epoch, no validation (as the code).

    Example: ``vlpeft train --method zs-lp --shots 16 ...``
    """

    name = "zs-lp"
    paper = "https://arxiv.org/abs/2312.12730"
    config_class = ZSLPConfig
    trained_by_gradient = True
    identity_at_init = True

    def prepare(self, data: HeadData) -> None:
        text = data.text.raw_mean(self.config.templates, self.config.add_dataset_template)  # (C, D) raw
        self.prototypes = nn.Parameter(text.clone())
        self.register_buffer("text", text)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))
        self.register_buffer("penalty_weights", self._penalty_weights(data, text))

    def _penalty_weights(self, data: HeadData, text: torch.Tensor) -> torch.Tensor:
        """CLAP's lambda_c: mean zero-shot probability of the true class over class c's support views."""
        constraint = self.config.constraint
        if constraint != "l2":
            return torch.full((data.num_classes,), 1.0 if constraint == "balanced" else 0.0)
        feats = F.normalize(data.train.features.flatten(0, 1), dim=-1)  # (V*N, D), every view
        labels = data.train.labels.repeat(data.train.num_views)
        probs = (self.logit_scale * feats @ F.normalize(text, dim=-1).t()).softmax(dim=-1)
        true = probs.gather(1, labels[:, None]).squeeze(1)
        sums = torch.zeros(data.num_classes).index_add_(0, labels, true)
        counts = torch.zeros(data.num_classes).index_add_(0, labels, torch.ones_like(true))
        return sums / counts.clamp(min=1)

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        report = train_head(self, data, self.config)
        return {**report, "penalty_weights_mean": float(self.penalty_weights.mean())}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(features, dim=-1) @ F.normalize(self.prototypes, dim=-1).t()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(self.logits(features), labels)
        if self.config.constraint == "none":
            return ce
        distance = (self.prototypes - self.text).pow(2).sum(dim=-1)  # ||w_c - t_c||^2 on raw vectors
        constraint = (self.penalty_weights * distance).mean()
        self.record_terms(ce=ce, constraint=constraint)
        return ce + constraint


@dataclass
class CLAPConfig(ZSLPConfig):
    # jusiro/CLAP train.py: CONSTRAINT default "l2" (the released experiments use "ZS l2")
    constraint: str = "l2"


@register_method
class CLAP(ZSLP):
    """CLAP: ZS-LP with a class-adaptive penalty ``mean_c lambda_c ||w_c - t_c||^2``.

    Silva-Rodríguez et al., CVPR 2024, https://arxiv.org/abs/2312.12730 (jusiro/CLAP).
    ``lambda_c`` is the average zero-shot probability of class c over its support images
    (all augmented views). The paper describes an augmented-Lagrangian update of lambda; the
    released default ("l2", used for all published experiments) keeps lambda fixed at this
    initialisation, and so do we. The penalty is a mean over classes on unnormalised vectors,
    as in the code.

    Example: ``vlpeft train --method clap --shots 4 ...``
    """

    name = "clap"
    config_class = CLAPConfig
