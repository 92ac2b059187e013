"""Cross-modal linear probe: text embeddings are training samples too; and its image-only twin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.data.transforms import AugmentSpec
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.configs import HeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData, TrainViews
from vlpeft.training.schedules import cosine
from vlpeft.utils import track


@dataclass
class CrossModalConfig(HeadConfig):
    # linzhiqiu/cross_modal_adaptation engine/optimizer/default.py HYPER_DICT["linear"], train.py, features.py
    templates: str = "default"  # Tip-Adapter's hand-crafted templates: one text sample per (class, template)
    modality: str = "cross"  # cross: half of every batch is text samples | uni: images only
    init: str = "zeroshot"  # zeroshot (argparse default) | random
    text_batch_ratio: float = 0.5  # CROSS_MODAL_BATCH_RATIO
    iterations: int = 12800
    warmup_iterations: int = 50
    warmup_lr: float = 1e-5
    eval_every: int = 100
    logit_scale: float = 100.0  # exp(4.60517), fixed
    # the fixed recipe used without validation: the first point of the official grid
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    # searched on validation when the policy gives one (AdamW)
    search_lr: tuple[float, ...] = (1e-3, 1e-4)
    search_weight_decay: tuple[float, ...] = (0.0, 1e-2, 1e-4)
    search_batch_size: tuple[int, ...] = (8, 32)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.modality not in ("cross", "uni") or self.init not in ("zeroshot", "random"):
            raise ConfigError("modality must be cross|uni and init zeroshot|random.")


@register_method
class CrossModalLP(FeatureHead):
    """Cross-modal linear probe: a linear head trained on image features *and* class text embeddings.

    Lin et al., "Multimodality Helps Unimodality: Cross-Modal Few-Shot Learning with
    Multimodal Models", CVPR 2023, https://arxiv.org/abs/2301.06267; official code
    linzhiqiu/cross_modal_adaptation. Head ``100 * W normalize(x)`` (W not normalised, no bias),
    initialised with the zero-shot weights; each batch is half text samples (normalised
    per-template embeddings) and half image samples (the eval view and its horizontal flip);
    AdamW, 50 warm-up iterations then cosine over 12,800; validation every 100 iterations keeps
    the best checkpoint, and (lr, weight decay, batch size) is searched over the official grid
    on validation. Without validation: the grid's first point, last iterate.

    Example: ``vlpeft train --method cross-modal-lp --shots 16 ...``
    """

    name = "cross-modal-lp"
    paper = "https://arxiv.org/abs/2301.06267"
    config_class = CrossModalConfig
    trained_by_gradient = True
    identity_at_init = True  # zero-shot initialisation (with init=random it is not)

    def train_views(self) -> TrainViews:
        return TrainViews(AugmentSpec(crop="center", flip_p=1.0), 1, include_eval=True)

    def build(self, num_classes: int, embed_dim: int) -> None:
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))

    def prepare(self, data: HeadData) -> None:
        raw = data.text.raw(self.config.templates)  # (T, C, D)
        self.build(data.num_classes, raw.shape[-1])
        with torch.no_grad():
            if self.config.init == "zeroshot":  # normalize(mean of unnormalised template embeddings)
                self.weight.copy_(F.normalize(raw.mean(0), dim=-1))
            else:
                nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.config.logit_scale * F.normalize(features, dim=-1) @ self.weight.t()

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        settings = self._settings(data)
        init = self.weight.detach().clone()
        results: dict[int, tuple[float, torch.Tensor]] = {}
        for bs in dict.fromkeys(s[2] for s in settings):  # batch sizes, in grid order
            group = [i for i, s in enumerate(settings) if s[2] == bs]
            accs, weights = self._train_group(data, [settings[i] for i in group], bs, init)
            results.update({i: (acc, w) for i, acc, w in zip(group, accs, weights, strict=True)})
        best = max(
            range(len(settings)), key=lambda i: (results[i][0], -i)
        )  # highest val accuracy, first on ties
        with torch.no_grad():
            self.weight.copy_(results[best][1])
        lr, wd, bs = settings[best]
        return {
            "lr": lr,
            "weight_decay": wd,
            "batch_size": bs,
            "val_accuracy": results[best][0],
            "runs": len(settings),
        }

    def _settings(self, data: HeadData) -> list[tuple[float, float, int]]:
        cfg = self.config
        if data.val is None:
            return [(cfg.lr, cfg.weight_decay, cfg.batch_size)]
        grid = [
            (lr, wd, bs)
            for lr in cfg.search_lr
            for wd in cfg.search_weight_decay
            for bs in cfg.search_batch_size
        ]
        n_images, n_text = self._sample_counts(data)
        usable = [(lr, wd, bs) for lr, wd, bs in grid if self._fits(bs, n_images, n_text)]
        return usable or [(cfg.lr, cfg.weight_decay, min(cfg.search_batch_size))]

    def _sample_counts(self, data: HeadData) -> tuple[int, int]:
        templates = len(data.text.templates(self.config.templates))
        return data.train.features.shape[0] * data.train.features.shape[1], templates * data.num_classes

    def _fits(self, bs: int, n_images: int, n_text: int) -> bool:
        """The official rule: both parts of the batch must be smaller than their sample counts."""
        text_bs = self._text_bs(bs)
        return text_bs < n_text and bs - text_bs < n_images

    def _text_bs(self, bs: int) -> int:
        return int(bs * self.config.text_batch_ratio) if self.config.modality == "cross" else 0

    def _samples(self, data: HeadData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image samples (eval + flipped views) and text samples (one per class and template)."""
        images = F.normalize(data.train.features.flatten(0, 1), dim=-1)  # (V*N, D)
        image_labels = data.train.labels.repeat(data.train.num_views)
        text = F.normalize(data.text.raw(self.config.templates), dim=-1).flatten(0, 1)  # (T*C, D)
        text_labels = torch.arange(data.num_classes).repeat(text.shape[0] // data.num_classes)
        return images, image_labels, text, text_labels

    def _train_group(
        self, data: HeadData, settings: list[tuple[float, float, int]], bs: int, init: torch.Tensor
    ) -> tuple[list[float], list[torch.Tensor]]:
        """Train one head per (lr, wd) setting of batch size ``bs`` at once.

        The settings see the same batches (the streams are seeded by the run's seed), so their
        heads are stacked into one (S, C, D) tensor and stepped by a per-setting AdamW: the
        same updates as training them one after another, in one pass.
        """
        images, image_labels, text, text_labels = self._samples(data)
        text_bs = self._text_bs(bs)
        streams = [_Stream(len(images), bs - text_bs, data.seed), _Stream(len(text), text_bs, data.seed + 1)]
        weights = init.expand(len(settings), -1, -1).clone()  # (S, C, D)
        adamw = _StackedAdamW(weights, [s[0] for s in settings], [s[1] for s in settings])
        best = [(-1.0, weights[s].clone()) for s in range(len(settings))]
        for it in track(range(self.config.iterations), f"{self.name} ({self.config.iterations} iterations)"):
            if data.val is not None and it % self.config.eval_every == 0:
                best = self._keep_best(data, weights, best)
            i, t = streams[0].next(), streams[1].next()
            x, y = torch.cat([images[i], text[t]]), torch.cat([image_labels[i], text_labels[t]])
            adamw.step(weights, self._grad(weights, x, y), [self._lr(s[0], it) for s in settings])
        if data.val is None:
            return [-1.0] * len(settings), list(weights)
        return [b[0] for b in best], [b[1] for b in best]

    def _grad(self, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d/dW of the mean cross-entropy of ``scale * x @ W_s.T`` for every stacked W_s, in closed form.

        ``scale * (softmax(logits) - onehot(y)).T @ x / B`` -- what autograd returns (a test checks
        the stacked run against ``torch.optim.AdamW`` with autograd), without the graph's overhead
        on a step this small (it runs 12,800 times per setting).
        """
        scale = self.config.logit_scale
        probs = torch.softmax(scale * torch.matmul(weights, x.t()), dim=1)  # (S, C, B)
        probs[:, y, torch.arange(len(y))] -= 1.0
        return torch.matmul(probs, x).mul_(scale / len(y))  # (S, C, D)

    def _lr(self, lr: float, it: int) -> float:
        """Linear warm-up (first step at warmup_lr), then cosine over all iterations."""
        warm = self.config.warmup_iterations
        if it < warm:
            return self.config.warmup_lr if it == 0 else lr * it / warm
        return cosine(lr, it - warm, self.config.iterations)

    @torch.no_grad()
    def _keep_best(
        self, data: HeadData, weights: torch.Tensor, best: list[tuple[float, torch.Tensor]]
    ) -> list[tuple[float, torch.Tensor]]:
        """Per setting: keep the weights with the best validation accuracy (strict '>': the earliest)."""
        feats = F.normalize(data.val.view(0), dim=-1)
        preds = torch.einsum("nd,scd->snc", feats, weights).argmax(-1)  # (S, N)
        accs = (preds == data.val.labels).float().mean(dim=1) * 100
        return [
            (float(a), weights[s].clone()) if float(a) > b[0] else b
            for s, (a, b) in enumerate(zip(accs, best, strict=True))
        ]


class _StackedAdamW:
    """``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8) for a stack of parameters, one lr/wd each."""

    def __init__(self, param: torch.Tensor, lrs: list[float], weight_decays: list[float]):
        self.m, self.v, self.t = torch.zeros_like(param), torch.zeros_like(param), 0
        self.wd = torch.tensor(weight_decays, dtype=param.dtype)[:, None, None]

    @torch.no_grad()
    def step(self, param: torch.Tensor, grad: torch.Tensor, lrs: list[float]) -> None:
        self.t += 1
        lr = torch.tensor(lrs, dtype=param.dtype)[:, None, None]
        param.mul_(1 - lr * self.wd)  # decoupled weight decay
        self.m.mul_(0.9).add_(grad, alpha=0.1)
        self.v.mul_(0.999).addcmul_(grad, grad, value=0.001)
        denom = (self.v / (1 - 0.999**self.t)).sqrt_().add_(1e-8)
        param.sub_(lr / (1 - 0.9**self.t) * self.m / denom)


class _Stream:
    """Endless shuffled batches of ``size`` indices out of ``n`` (drop_last, reshuffled each pass)."""

    def __init__(self, n: int, size: int, seed: int):
        self.n, self.size = n, size
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long), 0

    def next(self) -> torch.Tensor:
        if self.size == 0:
            return torch.empty(0, dtype=torch.long)
        if self.pos + self.size > len(self.order):
            self.order, self.pos = torch.randperm(self.n, generator=self.generator), 0
        out = self.order[self.pos : self.pos + self.size]
        self.pos += self.size
        return out


@dataclass
class ZSInitLPConfig(CrossModalConfig):
    modality: str = "uni"


@register_method
class ZSInitLP(CrossModalLP):
    """Zero-shot-initialised linear probe: the cross-modal recipe on image samples only.

    The uni-modal baseline of Lin et al., CVPR 2023 (``--modality uni_modal --classifier_init
    zeroshot`` in linzhiqiu/cross_modal_adaptation). At initialisation its predictions are
    zero-shot CLIP's.

    Example: ``vlpeft train --method zs-init-lp ...``
    """

    name = "zs-init-lp"
    config_class = ZSInitLPConfig
