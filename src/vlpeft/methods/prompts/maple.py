"""MaPLe: deep text prompts coupled to the vision prompts by linear projections."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.prompts.multimodal import MultimodalConfig, MultimodalPrompts, zeros_list


@dataclass
class MaPLeConfig(MultimodalConfig):
    # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: N_CTX 2, PROMPT_DEPTH 9, SGD 0.0035, 5 epochs
    depth_text: int = 9
    depth_vision: int = 9


@register_method
class MaPLe(MultimodalPrompts):
    """MaPLe: multi-modal prompts — vision prompts are projections of the text prompts, layer by layer.

    Khattak et al., CVPR 2023, https://arxiv.org/abs/2210.03117; official code
    muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``. The input vision prompts are
    ``proj(ctx)`` and the layer-i vision prompts ``proj_i(text_prompt_i)`` with a separate
    ``Linear(W_text, W_vision)`` per layer (copies of one initialisation, as ``_get_clones``).

    Example: ``vlpeft train --method maple --subsample base ...``
    """

    name = "maple"
    paper = "https://arxiv.org/abs/2210.03117"
    config_class = MaPLeConfig

    def build_vision(self, generator: torch.Generator) -> None:
        cfg, backbone = self.config, self.backbone
        if cfg.depth_vision != cfg.depth_text or cfg.n_ctx_vision != cfg.n_ctx_text:
            raise ConfigError(
                "MaPLe couples the two encoders: depth_vision/n_ctx_vision must equal the text ones."
            )
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
            self.proj = nn.Linear(backbone.text_width, backbone.vision_width)
            layer = nn.Linear(backbone.text_width, backbone.vision_width)
        self.projections = nn.ModuleList([copy.deepcopy(layer) for _ in range(max(cfg.depth_text - 1, 0))])

    def before_load(self, meta: Any) -> None:
        text_width, vision_width = int(meta["text_width"]), int(meta["vision_width"])
        self.proj = nn.Linear(text_width, vision_width)
        self.projections = nn.ModuleList(
            [nn.Linear(text_width, vision_width) for _ in range(max(self.config.depth_text - 1, 0))]
        )
        self.text_deep = zeros_list(len(self.projections), (self.config.n_ctx_text, text_width))

    @classmethod
    def _vision_count(cls, cfg: MultimodalConfig, text_width: int, vision_width: int) -> int:
        return max(cfg.depth_text, 0) * (text_width * vision_width + vision_width)  # one Linear per layer

    def vision_prompt_tensors(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        shallow = self.proj(self.ctx)
        return shallow, [proj(p) for proj, p in zip(self.projections, self.text_deep, strict=True)]
