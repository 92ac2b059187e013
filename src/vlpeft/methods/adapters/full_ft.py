"""Full fine-tuning and WiSE-FT (its weight-space ensemble with the zero-shot model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.adapters.base import ModuleAdapter, ModuleAdapterConfig, tower_of, unfreeze
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import PixelData


@dataclass
class FullFinetuneConfig(ModuleAdapterConfig):
    # mlfoundations/wise-ft src/args.py + README (ViT-B/16 ImageNet): AdamW lr 3e-5, wd 0.1, cosine
    # with warm-up, grad-norm clip 1.0, RandomResizedCrop(0.9, 1); the head starts as the zero-shot
    # classifier (normalised template-averaged text embeddings x logit scale) and is trained too.
    # Steps follow the few-shot protocol of the other module adapters (CLIP-LoRA: 500 x shots).
    templates: str = "ensemble"  # the zero-shot head's templates (WiSE-FT: CLIP's ImageNet ensemble)
    towers: str = "vision"  # the image encoder is fine-tuned; the text tower only builds the head
    lr: float = 3e-5
    weight_decay: float = 0.1
    aug_scale: tuple[float, float] = (0.9, 1.0)
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.towers != "vision":
            raise ConfigError("full-ft/wise-ft fine-tune the image encoder: towers must be 'vision'.")


@register_method
class FullFinetune(ModuleAdapter):
    """Full fine-tuning of the image encoder with a zero-shot-initialised linear head (WiSE-FT's "FT").

    Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022,
    https://arxiv.org/abs/2109.01903 (mlfoundations/wise-ft ``src/models/finetune.py``): logits =
    ``head(normalize(f(x)))`` with head weights ``logit_scale * zero-shot class embeddings`` and bias
    0, end to end. The head is class-specific, so the run does not transfer to other classes.

    Example: ``vlpeft train --method full-ft --shots 16 ...``
    """

    name = "full-ft"
    paper = "https://arxiv.org/abs/2109.01903"
    config_class = FullFinetuneConfig
    transfers_to_new_classes = False

    def adapt(self, model: Backbone) -> None:
        unfreeze(model, lambda n, p: tower_of(n) == "vision")

    def build(self, num_classes: int, embed_dim: int) -> None:
        self.head = nn.Linear(embed_dim, num_classes)

    def prepare(self, data: PixelData) -> None:
        super().prepare(data)
        weights = data.text.weights(self.config.templates, add_dataset_template=True)  # (C, D)
        self.build(*weights.shape)
        with torch.no_grad():
            self.head.weight.copy_(float(self.backbone.logit_scale) * weights)
            self.head.bias.zero_()
        self.head.to(self.backbone.device)

    def before_load(self, meta: Any) -> None:
        self.build(int(meta["num_classes"]), int(meta["embed_dim"]))

    def attach(self, backbone: Backbone, classnames) -> None:
        super().attach(backbone, classnames)
        if hasattr(self, "head") and self.head.out_features != len(classnames):
            raise ConfigError(
                f"{self.name}'s head has {self.head.out_features} classes, not {len(classnames)}."
            )

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_features(pixels))

    def class_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.weight.detach().clone(), self.head.bias.detach().clone()


@dataclass
class WiseFTConfig(FullFinetuneConfig):
    alpha: float = 0.5  # wise-ft src/args.py: --alpha default [0.5]; 0 = zero-shot, 1 = fine-tuned

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}.")


@register_method
class WiseFT(FullFinetune):
    """WiSE-FT: fine-tune (as ``full-ft``), then interpolate every weight with the zero-shot model.

    Wortsman et al., CVPR 2022, https://arxiv.org/abs/2109.01903 (``src/wise_ft.py``:
    ``theta = (1 - alpha) * theta_zs + alpha * theta_ft`` over the image encoder *and* the head,
    whose zero-shot value is the text classifier). ``mix(alpha)`` re-interpolates after fitting.

    Example: ``vlpeft train --method wise-ft --set alpha=0.5 ...``
    """

    name = "wise-ft"
    config_class = WiseFTConfig

    def on_fit_end(self) -> None:
        self._fine_tuned = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}
        self._zero_shot = self.__dict__["_zero_shot_state"]
        self.mix(self.config.alpha)

    def prepare(self, data: PixelData) -> None:
        super().prepare(data)
        self.__dict__["_zero_shot_state"] = {
            n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad
        }

    def mix(self, alpha: float) -> None:
        """Set the weights to ``(1 - alpha) * zero-shot + alpha * fine-tuned`` (needs a fitted model)."""
        if "_fine_tuned" not in self.__dict__:
            raise ConfigError(
                "wise-ft can re-mix only right after fitting (the fine-tuned weights are in memory)."
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, ft in self._fine_tuned.items():
                params[name].copy_((1 - alpha) * self._zero_shot[name] + alpha * ft)
        self.config.alpha = alpha
