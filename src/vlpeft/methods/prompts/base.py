"""Text-side prompt learners: learned text context, trained on cached image features.

These learners only change the text side, so they train from the feature cache (augmented
views of the support images) and never run the image encoder while training. Each step runs
the frozen text encoder on the C class prompts, up to the longest prompt's EOT token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.configs import TrainedHeadConfig
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.tokens import POSITIONS, PromptTokens, new_context
from vlpeft.training.loop import train_head


@dataclass
class PromptConfig(TrainedHeadConfig):
    # KaiyangZhou/CoOp train.py (N_CTX 16, CSC False, class token at the end, random init) and
    # configs/trainers/CoOp/rn50.yaml + vit_b16.yaml: SGD 0.002, batch 32, 200 epochs, cosine with
    # 1 constant warm-up epoch at 1e-5, Dassl's weight decay 5e-4 and momentum 0.9;
    # random_resized_crop + random_flip augmentation (here: cached views).
    n_ctx: int = 16
    ctx_init: str = ""
    class_specific: bool = False
    class_token_position: str = "end"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.class_token_position not in POSITIONS:
            raise ConfigError(f"class_token_position must be one of {list(POSITIONS)}.")
        if self.n_ctx < 1 and not self.ctx_init:
            raise ConfigError("n_ctx must be positive (or give ctx_init).")


class PromptHead(FeatureHead):
    """Base for learners whose class weights are the text encoder's output for learned prompts."""

    family = "prompt"
    config_class = PromptConfig
    trained_by_gradient = True
    needs_backbone = True
    transfers_to_new_classes = True

    def bind(self, backbone: Backbone) -> None:
        object.__setattr__(self, "_backbone", backbone)  # not a sub-module: never saved, never trained

    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        self.bind(backbone)
        if self.config.class_specific and self.ctx.shape[0] != len(classnames):
            raise ConfigError(
                "A class-specific context belongs to its classes; train a generic one for new classes."
            )
        position = self.config.class_token_position
        self.tokens = PromptTokens(
            backbone, classnames, self.ctx.shape[-2], position, self.fixed_words(backbone)
        )

    def fixed_words(self, backbone: Backbone) -> str:
        """Words kept as fixed tokens between the learned context and the class name (none for CoOp)."""
        return ""

    @property
    def backbone(self) -> Backbone:
        backbone = self.__dict__.get("_backbone")
        if backbone is None:
            raise ConfigError(
                f"{self.name} must be attached to its backbone (head.attach(backbone, classnames))."
            )
        return backbone

    def before_load(self, meta) -> None:
        """The context is created from the saved tensor; class tokens come with attach()."""

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int, vision_width: int = 768
    ) -> int:
        """Trainable parameters with the default config (context words count as one token each)."""
        cfg = cls.config_class()
        n_ctx = len(cfg.ctx_init.split()) if cfg.ctx_init and cfg.ctx_init != "auto" else cfg.n_ctx
        return n_ctx * text_width * (num_classes if cfg.class_specific else 1)

    def prepare(self, data: HeadData) -> None:
        cfg = self.config
        generator = torch.Generator().manual_seed(data.seed)
        specific = data.num_classes if cfg.class_specific else None
        self.ctx = nn.Parameter(new_context(self.backbone, cfg.n_ctx, cfg.ctx_init, specific, generator))
        self.attach(self.backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def fit(self, data: HeadData) -> dict[str, Any]:
        self.prepare(data)
        return train_head(self, data, self.config)

    def text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) L2-normalised class embeddings of the learned prompts."""
        device = self.backbone.device
        embeds = self.tokens(self.ctx if ctx is None else ctx).to(device)
        feats = self.backbone.encode_text_embeddings(embeds, self.tokens.eot.to(device))
        return F.normalize(feats.float(), dim=-1).cpu()

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(features, dim=-1) @ self.text_features().t()

    def export_parts(self, merge: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """The unchanged backbone; the learned prompts live on as their class embeddings."""
        with torch.no_grad():
            weight = self.logit_scale.float().cpu() * self.text_features()
        return self.backbone.model, weight, torch.zeros(len(weight))


def coop_epochs(dataset: str, shots: int | None) -> dict[str, int]:
    """CoOp's epochs by shots (scripts/coop/main.sh; PLOT's train.py too): 50 / 100 / 200; ImageNet 50."""
    if dataset == "ImageNet" or (shots is not None and shots <= 1):
        return {"epochs": 50}
    if shots is not None and shots <= 4:
        return {"epochs": 100}
    return {}
