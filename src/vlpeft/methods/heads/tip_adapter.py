"""Tip-Adapter and Tip-Adapter-F: a key-value cache of the few-shot images beside zero-shot CLIP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.data.transforms import AugmentSpec
from vlpeft.methods.base import register_method
from vlpeft.methods.configs import HeadConfig, TrainedHeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData, TrainViews
from vlpeft.training.loop import train_head

# gaopengcuhk/Tip-Adapter configs/<dataset>.yaml: init_alpha, search_scale [beta, alpha], train_epoch
# (init_beta 1, search_step [200, 20], lr 1e-3, augment_epoch 10 everywhere).
TIP_PRESETS: dict[str, dict[str, Any]] = {
    "ImageNet": {"init_alpha": 1.17, "search_scale": (7.0, 3.0)},
    "Caltech101": {"init_alpha": 3.0, "search_scale": (12.0, 5.0)},
    "DescribableTextures": {"init_alpha": 2.0, "search_scale": (13.0, 13.0)},
    "EuroSAT": {"init_alpha": 2.0, "search_scale": (12.0, 10.0), "epochs": 100},
    "FGVCAircraft": {"init_alpha": 5.0, "search_scale": (30.0, 30.0)},
    "Food101": {"init_alpha": 1.17, "search_scale": (10.0, 10.0)},
    "OxfordFlowers": {"init_alpha": 10.0, "search_scale": (50.0, 50.0)},
    "OxfordPets": {"init_alpha": 1.17, "search_scale": (7.0, 3.0)},
    "StanfordCars": {"init_alpha": 3.0, "search_scale": (20.0, 10.0)},
    "SUN397": {"init_alpha": 1.17, "search_scale": (12.0, 10.0)},
    "UCF101": {"init_alpha": 3.0, "search_scale": (7.0, 3.0)},
}


def search_grid(scale: float, steps: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's grid (``utils.py search_hp``): ``i * (scale - start) / steps + start`` for i < steps."""
    return [i * (scale - start) / steps + start for i in range(steps)]


