"""Learning-rate schedules and optimizers, as the official recipes define them."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from vlpeft.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("dassl-cosine", "cosine-iter", "constant")


def cosine(base: float, step: int, total: int, minimum: float = 0.0) -> float:
    """``CosineAnnealingLR`` (``eta_min=minimum``) at ``step`` of ``total``."""
    return minimum + (base - minimum) * (1 + math.cos(math.pi * step / max(total, 1))) / 2


def dassl_cosine(
    base: float, epoch: int, epochs: int, warmup_epochs: int, warmup_lr: float, minimum: float = 0.0
) -> float:
    """Dassl's per-epoch cosine with constant warm-up (``dassl/optim/lr_scheduler.py``).

    Epochs ``< warmup_epochs`` run at ``warmup_lr``; then cosine restarts from ``base`` with
    ``T_max = epochs`` (the warm-up epochs are not subtracted, as in Dassl).
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return cosine(base, epoch - warmup_epochs, epochs, minimum)


def build_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """SGD (momentum, coupled weight decay), Adam (coupled L2, as Dassl) or AdamW (decoupled)."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps)
    raise ConfigError(f"Unknown optimizer '{name}'. Choose one of {list(OPTIMIZERS)}.")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
