"""Prompts in both encoders: the shared base of VPT (vision only), IVLP, MaPLe and PromptSRC.

Defaults from muzairkhattak/multimodal-prompt-learning (``configs/trainers/{VPT,IVLP,MaPLe}/*``,
``trainers/{vpt,independentVL,maple}.py``) and muzairkhattak/PromptSRC
(``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``, ``trainers/promptsrc.py``).
Layers are counted from 0; depth d means prompts at the input and replacements at layers 1..d-1.
Everything runs in float32 (the official code uses float16 CLIP).
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
from vlpeft.methods.inputs import PixelData
from vlpeft.methods.prompts.deep import PixelPromptLearner, text_prompts, vision_prompts
from vlpeft.methods.prompts.tokens import PromptTokens, new_context, split_init


def zeros_list(count: int, shape: tuple[int, int]) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(max(count, 0))])


def normal_prompt(shape: tuple[int, ...], generator: torch.Generator) -> nn.Parameter:
    return nn.Parameter(torch.randn(shape, generator=generator) * 0.02)  # nn.init.normal_(std=0.02)


@dataclass
class MultimodalConfig(TrainedHeadConfig):
    # muzairkhattak/multimodal-prompt-learning configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml:
    # SGD 0.0035, 5 epochs, batch 4, cosine with 1 constant warm-up epoch at 1e-5 (Dassl wd 5e-4).
    templates: str = "single"
    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    depth_text: int = 12
    depth_vision: int = 12
    ctx_init: str = "a photo of a"
    lr: float = 0.0035
    epochs: int = 5
    batch_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.depth_text, self.depth_vision) < 0 or self.n_ctx_text < 0 or self.n_ctx_vision < 0:
            raise ConfigError("depths and context sizes must not be negative.")


class MultimodalPrompts(PixelPromptLearner):
    """Learned context in the text encoder (shallow + deep) and prompts in the image encoder."""

    config_class = MultimodalConfig

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int, vision_width: int = 768
    ) -> int:
        """Trainable parameters with the default config (context words count as one token each)."""
        cfg = cls.config_class()
        text = cfg.n_ctx_text * text_width * max(cfg.depth_text, 0)
        return text + cls._vision_count(cfg, text_width, vision_width)

    @classmethod
    def _vision_count(cls, cfg: MultimodalConfig, text_width: int, vision_width: int) -> int:
        return cfg.n_ctx_vision * vision_width * max(cfg.depth_vision, 0)

    def bind(self, backbone: Backbone) -> None:
        super().bind(backbone)
        for tower, field in (("text", "depth_text"), ("vision", "depth_vision")):
            depth, layers = getattr(self.config, field), len(backbone.layers(tower))
            if depth > layers:
                raise ConfigError(
                    f"{self.name}: {field}={depth} but the {tower} encoder of '{backbone.spec}' has {layers} "
                    f"layers; use --set {field}={layers} or less (depth d puts prompts at the input and "
                    "at layers 1..d-1)."
                )

    # ---- text side ---------------------------------------------------------------------------
    def _fixed_words(self, backbone: Backbone) -> tuple[str, str]:
        return split_init(backbone, self.config.ctx_init, self.config.n_ctx_text)

    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        self.bind(backbone)
        _, fixed = self._fixed_words(backbone)
        self.tokens = PromptTokens(backbone, classnames, self.ctx.shape[-2], "end", fixed)

    def prepare(self, data: PixelData) -> None:
        cfg, backbone = self.config, self.backbone
        generator = torch.Generator().manual_seed(data.seed)
        words, _ = self._fixed_words(backbone)
        self.ctx = nn.Parameter(new_context(backbone, cfg.n_ctx_text, words, generator=generator))
        width_t = backbone.text_width
        self.text_deep = nn.ParameterList(
            [normal_prompt((cfg.n_ctx_text, width_t), generator) for _ in range(max(cfg.depth_text - 1, 0))]
        )
        self.build_vision(generator)
        self.attach(backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def build_vision(self, generator: torch.Generator) -> None:
        """IVLP: independent vision prompts at the input and at layers 1..depth-1."""
        cfg, width_v = self.config, self.backbone.vision_width
        if cfg.depth_vision > 0:
            self.vision_shallow = normal_prompt((cfg.n_ctx_vision, width_v), generator)
        self.vision_deep = nn.ParameterList(
            [
                normal_prompt((cfg.n_ctx_vision, width_v), generator)
                for _ in range(max(cfg.depth_vision - 1, 0))
            ]
        )

    def vision_prompt_tensors(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        return getattr(self, "vision_shallow", None), list(self.vision_deep)

    def before_load(self, meta: Any) -> None:
        """Create the parameter lists (shapes from the config and the saved widths) before loading."""
        cfg, text_width, vision_width = self.config, int(meta["text_width"]), int(meta["vision_width"])
        self.text_deep = zeros_list(cfg.depth_text - 1, (cfg.n_ctx_text, text_width))
        self.vision_deep = zeros_list(cfg.depth_vision - 1, (cfg.n_ctx_vision, vision_width))

    def text_features(self) -> torch.Tensor:
        backbone, device = self.backbone, self.backbone.device
        embeds = self.tokens(self.ctx).to(device)
        with text_prompts(backbone, self.tokens.first_slot, list(self.text_deep)):
            feats = backbone.encode_text_embeddings(embeds, self.tokens.eot.to(device))
        return F.normalize(feats.float(), dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        shallow, deep = self.vision_prompt_tensors()
        pixels = pixels.to(self.backbone.device, self.backbone.dtype)
        if shallow is None:
            return F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
        with vision_prompts(self.backbone, shallow, deep):
            return F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
