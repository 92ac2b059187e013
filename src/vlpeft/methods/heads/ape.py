"""APE and APE-T: Tip-Adapter's cache restricted to the most discriminative feature channels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.data.transforms import AugmentSpec
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.configs import HeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.heads.tip_adapter import TipTrainingRecipe, cache_logits, search_grid, tip_search
from vlpeft.methods.inputs import HeadData, TrainViews
from vlpeft.training.loop import train_head

# yangyangyang127/APE configs/<dataset>.yaml (commit 70460de): init_alpha/beta/gamma, search_scale and
# search_step (beta, alpha, gamma: 200, 20, 20 on every dataset but ImageNet's 200, 20, 5),
# training_free_feat_num, w_training_free; APE-T: lr, eps, train_epoch, training_feat_num.
APE_PRESETS: dict[str, dict[str, Any]] = {
    "ImageNet": dict(
        init_alpha=2.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 0.5),
        search_step=(200, 20),
        gamma_steps=5,
        feat_num=500,
        w=(0.7, 0.3),
    ),
    "Caltech101": dict(
        init_alpha=1.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=800,
        w=(0.5, 0.5),
    ),
    "OxfordPets": dict(
        init_alpha=2.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=800,
        w=(0.7, 0.3),
    ),
    "StanfordCars": dict(
        init_alpha=1.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(10.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=500,
        w=(0.6, 0.4),
    ),
    "OxfordFlowers": dict(
        init_alpha=3.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=700,
        w=(0.4, 0.6),
    ),
    "Food101": dict(
        init_alpha=0.8,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=700,
        w=(0.3, 0.7),
    ),
    "FGVCAircraft": dict(
        init_alpha=5.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(20.0, 10.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=800,
        w=(0.1, 0.9),
    ),
    "SUN397": dict(
        init_alpha=1.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(10.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=800,
        w=(0.7, 0.3),
    ),
    "DescribableTextures": dict(
        init_alpha=3.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(7.0, 7.0, 1.0),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=400,
        w=(0.5, 0.5),
    ),
    "EuroSAT": dict(
        init_alpha=1.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(30.0, 5.0, 1.5),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=700,
        w=(0.9, 0.1),
    ),
    "UCF101": dict(
        init_alpha=2.0,
        init_beta=1.0,
        init_gamma=0.1,
        search_scale=(10.0, 7.0, 1.5),
        search_step=(200, 20),
        gamma_steps=20,
        feat_num=700,
        w=(0.3, 0.7),
    ),
}
APE_T_PRESETS: dict[str, dict[str, Any]] = {
    "ImageNet": dict(lr=1e-4, eps=1e-3, epochs=20, feat_num=500),
    "Caltech101": dict(lr=1e-3, eps=1e-3, epochs=30, feat_num=900),
    "DescribableTextures": dict(lr=1e-3, eps=1e-3, epochs=20, feat_num=700),
    "EuroSAT": dict(lr=1e-3, eps=1e-3, epochs=200, feat_num=900),
    "FGVCAircraft": dict(lr=1e-3, eps=1e-3, epochs=30, feat_num=900),
    "Food101": dict(lr=1e-4, eps=1e-3, epochs=30, feat_num=900),
    "OxfordFlowers": dict(lr=1e-3, eps=1e-3, epochs=60, feat_num=800),
    "OxfordPets": dict(lr=1e-4, eps=2e-3, epochs=30, feat_num=800),
    "StanfordCars": dict(lr=1e-3, eps=5e-3, epochs=30, feat_num=800),
    "SUN397": dict(lr=1e-4, eps=1e-3, epochs=30, feat_num=800),
    "UCF101": dict(lr=1e-3, eps=2e-3, epochs=30, feat_num=800),
}


def interclass_similarity(groups: list[torch.Tensor]) -> torch.Tensor:
    """APE's per-channel similarity between samples of *different* classes (``utils.py cal_criterion``).

    ``sim[d] = sum_{i != j} sum_{m, n} x_{i,m,d} x_{j,n,d} / count`` over classes i, j and their
    samples m, n, computed in closed form ``((sum_i s_i)^2 - sum_i s_i^2) / count`` with
    ``s_i = sum_m x_{i,m}``; ``count`` is the number of (m, n) pairs across classes, which is
    the code's ``C (C-1) (K+1)^2`` when every class has K+1 samples.
    """
    sums = torch.stack([g.sum(0) for g in groups])  # (C, D)
    sizes = torch.tensor([float(len(g)) for g in groups])
    count = sizes.sum() ** 2 - sizes.pow(2).sum()
    return (sums.sum(0).pow(2) - sums.pow(2).sum(0)) / count


def select_channels(
    text: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, w: tuple[float, float], k: int
) -> torch.Tensor:
    """The ``k`` channels maximising ``-w0 * similarity + w1 * var_classes(text)`` (APE's criterion)."""
    groups = [torch.cat([text[c : c + 1], keys[labels == c]]) for c in range(text.shape[0])]
    criterion = -w[0] * interclass_similarity(groups) + w[1] * text.var(dim=0)  # unbiased, over classes
    return criterion.topk(min(k, text.shape[1])).indices


@dataclass
class APEConfig(HeadConfig):
    # yangyangyang127/APE configs/imagenet.yaml (generic default; per-dataset values in APE_PRESETS)
    templates: str = "default"
    prompts_file: str | None = None  # JSON {class name: [prompts]}, averaged in (APE adds CuPL's prompts)
    views: int = 10
    aug_scale: tuple[float, float] = (0.5, 1.0)
    feat_num: int = 500  # training_free_feat_num
    w: tuple[float, float] = (0.7, 0.3)  # w_training_free: (similarity, variance)
    init_alpha: float = 2.0
    init_beta: float = 1.0
    init_gamma: float = 0.1
    search_scale: tuple[float, float, float] = (7.0, 7.0, 0.5)  # (beta, alpha, gamma)
    search_step: tuple[int, int] = (200, 20)  # (beta, alpha)
    gamma_steps: int = 5  # search_step[2]: 5 in imagenet.yaml, 20 in the ten other configs
    clip_scale: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feat_num < 1:
            raise ConfigError(f"feat_num must be positive, got {self.feat_num}.")


@register_method
class APE(FeatureHead):
    """APE: adaptive prior refinement — Tip-Adapter on the channels that best separate classes.

    Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive Prior
    Refinement", ICCV 2023, https://arxiv.org/abs/2304.01195; official code yangyangyang127/APE.
    Channels: top ``feat_num`` of ``-w0 * inter-class similarity + w1 * class variance of the
    text weights``. Logits:
    ``100 f·W + alpha exp(-beta (1 - f'·F')) (L ⊙ exp(gamma KL(L || softmax(F'·W'))))``, where primes
    are the selected, re-normalised channels (``main.py APE``). The code also averages
    CuPL GPT-3 prompts into the text weights; vlpeft ships no such prompts: pass your own with
    ``prompts_file``. ``feat_num`` is capped at the feature size. alpha/beta/gamma are searched
    on validation (never test), else the init values are used.

    Example: ``vlpeft train --method ape --set prompts_file=cupl.json ...``
    """

    name = "ape"
    paper = "https://arxiv.org/abs/2304.01195"
    config_class = APEConfig
    dataset_presets = APE_PRESETS

    def train_views(self) -> TrainViews:
        return TrainViews(AugmentSpec(scale=self.config.aug_scale), self.config.views, include_eval=False)

    def _text_weights(self, data: HeadData) -> torch.Tensor:
        extra = None
        if self.config.prompts_file:
            path = Path(self.config.prompts_file)
            if not path.is_file():
                raise ConfigError(
                    f"prompts_file '{path}' not found (expected JSON: {{class name: [prompts]}})."
                )
            extra = json.loads(path.read_text(encoding="utf-8"))
        return data.text.weights(self.config.templates, extra=extra)

    def prepare(self, data: HeadData) -> None:
        keys = F.normalize(data.train.features.mean(dim=0), dim=-1)  # Tip-Adapter's cache keys
        weights = self._text_weights(data)
        self.register_buffer("weights", weights)
        self.register_buffer("keys", keys)
        self.register_buffer("values", F.one_hot(data.train.labels, data.num_classes).float())
        self.register_buffer("labels", data.train.labels.clone())
        idx = select_channels(weights, keys, data.train.labels, self.config.w, self.config.feat_num)
        self.register_buffer("channels", idx)
        for name in ("alpha", "beta", "gamma"):
            self.register_buffer(name, torch.tensor(float(getattr(self.config, f"init_{name}"))))
        self.register_buffer("clip_scale", torch.tensor(float(self.config.clip_scale)))

    def _refinement(self, gamma: float | torch.Tensor) -> torch.Tensor:
        """(NK, C) values ``L ⊙ exp(gamma * KL(L || softmax(F'·W')))`` with KL in bits."""
        keys = F.normalize(self.keys[:, self.channels], dim=-1)
        weights = F.normalize(self.weights[:, self.channels], dim=-1)
        probs = (keys @ weights.t()).softmax(dim=1)  # no temperature, as the code
        kl = (self.values * torch.log2((self.values + 1e-6) / (probs + 1e-6))).sum(dim=1, keepdim=True)
        return self.values * torch.exp(gamma * kl)

    def _parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = F.normalize(features, dim=-1)
        clip = self.clip_scale * f @ self.weights.t()  # all channels
        selected = F.normalize(f[:, self.channels], dim=-1)
        return clip, selected @ F.normalize(self.keys[:, self.channels], dim=-1).t()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        clip, affinity = self._parts(features)
        return clip + self.alpha * cache_logits(affinity, self._refinement(self.gamma), self.beta)

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        if data.val is None:
            return {"channels": len(self.channels), "searched": False}
        with torch.no_grad():
            clip, affinity = self._parts(data.val.view(0))
            best = self._search(clip, affinity, data.val.labels)
        for name in ("alpha", "beta", "gamma"):
            getattr(self, name).fill_(best[name])
        return {**best, "channels": len(self.channels), "searched": True}

    def _search(self, clip: torch.Tensor, affinity: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """beta, then alpha, then gamma (strict '>': the first best wins), as ``main.py`` loops.

        ``kernel @ values`` depends on (beta, gamma) only, so it is computed once per pair and
        scaled by each alpha: the same visiting order and results as the code's loop.
        """
        (sb, sa, sg), (nb, na) = self.config.search_scale, self.config.search_step
        gammas = [i * sg / self.config.gamma_steps for i in range(self.config.gamma_steps)]
        values = [self._refinement(g) for g in gammas]
        best = {"val_accuracy": -1.0}
        for beta in search_grid(sb, nb):
            kernel = torch.exp(-(beta - beta * affinity))
            cache = [kernel @ vals for vals in values]
            for alpha in search_grid(sa, na):
                for gamma, cached in zip(gammas, cache, strict=True):
                    acc = float(((clip + alpha * cached).argmax(1) == labels).float().mean()) * 100
                    if acc > best["val_accuracy"]:
                        best = {"val_accuracy": acc, "alpha": alpha, "beta": beta, "gamma": gamma}
        return best


@dataclass
class APETConfig(TipTrainingRecipe, APEConfig):
    # yangyangyang127/APE main.py APE_Training, configs/imagenet.yaml (training_feat_num, w_training, lr, eps)
    feat_num: int = 500
    w: tuple[float, float] = (0.2, 0.8)
    lr: float = 1e-4
    eps: float = 1e-3
    weight_decay: float = 0.1


@register_method
class APET(APE):
    """APE-T: APE with a trained per-class residual on the selected channels and per-sample cache weights.

    Same paper and code (``main.py APE_Training``). The residual ``res`` (C, feat_num) is added
    to both the text weights and every cache key of its class on the selected channels (not
    re-normalised), the one-hot values are scaled by learned ``value_weights`` (init 1);
    alpha/beta stay at their init values while training, then are searched on validation.
    The released code has this training path commented out and, as written, selects channels
    with the training-free ``feat_num`` and ``w``; we use the training values as configured
    and group the cache by label (the code assumes the cache is ordered by class).

    Example: ``vlpeft train --method ape-t --shots 16 ...``
    """

    name = "ape-t"
    config_class = APETConfig
    trained_by_gradient = True
    dataset_presets = {k: {**APE_PRESETS[k], **v} for k, v in APE_T_PRESETS.items()}

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        out = super().preset(dataset, shots)
        out.pop("w", None)  # APE-T's w_training is (0.2, 0.8) for every dataset
        return out

    def prepare(self, data: HeadData) -> None:
        super().prepare(data)
        self.residual = nn.Parameter(torch.zeros(data.num_classes, len(self.channels)))
        self.value_weights = nn.Parameter(torch.ones(len(self.keys), 1))

    def _adapted(self) -> tuple[torch.Tensor, torch.Tensor]:
        keys, weights = self.keys.clone(), self.weights.clone()
        keys[:, self.channels] = keys[:, self.channels] + self.residual[self.labels]
        weights[:, self.channels] = weights[:, self.channels] + self.residual
        return keys, weights

    def _parts(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, weights = self._adapted()
        f = F.normalize(features, dim=-1)
        return self.clip_scale * f @ weights.t(), f @ keys.t()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        clip, affinity = self._parts(features)
        return clip + self.alpha * cache_logits(affinity, self.values * self.value_weights, self.beta)

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        report = train_head(self, data, self.config)
        if data.val is None:
            return {**report, "searched": False}
        with torch.no_grad():
            clip, affinity = self._parts(data.val.view(0))
            values = self.values * self.value_weights
        return {**report, **tip_search(self, clip, affinity, values, data.val.labels)}
