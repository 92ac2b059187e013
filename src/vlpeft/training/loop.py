"""The shared training loops: on cached, augmented features (``train_head``) and on pixels
(``train_on_pixels``).

Methods own their math (``logits``, ``loss``/``backward``, ``on_epoch_end``); these loops own
batching over the cached views or images, the optimizer, the schedule, precision, gradient
accumulation and model selection on validation. They sit below the methods and never import
them: what they need of a method, its data and its settings is spelled out by the protocols
below (``vlpeft.methods`` implements them).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from vlpeft.errors import ConfigError
from vlpeft.training.schedules import build_optimizer, cosine, dassl_cosine, set_lr
from vlpeft.utils import track

logger = logging.getLogger(__name__)


class Recipe(Protocol):
    """The settings the loops read (``vlpeft.methods.configs.TrainedHeadConfig`` has them all)."""

    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    eps: float
    epochs: int
    batch_size: int
    schedule: str
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    batches_per_epoch: str
    sampling: str
    aug_scale: tuple[float, float]
    select_on_val: bool


class Features(Protocol):
    """(V, N, ...) cached features of N images in V views, and their labels (``FeatureSet``)."""

    features: torch.Tensor
    labels: torch.Tensor

    def view(self, index: int) -> torch.Tensor: ...


class HeadInputs(Protocol):
    """What ``train_head`` reads of a head's data (``vlpeft.methods.inputs.HeadData``)."""

    train: Features
    val: Features | None
    seed: int


class TrainableHead(Protocol):
    """A module trained on features (``vlpeft.methods.heads.base.FeatureHead``)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
    def logits(self, features: torch.Tensor) -> torch.Tensor: ...
    def backward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...
    def on_epoch_end(self, epoch: int) -> None: ...
    def pop_loss_terms(self) -> dict[str, float]: ...
    def train(self, mode: bool = True) -> Any: ...
    def eval(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def iterations_per_epoch(n: int, batch_size: int, rule: str) -> int:
    """Dassl: ``floor(n / B)`` batches with ``drop_last`` (one batch of n if n < B); ceil: every sample."""
    if rule == "dassl":
        return max(n // batch_size, 1)
    return math.ceil(n / batch_size)


def lr_for(cfg: Recipe, epoch: int, step: int, total_steps: int) -> float:
    if cfg.schedule == "dassl-cosine":
        return dassl_cosine(cfg.lr, epoch, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.min_lr)
    if cfg.schedule == "cosine-iter":
        return cosine(cfg.lr, step, total_steps, cfg.min_lr)
    return cfg.lr


@torch.no_grad()
def accuracy(head: TrainableHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``head`` on (N, D) features."""
    return float((head.logits(features).argmax(dim=1) == labels).float().mean()) * 100