def cache_logits(affinity: torch.Tensor, values: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """``exp(-beta * (1 - affinity)) @ values``: (N, NK) affinities -> (N, C)."""
    return torch.exp(-(beta - beta * affinity)) @ values


def search_alpha_beta(
    clip: torch.Tensor,
    affinity: torch.Tensor,
    values: torch.Tensor,
    labels: torch.Tensor,
    beta_grid: list[float],
    alpha_grid: list[float],
) -> tuple[float, float, float]:
    """Grid search (beta outer, alpha inner, strict '>' so the first best wins) on validation."""
    best = (-1.0, alpha_grid[0], beta_grid[0])
    for beta in beta_grid:
        cache = cache_logits(affinity, values, beta)
        for alpha in alpha_grid:
            acc = float(((clip + alpha * cache).argmax(1) == labels).float().mean()) * 100
            if acc > best[0]:
                best = (acc, alpha, beta)
        del cache
    return best


def tip_search(
    head: nn.Module, clip: torch.Tensor, affinity: torch.Tensor, values: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """Search ``head``'s alpha/beta over its config's grids on validation and set them (Tip, APE-T)."""
    scale, steps = head.config.search_scale, head.config.search_step
    with torch.no_grad():
        grids = search_grid(scale[0], steps[0]), search_grid(scale[1], steps[1])
        acc, alpha, beta = search_alpha_beta(clip, affinity, values, labels, *grids)
    head.alpha.fill_(alpha)
    head.beta.fill_(beta)
    return {"alpha": alpha, "beta": beta, "val_accuracy": acc, "searched": True}


@dataclass
class TipAdapterConfig(HeadConfig):
    # gaopengcuhk/Tip-Adapter configs/imagenet.yaml (generic default; per-dataset values in TIP_PRESETS)
    templates: str = "default"  # datasets/imagenet.py: 7-template ensemble on ImageNet, else the single one
    views: int = 10  # augment_epoch
    aug_scale: tuple[float, float] = (0.5, 1.0)  # main.py: RandomResizedCrop(224, scale=(0.5, 1))
    init_alpha: float = 1.17
    init_beta: float = 1.0
    search_scale: tuple[float, float] = (7.0, 3.0)  # (beta, alpha)
    search_step: tuple[int, int] = (200, 20)
    clip_scale: float = 100.0  # main.py: clip_logits = 100. * f @ W (the code's constant, not logit_scale)


@register_method
class TipAdapter(FeatureHead):
    """Tip-Adapter: ``100 f·W + alpha · exp(-beta (1 - f·K)) · onehot(Y)`` with a training-free cache.

    Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot Classification",
    ECCV 2022, https://arxiv.org/abs/2207.09519; official code gaopengcuhk/Tip-Adapter.
    Keys: L2-normalised mean of each image's raw features over ``views`` augmented views
    (``utils.py build_cache_model``). We follow the code where it differs from the paper: the
    CLIP logits use the constant 100. Unlike the code (which searches ImageNet's alpha/beta on
    its test set), the search only ever sees the validation split the run's policy allows;
    with ``--val-policy none`` the config's init alpha/beta are used. Computed in float32
    (the official code runs in float16).

    Example: ``vlpeft train --method tip-adapter --shots 16 --val-policy fewshot ...``
    """

    name = "tip-adapter"
    paper = "https://arxiv.org/abs/2207.09519"
    config_class = TipAdapterConfig
    dataset_presets = {k: {a: b for a, b in v.items() if a != "epochs"} for k, v in TIP_PRESETS.items()}

    def train_views(self) -> TrainViews:
        return TrainViews(AugmentSpec(scale=self.config.aug_scale), self.config.views, include_eval=False)

    def prepare(self, data: HeadData) -> None:
        keys = F.normalize(data.train.features.mean(dim=0), dim=-1)  # (NK, D): mean over views, then norm
        self.register_buffer("weights", data.text.weights(self.config.templates))  # (C, D)
        self.register_buffer("keys", keys)
        self.register_buffer("values", F.one_hot(data.train.labels, data.num_classes).float())  # (NK, C)
        self.register_buffer("alpha", torch.tensor(float(self.config.init_alpha)))
        self.register_buffer("beta", torch.tensor(float(self.config.init_beta)))
        self.register_buffer("clip_scale", torch.tensor(float(self.config.clip_scale)))

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        return self.search(data)

    def search(self, data: HeadData) -> dict[str, Any]:
        """Search alpha/beta on validation (if the policy gives one); else keep the init values."""
        if data.val is None:
            return {"alpha": self.config.init_alpha, "beta": self.config.init_beta, "searched": False}
        with torch.no_grad():
            f = F.normalize(data.val.view(0), dim=-1)
            clip, affinity = self.clip_scale * f @ self.weights.t(), f @ self._keys().t()
        return tip_search(self, clip, affinity, self.values, data.val.labels)

    def _keys(self) -> torch.Tensor:
        return self.keys

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        clip = self.clip_scale * f @ self.weights.t()
        return clip + self.alpha * cache_logits(f @ self._keys().t(), self.values, self.beta)


@dataclass
class TipTrainingRecipe(TrainedHeadConfig):
    # gaopengcuhk/Tip-Adapter main.py run_tip_adapter_F (APE-T uses the same loop): AdamW, cosine over
    # train_epoch * len(loader) iterations, batch 256, fresh augmentation each batch, 20 epochs.
    optimizer: str = "adamw"
    epochs: int = 20
    batch_size: int = 256
    schedule: str = "cosine-iter"
    warmup_epochs: int = 0
    batches_per_epoch: str = "ceil"
    views: int = 10
    aug_scale: tuple[float, float] = (0.5, 1.0)
    select_on_val: bool = True


@dataclass
class TipAdapterFConfig(TipTrainingRecipe, TipAdapterConfig):
    # gaopengcuhk/Tip-Adapter configs/imagenet.yaml: lr 1e-3; main.py: AdamW(eps=1e-4)
    lr: float = 1e-3
    weight_decay: float = 0.01  # torch AdamW default (the code does not set it)
    eps: float = 1e-4


@register_method
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: Tip-Adapter whose cache keys are fine-tuned (alpha, beta fixed while training).

    Same paper and code as Tip-Adapter (``main.py run_tip_adapter_F``). The official code keeps
    the epoch with the best *test* accuracy; we keep the best *validation* epoch (the last
    epoch under ``--val-policy none``), then search alpha/beta on validation as the code does.

    Example: ``vlpeft train --method tip-adapter-f --shots 16 ...``
    """

    name = "tip-adapter-f"
    config_class = TipAdapterFConfig
    trained_by_gradient = True
    dataset_presets = TIP_PRESETS

    def prepare(self, data: HeadData) -> None:
        super().prepare(data)
        self.adapter = nn.Parameter(self.keys.clone())  # (NK, D), Linear(D, NK).weight = keys
        del self._buffers["keys"]

    def _keys(self) -> torch.Tensor:
        return self.adapter  # not renormalised during training, as in the code

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        report = train_head(self, data, self.config)
        return {**report, **self.search(data)}
