"""VPT (shallow and deep): learned tokens in the image encoder; the text side is a fixed prompt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import format_prompts
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import PixelData
from vlpeft.methods.prompts.multimodal import MultimodalConfig, MultimodalPrompts


@dataclass
class VPTConfig(MultimodalConfig):
    # configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml: N_CTX_VISION 8, PROMPT_DEPTH_VISION 12, SGD 0.0025
    template: str = "a photo of a {}."  # trainers/vpt.py: the text side is this hand-crafted prompt
    n_ctx_text: int = 0
    depth_text: int = 0
    ctx_init: str = ""
    n_ctx_vision: int = 8
    depth_vision: int = 12
    lr: float = 0.0025


class VPTBase(MultimodalPrompts):
    """Visual prompts only; the text side is the frozen hand-crafted prompt."""

    config_class = VPTConfig

    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        self.bind(backbone)
        prompts = format_prompts(self.config.template, classnames)
        with torch.no_grad():
            feats = backbone.encode_text(backbone.tokenize(prompts))
        self.register_buffer("text_weights", F.normalize(feats.float(), dim=-1), persistent=False)

    def prepare(self, data: PixelData) -> None:
        generator = torch.Generator().manual_seed(data.seed)
        self.build_vision(generator)
        self.attach(self.backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def text_features(self) -> torch.Tensor:
        return self.text_weights


@register_method
class VPTDeep(VPTBase):
    """VPT-deep: 8 learned tokens at the input of the vision transformer and at every later layer.

    Jia et al., "Visual Prompt Tuning", ECCV 2022, https://arxiv.org/abs/2203.12119, as the CLIP
    baseline of muzairkhattak/multimodal-prompt-learning (``trainers/vpt.py``, the shipped config).

    Example: ``vlpeft train --method vpt-deep --shots 16 ...``
    """

    name = "vpt-deep"
    paper = "https://arxiv.org/abs/2203.12119"


@dataclass
class VPTShallowConfig(VPTConfig):
    # multimodal-prompt-learning train.py defaults: N_CTX_VISION 2, PROMPT_DEPTH_VISION 1
    n_ctx_vision: int = 2
    depth_vision: int = 1


@register_method
class VPTShallow(VPTBase):
    """VPT-shallow: learned tokens at the input of the vision transformer only.

    Jia et al., ECCV 2022, https://arxiv.org/abs/2203.12119 (defaults of the multimodal-prompt-learning
    ``train.py``: 2 tokens, depth 1).

    Example: ``vlpeft train --method vpt-shallow ...``
    """

    name = "vpt-shallow"
    paper = "https://arxiv.org/abs/2203.12119"
    config_class = VPTShallowConfig
