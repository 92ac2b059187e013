"""FeatureHead: methods that work on frozen image features and class text embeddings.

A head never sees pixels: it gets cached features (raw, not normalised; each head normalises
as its paper does), the class text embeddings, and a validation split only when the run's
validation policy allows one. It never sees test data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vlpeft.data.transforms import AugmentSpec
from vlpeft.methods.base import Method
from vlpeft.methods.configs import HeadConfig, TrainedHeadConfig
from vlpeft.methods.inputs import ClassText, HeadData, TrainViews


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

    def retarget(self, backbone, text: ClassText) -> None:
        """Ready a fitted head for other classes (``text``: their names, templates and encoder).

        Heads that transfer to new classes rebuild what depends on the class names; the default is
        :meth:`attach` with the new names.
        """
        self.attach(backbone, text.classnames)

    def on_epoch_end(self, epoch: int) -> None:
        """Hook for per-epoch updates (e.g. constraint multipliers)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits(features)
