"""Config fields shared across families: every feature head's, and the gradient-training recipe
(optimiser, schedule, epochs, cached views) that trained heads, prompt learners and module
adapters read.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlpeft.data.templates import TEMPLATE_SETS
from vlpeft.errors import ConfigError
from vlpeft.methods.base import MethodConfig
from vlpeft.training.schedules import OPTIMIZERS, SCHEDULES


@dataclass
class HeadConfig(MethodConfig):
    """Fields every feature head has."""

    templates: str = "default"  # single | ensemble | imagenet80 | default (dataset's recipe)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.templates not in TEMPLATE_SETS:
            raise ConfigError(f"templates must be one of {list(TEMPLATE_SETS)}, got '{self.templates}'.")


@dataclass
class TrainedHeadConfig(HeadConfig):
    """Fields of heads trained by gradient descent on cached, augmented features."""

    optimizer: str = "sgd"
    lr: float = 0.002
    weight_decay: float = 5e-4
    momentum: float = 0.9
    eps: float = 1e-8
    epochs: int = 200
    batch_size: int = 32
    schedule: str = "dassl-cosine"  # dassl-cosine (per epoch, constant warm-up) | cosine-iter | constant
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    min_lr: float = 0.0  # eta_min of the cosine schedules
    batches_per_epoch: str = "dassl"  # dassl: floor(N/B) batches (1 if N < B) | ceil: ceil(N/B)
    sampling: str = "image"  # image: each image once per epoch, a random view | pool: rows of all views
    views: int = 10  # augmented views cached per training image
    aug_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop scale (Dassl default)
    select_on_val: bool = False  # keep the best epoch on validation (when the val policy gives one)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1 or self.batch_size < 1 or self.views < 1:
            raise ConfigError("epochs, batch_size and views must be positive.")
        if self.batches_per_epoch not in ("dassl", "ceil") or self.sampling not in ("image", "pool"):
            raise ConfigError("batches_per_epoch must be dassl|ceil and sampling image|pool.")
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ConfigError(
                f"optimizer must be one of {list(OPTIMIZERS)} and schedule one of {list(SCHEDULES)}."
            )
