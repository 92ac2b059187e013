"""FeatureHead: methods that work on frozen image features and class text embeddings.

A head never sees pixels: it gets cached features (raw, not normalised; each head normalises
as its paper does), the class text embeddings, and a validation split only when the run's
validation policy allows one. It never sees test data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vlpeft.data.templates import TEMPLATE_SETS, format_prompts
from vlpeft.data.transforms import AugmentSpec
from vlpeft.engine.schedules import OPTIMIZERS, SCHEDULES
from vlpeft.errors import ConfigError
from vlpeft.features import FeatureSet
from vlpeft.methods.base import Method, MethodConfig

VAL_POLICIES = ("none", "fewshot", "full")


class ClassText:
    """Class-name prompts and their (cached) raw text embeddings, by template set."""

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Callable[[str], list[str]],
        encode: Callable[[list[str]], torch.Tensor],
        dataset_template: str = "a photo of a {}.",
    ):
        self.classnames = list(classnames)
        self._templates = templates
        self._encode = encode
        self.dataset_template = dataset_template

    def templates(self, kind: str, add_dataset_template: bool = False) -> list[str]:
        """Templates of ``kind``; with ``add_dataset_template`` the dataset's own is appended if absent."""
        out = list(self._templates(kind))
        if add_dataset_template and self.dataset_template not in out:
            out.append(self.dataset_template)
        return out

    def raw(self, kind: str, add_dataset_template: bool = False) -> torch.Tensor:
        """(T, C, D) unnormalised embeddings, template-major."""
        templates = self.templates(kind, add_dataset_template)
        prompts = [p for t in templates for p in format_prompts(t, self.classnames)]
        return self._encode(prompts).float().reshape(len(templates), len(self.classnames), -1)

    def weights(
        self,
        kind: str = "default",
        add_dataset_template: bool = False,
        extra: Mapping[str, list[str]] | None = None,
    ) -> torch.Tensor:
        """(C, D) classifier: normalise each prompt's embedding, average per class, normalise (CLIP/CoOp/Tip).

        ``extra`` adds per-class prompts (e.g. CuPL's generated descriptions), averaged together
        with the template prompts.
        """
        per_template = F.normalize(self.raw(kind, add_dataset_template), dim=-1)  # (T, C, D)
        if not extra:
            return F.normalize(per_template.mean(0), dim=-1)
        sums, counts = per_template.sum(0), torch.full((len(self.classnames),), float(len(per_template)))
        for c, name in enumerate(self.classnames):
            prompts = extra.get(name, [])
            if prompts:
                sums[c] += F.normalize(self._encode(list(prompts)).float(), dim=-1).sum(0)
                counts[c] += len(prompts)
        return F.normalize(sums / counts[:, None], dim=-1)

    def raw_mean(self, kind: str = "default", add_dataset_template: bool = False) -> torch.Tensor:
        """(C, D) average of the *unnormalised* template embeddings (TaskRes, CLAP)."""
        return self.raw(kind, add_dataset_template).mean(0)


@dataclass
class HeadData:
    """Everything a head may learn from: train features (V views), validation per policy, text."""

    train: FeatureSet
    val: FeatureSet | None
    text: ClassText
    num_classes: int
    logit_scale: float = 100.0
    logit_bias: float = 0.0
    seed: int = 1
    dataset: str = ""
    shots: int | None = None


@dataclass(frozen=True)
class TrainViews:
    """The train features a head asks for: ``num_views`` views of ``augment`` (+ the eval view first)."""

    augment: AugmentSpec | None = None
    num_views: int = 0
    include_eval: bool = True
    tokens: bool = False


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


class FeatureHead(Method):
    """Base class: ``prepare`` (initialise from data), ``fit`` (train or search), ``logits``."""

    family = "feature-head"
    config_class = HeadConfig
    needs_backbone: ClassVar[bool] = False  # must be attach()ed to the backbone (runs its text encoder)
    transfers_to_new_classes: ClassVar[bool] = False  # can be evaluated on classes it was not trained on
    trained_by_gradient: ClassVar[bool] = False  # trained by the shared gradient loop (matrix loss test)
    needs_train: ClassVar[bool] = True  # False: the head never looks at training images (zero-shot)
    uses_tokens: ClassVar[bool] = False  # True: features are per-token (B, T, D) instead of pooled (B, D)
    identity_at_init: ClassVar[bool] = False  # logits equal zero-shot after prepare (paper-implied)

    def train_views(self) -> TrainViews:
        """Eval features only, unless the head trains on augmented views."""
        cfg = self.config
        if isinstance(cfg, TrainedHeadConfig):
            return TrainViews(
                AugmentSpec(scale=cfg.aug_scale), cfg.views, include_eval=False, tokens=self.uses_tokens
            )
        return TrainViews(tokens=self.uses_tokens)

    def build(self, num_classes: int, embed_dim: int) -> None:
        """Create sub-modules whose shapes depend only on (C, D); called before loading a saved state."""

    def before_load(self, meta: Mapping[str, Any]) -> None:
        self.build(int(meta["num_classes"]), int(meta["embed_dim"]))

    def prepare(self, data: HeadData) -> None:
        """Initialise every parameter from the data (before any training)."""
        raise NotImplementedError(f"{type(self).__name__} must implement prepare(data)")

    def fit(self, data: HeadData) -> dict[str, Any]:
        """Prepare, then train/search; returns a report (chosen hyper-parameters, losses)."""
        self.prepare(data)
        return {}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) raw image features -> (N, C) logits."""
        raise NotImplementedError(f"{type(self).__name__} must implement logits(features)")

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(features), labels)

    def backward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Set the trainable parameters' gradients for one batch; returns the (detached) loss.

        The shared loop calls this; methods with a gradient rule (e.g. ProGrad) override it.
        """
        loss = self.loss(features, labels)
        loss.backward()
        return loss.detach()

    def bind(self, backbone) -> None:
        """Give the head the backbone before fitting (heads that run the text encoder need it)."""

    def attach(self, backbone, classnames: Sequence[str]) -> None:
        """Ready a fitted or loaded head for these class names (prompt learners rebuild their tokens)."""
        self.bind(backbone)

    def on_epoch_end(self, epoch: int) -> None:
        """Hook for per-epoch updates (e.g. constraint multipliers)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features)


def with_fields(config: MethodConfig, **values: Any) -> MethodConfig:
    return dataclasses.replace(config, **values)
