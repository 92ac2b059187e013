"""Prompts in both encoders: VPT (vision only), IVLP, MaPLe and PromptSRC.

Defaults from muzairkhattak/multimodal-prompt-learning (``configs/trainers/{VPT,IVLP,MaPLe}/*``,
``trainers/{vpt,independentVL,maple}.py``) and muzairkhattak/PromptSRC
(``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``, ``trainers/promptsrc.py``).
Layers are counted from 0; depth d means prompts at the input and replacements at layers 1..d-1.
Everything runs in float32 (the official code uses float16 CLIP).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import PROMPTSRC_TEMPLATES, format_prompts
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.deep_prompts import PixelData, PixelPromptLearner, text_prompts, vision_prompts
from vlpeft.methods.feature_head import TrainedHeadConfig
from vlpeft.methods.prompts import PromptTokens, new_context, split_init


def _zeros_list(count: int, shape: tuple[int, int]) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.zeros(shape)) for _ in range(max(count, 0))])


def _normal(shape: tuple[int, ...], generator: torch.Generator) -> nn.Parameter:
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
            [_normal((cfg.n_ctx_text, width_t), generator) for _ in range(max(cfg.depth_text - 1, 0))]
        )
        self.build_vision(generator)
        self.attach(backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def build_vision(self, generator: torch.Generator) -> None:
        """IVLP: independent vision prompts at the input and at layers 1..depth-1."""
        cfg, width_v = self.config, self.backbone.vision_width
        if cfg.depth_vision > 0:
            self.vision_shallow = _normal((cfg.n_ctx_vision, width_v), generator)
        self.vision_deep = nn.ParameterList(
            [_normal((cfg.n_ctx_vision, width_v), generator) for _ in range(max(cfg.depth_vision - 1, 0))]
        )

    def vision_prompt_tensors(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        return getattr(self, "vision_shallow", None), list(self.vision_deep)

    def before_load(self, meta: Any) -> None:
        """Create the parameter lists (shapes from the config and the saved widths) before loading."""
        cfg, text_width, vision_width = self.config, int(meta["text_width"]), int(meta["vision_width"])
        self.text_deep = _zeros_list(cfg.depth_text - 1, (cfg.n_ctx_text, text_width))
        self.vision_deep = _zeros_list(cfg.depth_vision - 1, (cfg.n_ctx_vision, vision_width))

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


@register_method
class IVLP(MultimodalPrompts):
    """IVLP: independent vision-language prompting — deep prompts in both encoders, not coupled.

    The baseline of Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023,
    https://arxiv.org/abs/2210.03117 (``trainers/independentVL.py``); 2 text and 2 vision tokens,
    depth 12 in both encoders (the shipped config). Text context from "a photo of a": the first
    n_ctx words are learned, the rest stay fixed before the class name.

    Example: ``vlpeft train --method ivlp --subsample base ...``
    """

    name = "ivlp"
    paper = "https://arxiv.org/abs/2210.03117"


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
        self.text_deep = _zeros_list(len(self.projections), (self.config.n_ctx_text, text_width))

    @classmethod
    def _vision_count(cls, cfg: MultimodalConfig, text_width: int, vision_width: int) -> int:
        return max(cfg.depth_text, 0) * (text_width * vision_width + vision_width)  # one Linear per layer

    def vision_prompt_tensors(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        shallow = self.proj(self.ctx)
        return shallow, [proj(p) for proj, p in zip(self.projections, self.text_deep, strict=True)]


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


@dataclass
class PromptSRCConfig(MultimodalConfig):
    # muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    lr: float = 0.0025
    epochs: int = 20
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa_mean: float = 15.0
    gpa_std: float = 1.0


@register_method
class PromptSRC(MultimodalPrompts):
    """PromptSRC: IVLP prompts regularised towards frozen CLIP, averaged over epochs with Gaussian weights.

    Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting",
    ICCV 2023, https://arxiv.org/abs/2307.06948; official code muzairkhattak/PromptSRC
    ``trainers/promptsrc.py``. Loss: ``CE + KL(p_zs || p) / (B C) + 25 * L1(text, text_zs) +
    10 * L1(image, image_zs)``; ``text_zs`` averages the unnormalised embeddings of 60 ImageNet
    templates. After epoch e (1-based) the prompts are accumulated with weight
    ``N(e; 15, 1)`` (normalised over the epochs); the final prompts are that average. The code
    averages the whole state dict; the frozen weights average to themselves, so averaging the
    learned tensors is the same.

    Example: ``vlpeft train --method promptsrc --subsample base ...``
    """

    name = "promptsrc"
    paper = "https://arxiv.org/abs/2307.06948"
    config_class = PromptSRCConfig

    def prepare(self, data: PixelData) -> None:
        super().prepare(data)
        backbone = self.backbone
        prompts = [p for t in PROMPTSRC_TEMPLATES for p in format_prompts(t, data.text.classnames)]
        with torch.no_grad():
            raw = torch.cat(
                [
                    backbone.encode_text(backbone.tokenize(prompts[i : i + 256])).float()
                    for i in range(0, len(prompts), 256)
                ]
            )
        frozen = F.normalize(raw.view(len(PROMPTSRC_TEMPLATES), data.num_classes, -1).mean(0), dim=-1)
        self.register_buffer("frozen_text", frozen, persistent=False)
        self._gpa_weights = gaussian_weights(self.config.epochs, self.config.gpa_mean, self.config.gpa_std)
        self._gpa_sum = None

    def loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image, text = self.image_features(pixels), self.text_features()
        logits = self.logit_scale * image @ text.t()
        with torch.no_grad():
            frozen_image = F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
            zero_shot = self.logit_scale * frozen_image @ self.frozen_text.t()
        ce = F.cross_entropy(logits, labels.to(logits.device))
        kl = (
            F.kl_div(
                F.log_softmax(logits, dim=1),
                F.log_softmax(zero_shot, dim=1),
                reduction="sum",
                log_target=True,
            )
            / logits.numel()
        )
        text_l1 = F.l1_loss(text, self.frozen_text) * self.config.text_loss_weight
        image_l1 = F.l1_loss(image, frozen_image) * self.config.image_loss_weight
        return ce + kl + text_l1 + image_l1

    def on_epoch_end(self, epoch: int) -> None:
        weight = self._gpa_weights[epoch]
        snapshot = {k: v.detach().clone() * weight for k, v in self.named_parameters()}
        if self._gpa_sum is None:
            self._gpa_sum = snapshot
        else:
            for k, v in snapshot.items():
                self._gpa_sum[k] += v

    def on_fit_end(self) -> None:
        if self._gpa_sum is None:
            return
        with torch.no_grad():
            for k, p in self.named_parameters():
                p.copy_(self._gpa_sum[k])


def gaussian_weights(epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's GPA weights ``N(e; mean, std)`` for epochs e = 1..epochs, normalised to sum to 1."""
    raw = [
        math.exp(-((e - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))
        for e in range(1, epochs + 1)
    ]
    total = sum(raw)
    if total == 0:
        raise ConfigError(f"gpa_mean={mean}, gpa_std={std} put no weight on epochs 1..{epochs}; adjust them.")
    return [w / total for w in raw]
