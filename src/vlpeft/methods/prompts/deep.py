"""Deep prompts inside the encoders, through hooks on the backbone's own layers.

Vision: ``n`` prompt tokens are appended after the class and patch tokens (after the position
embedding, before the pre-layer-norm) and, for deep prompts, the last ``n`` tokens are replaced
at the input of layers 1 .. depth-1. Text: the tokens at the context positions (right after
SOS) are replaced at the input of layers 1 .. depth-1. These are the insertion points of
muzairkhattak/multimodal-prompt-learning ``clip/model.py`` (VPT, IVLP, MaPLe) and PromptSRC.
The hooks exist only inside the ``with`` block, so the backbone is untouched outside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.base import Method
from vlpeft.methods.inputs import PixelData


def require_cls_pooling(backbone: Backbone, method: str) -> None:
    """Appended vision prompts are only invisible to pooling when the ViT pools its CLS token (CLIP)."""
    if backbone.family != "clip":
        raise ConfigError(
            f"{method} inserts visual prompt tokens, which needs a CLS-pooled ViT (CLIP); "
            f"'{backbone.spec}' is a {backbone.family} model."
        )


@contextlib.contextmanager
def vision_prompts(
    backbone: Backbone, shallow: torch.Tensor, deep: Sequence[torch.Tensor] = ()
) -> Iterator[None]:
    """Append ``shallow`` (n, Wv) to every image's tokens; replace them with ``deep[i - 1]`` at layer i."""
    n = shallow.shape[0]

    def append(x: torch.Tensor) -> torch.Tensor:  # (B, T, Wv) -> (B, T + n, Wv)
        return torch.cat([x, shallow.to(x).expand(len(x), -1, -1)], dim=1)

    def replace(p: torch.Tensor):
        return lambda h: torch.cat([h[:, :-n], p.to(h).expand(len(h), -1, -1)], dim=1)

    handles = [backbone.add_embedding_hook("vision", append)]
    handles += [backbone.add_layer_input_hook("vision", i, replace(p)) for i, p in enumerate(deep, start=1)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def text_prompts(backbone: Backbone, first: int, deep: Sequence[torch.Tensor]) -> Iterator[None]:
    """Replace the context tokens (positions ``first`` .. ``first + n``) with ``deep[i - 1]`` at layer i."""

    def replace(p: torch.Tensor):
        n = p.shape[0]
        return lambda h: torch.cat([h[:, :first], p.to(h).expand(len(h), -1, -1), h[:, first + n :]], dim=1)

    handles = [backbone.add_layer_input_hook("text", i, replace(p)) for i, p in enumerate(deep, start=1)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PixelPromptLearner(Method):
    """Base of prompt learners that change the image encoder's computation (they see pixels)."""

    family = "prompt"
    needs_pixels: ClassVar[bool] = True
    needs_backbone: ClassVar[bool] = True
    transfers_to_new_classes: ClassVar[bool] = True
    trained_by_gradient: ClassVar[bool] = True

    def bind(self, backbone: Backbone) -> None:
        require_cls_pooling(backbone, self.name)
        object.__setattr__(self, "_backbone", backbone)

    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        """Ready the method for ``classnames`` (rebuild class-dependent text tokens)."""
        self.bind(backbone)

    def before_load(self, meta: Any) -> None:
        """Parameters are created from the saved tensors; class tokens come with attach()."""

    @property
    def backbone(self) -> Backbone:
        backbone = self.__dict__.get("_backbone")
        if backbone is None:
            raise ConfigError(f"{self.name} must be attached to its backbone first.")
        return backbone

    def prepare(self, data: PixelData) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement prepare(data)")

    def fit(self, data: PixelData) -> dict[str, Any]:
        from vlpeft.training.loop import train_on_pixels

        self.prepare(data)
        return train_on_pixels(self, data, self.config)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) normalised image features with this method's visual prompts."""
        raise NotImplementedError

    def text_features(self) -> torch.Tensor:
        """(C, D) normalised class embeddings with this method's text prompts."""
        raise NotImplementedError

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(pixels) @ self.text_features().t()

    def loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(pixels), labels.to(self.logit_scale.device))

    def backward(self, pixels: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        """Backpropagate ``weight * loss`` (the trainer's share of the batch); returns it detached."""
        loss = self.loss(pixels, labels) * weight
        loss.backward()
        return loss.detach()

    def on_epoch_end(self, epoch: int) -> None:
        """Hook after each epoch (PromptSRC's Gaussian prompt aggregation)."""

    def on_fit_end(self) -> None:
        """Hook after the last epoch."""