def _batches(
    data: HeadInputs, cfg: Recipe, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Index pairs (view, image) of each batch of one epoch."""
    views, n = data.train.features.shape[:2]
    iters = iterations_per_epoch(n, cfg.batch_size, cfg.batches_per_epoch)
    if cfg.sampling == "pool":  # rows of the (views x images) pool, without replacement (CLAP)
        rows = torch.randperm(views * n, generator=generator)
        size = min(cfg.batch_size, views * n)
        for it in range(iters):
            chunk = rows[(it * size) % (views * n) :][:size]
            yield chunk // n, chunk % n
        return
    order = torch.randperm(n, generator=generator)  # each image once, a random view each
    view_of = torch.randint(views, (n,), generator=generator)
    for it in range(iters):
        idx = order[it * cfg.batch_size : (it + 1) * cfg.batch_size]
        yield view_of[idx], idx


def train_head(head: TrainableHead, data: HeadInputs, cfg: Recipe) -> dict[str, Any]:
    """Train ``head``'s trainable parameters; keep the best validation epoch if ``select_on_val``."""
    optimizer = build_optimizer(
        cfg.optimizer, head.trainable_parameters(), cfg.lr, cfg.weight_decay, cfg.momentum, cfg.eps
    )
    generator = torch.Generator().manual_seed(data.seed)
    feats, labels = data.train.features, data.train.labels
    iters = iterations_per_epoch(feats.shape[1], cfg.batch_size, cfg.batches_per_epoch)
    total, step = cfg.epochs * iters, 0
    select = cfg.select_on_val and data.val is not None
    best: dict[str, Any] = {"val_accuracy": -1.0, "epoch": None, "state": None}
    log = EpochLog(type(head).__name__, cfg.epochs)
    head.train()
    for epoch in track(range(cfg.epochs), f"Training {type(head).__name__} ({cfg.epochs} epochs)"):
        for view_idx, img_idx in _batches(data, cfg, generator):
            set_lr(optimizer, lr_for(cfg, epoch, step, total))
            optimizer.zero_grad(set_to_none=True)
            loss = head.backward(feats[view_idx, img_idx], labels[img_idx])
            optimizer.step()
            step += 1
            log.add(loss.item(), head.pop_loss_terms())
        log.end_epoch(epoch, optimizer.param_groups[0]["lr"])
        head.on_epoch_end(epoch)
        if select:
            _keep_if_best(head, data, epoch, best)
    head.eval()
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    return {
        "epochs": cfg.epochs,
        "steps": step,
        **log.report(),
        "selected_epoch": best["epoch"] if select else cfg.epochs - 1,
        "val_accuracy": best["val_accuracy"] if select else None,
    }


def _keep_if_best(head: TrainableHead, data: HeadInputs, epoch: int, best: dict[str, Any]) -> None:
    assert data.val is not None
    acc = accuracy(head, data.val.view(0), data.val.labels)
    if acc > best["val_accuracy"]:  # strict: the earliest best epoch wins
        best.update(val_accuracy=acc, epoch=epoch, state=copy.deepcopy(head.state_dict()))


# ---- training on pixels (methods that change the image encoder) ---------------------------------


class _AugmentedImages(torch.utils.data.Dataset):
    """(augmented pixels, label) with the randomness of ``epoch`` (view ``epoch`` of each image)."""

    def __init__(self, items, transform):
        self.items, self.transform = list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        from vlpeft.data.images import load_image
        from vlpeft.features import view_key

        item = self.items[i]
        return self.transform(load_image(item.impath), view_key(item)), item.label


def train_on_pixels(
    method, data, cfg: Recipe, workers: int = 0, max_steps: int | None = None
) -> dict[str, Any]:
    """The one loop for methods that see pixels (prompt learners in the encoders, module adapters).

    Epoch ``e`` uses view ``e`` of :class:`AugmentedView` (random resized crop + flip, seeded by the
    run's seed, the epoch and the image), so a run is reproducible; batches follow
    ``cfg.batches_per_epoch``. ``max_steps`` (CLIP-LoRA's ``n_iters * shots``) overrides
    ``cfg.epochs``: training stops after that many optimiser steps. Optional config fields:
    ``accumulate`` (micro-batches per step), ``precision`` (autocast dtype), ``grad_clip``. Under a
    launcher the global batch is shared among the processes (:mod:`vlpeft.training.distributed`).
    """
    from vlpeft.data.transforms import AugmentedView, AugmentSpec
    from vlpeft.training.distributed import my_micro_batches, sum_gradients

    params = method.trainable_parameters()
    optimizer = build_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay, cfg.momentum, cfg.eps)
    generator = torch.Generator().manual_seed(data.seed)
    n = len(data.train)
    iters = iterations_per_epoch(n, cfg.batch_size, cfg.batches_per_epoch)
    total = max_steps if max_steps is not None else cfg.epochs * iters
    epochs = math.ceil(total / iters)
    step = 0
    spec = AugmentSpec(scale=cfg.aug_scale, seed=data.seed)
    backbone = method.backbone
    precision = resolve_precision(getattr(cfg, "precision", "fp32"), backbone.device)
    autocast = autocast_context(precision, backbone.device)
    scaler = torch.amp.GradScaler(backbone.device.type, enabled=precision == "fp16")
    accumulate, clip = getattr(cfg, "accumulate", 1), getattr(cfg, "grad_clip", 0.0)
    log = EpochLog(type(method).__name__, epochs)
    method.train()
    for epoch in track(range(epochs), f"Training {type(method).__name__} ({epochs} epochs, {total} steps)"):
        images = _AugmentedImages(data.train, AugmentedView(backbone.preprocess, spec, epoch))
        order = torch.randperm(n, generator=generator)
        for it in range(iters):
            if step >= total:
                break
            batch = order[it * cfg.batch_size : (it + 1) * cfg.batch_size].tolist()
            set_lr(optimizer, lr_for(cfg, epoch, step, total))
            optimizer.zero_grad(set_to_none=True)
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            step_loss, step_terms = 0.0, {}
            for micro in my_micro_batches(batch, accumulate):
                pixels, labels = _collate([images[i] for i in micro], backbone)
                share = len(micro) / len(batch)
                with autocast:
                    weighted = method.backward(pixels, labels, scale * share)
                step_loss += weighted.item() / scale
                for k, v in method.pop_loss_terms().items():
                    step_terms[k] = step_terms.get(k, 0.0) + v * share
            sum_gradients(params)
            scaler.unscale_(optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            log.add(step_loss, step_terms)
        log.end_epoch(epoch, optimizer.param_groups[0]["lr"])
        method.on_epoch_end(epoch)
    method.on_fit_end()
    method.eval()
    return {"epochs": epochs, "steps": step, **log.report()}


class EpochLog:
    """Per-epoch means of the loss and of each loss term; one log line per epoch."""

    def __init__(self, name: str, epochs: int):
        self.name, self.epochs = name, epochs
        self.losses: list[float] = []
        self.terms: dict[str, list[float]] = {}
        self._sum, self._terms, self._steps = 0.0, {}, 0

    def add(self, loss: float, terms: dict[str, float]) -> None:
        self._sum += loss
        self._steps += 1
        for k, v in terms.items():
            self._terms[k] = self._terms.get(k, 0.0) + v

    def end_epoch(self, epoch: int, lr: float) -> None:
        steps = max(self._steps, 1)
        self.losses.append(self._sum / steps)
        for k, v in self._terms.items():
            self.terms.setdefault(k, []).append(v / steps)
        parts = ", ".join(f"{k} {v[-1]:.4f}" for k, v in self.terms.items())
        logger.info(
            "%s epoch %d/%d: loss %.4f%s, lr %.3g",
            self.name, epoch + 1, self.epochs, self.losses[-1], f" ({parts})" if parts else "", lr,
        )  # fmt: skip
        self._sum, self._terms, self._steps = 0.0, {}, 0

    def report(self) -> dict[str, Any]:
        """``first_loss``, ``last_loss``, ``epoch_losses`` and, for multi-term losses, ``loss_terms``."""
        out: dict[str, Any] = {"first_loss": self.losses[0], "last_loss": self.losses[-1]}
        out["epoch_losses"] = [round(v, 6) for v in self.losses]
        if self.terms:
            out["loss_terms"] = {k: [round(x, 6) for x in v] for k, v in self.terms.items()}
        return out


def _collate(batch, backbone) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.stack([b[0] for b in batch]).to(backbone.device, backbone.dtype)
    return pixels, torch.tensor([b[1] for b in batch])


PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 where CUDA supports it, else fp32; fp16 (with loss scaling) needs CUDA."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got '{precision}'.")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision=fp16 needs a CUDA device; use bf16 or fp32 on this device.")
    return precision


def autocast_context(precision: str, device: torch.device):
    """Autocast to ``precision`` (already resolved) on ``device``; fp32 runs as is."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
