"""CoOp, KgCoOp and ProGrad: learned text context, trained on cached image features.

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
from vlpeft.engine.train import train_head
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.feature_head import FeatureHead, HeadData, TrainedHeadConfig
from vlpeft.methods.prompts import POSITIONS, PromptTokens, new_context


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
        self.tokens = PromptTokens(backbone, classnames, self.ctx.shape[-2], self.config.class_token_position)

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


@register_method
class CoOp(PromptHead):
    """CoOp: context optimisation — learned context vectors in front of each class name.

    Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
    https://arxiv.org/abs/2109.01134; official code KaiyangZhou/CoOp ``trainers/coop.py``.
    Unified or class-specific context, class token at the end/middle/front, random N(0, 0.02) or
    word initialisation. Epochs follow ``scripts/coop/main.sh``: 50 for 1 shot, 100 for 2-4, 200
    for 8-16; ImageNet always 50. Trains on cached augmented views in float32 (the code uses
    float16 CLIP). See ``coop-ctxv1`` for the setting the CoCoOp paper used.

    Example: ``vlpeft train --method coop --shots 16 --set n_ctx=16 --set class_specific=true ...``
    """

    name = "coop"
    paper = "https://arxiv.org/abs/2109.01134"

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        return {**super().preset(dataset, shots), **coop_epochs(dataset, shots)}


@dataclass
class CoOpCtxV1Config(PromptConfig):
    # KaiyangZhou/CoOp configs/trainers/CoOp/vit_b16_ctxv1.yaml (vit_b16_ep50_ctxv1 for ImageNet), as
    # scripts/cocoop/base2new_train.sh runs CoOp for the CoCoOp paper: init "a photo of a" (4 tokens).
    ctx_init: str = "a photo of a"
    n_ctx: int = 4


@register_method
class CoOpCtxV1(CoOp):
    """CoOp as the CoCoOp paper ran it: context initialised from "a photo of a", 200 epochs.

    Same method as ``coop`` (IJCV 2022); the setting of Zhou et al., "Conditional Prompt Learning
    for Vision-Language Models", CVPR 2022 (``configs/trainers/CoOp/vit_b16_ctxv1.yaml``).
    With the dataset template "a photo of a {}." it starts exactly at zero-shot CLIP.

    Example: ``vlpeft train --method coop-ctxv1 --subsample base ...``
    """

    name = "coop-ctxv1"
    paper = "https://arxiv.org/abs/2203.05557"
    config_class = CoOpCtxV1Config
    identity_at_init = True

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        return {"epochs": 50} if dataset == "ImageNet" else {}


@dataclass
class KgCoOpConfig(PromptConfig):
    # htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (batch 128, 100 epochs, init
    # "a photo of a") and scripts/run.sh (W = 8.0)
    ctx_init: str = "a photo of a"
    n_ctx: int = 4
    batch_size: int = 128
    epochs: int = 100
    weight: float = 8.0


@register_method
class KgCoOp(PromptHead):
    """KgCoOp: CoOp plus ``W * (1 - mean_c cos(w_c, w_c^clip))`` towards the hand-crafted prompts.

    Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
    CVPR 2023, https://arxiv.org/abs/2303.13283; official code htyao89/KgCoOp ``trainers/kgcoop.py``.
    ``w^clip`` is zero-shot CLIP's embedding of the dataset's template. The code's
    ``1 - cos`` equals half the paper's squared L2 distance of unit vectors.

    Example: ``vlpeft train --method kgcoop --set weight=8.0 ...``
    """

    name = "kgcoop"
    paper = "https://arxiv.org/abs/2303.13283"
    config_class = KgCoOpConfig
    identity_at_init = True

    def prepare(self, data: HeadData) -> None:
        super().prepare(data)
        self.register_buffer("clip_weights", data.text.weights("single"), persistent=False)

    def knowledge_loss(self, text: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(text, self.clip_weights, dim=-1, eps=1e-7).mean()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        logits = self.logit_scale * F.normalize(features, dim=-1) @ text.t()
        return F.cross_entropy(logits, labels) + self.config.weight * self.knowledge_loss(text)


@dataclass
class ProGradConfig(PromptConfig):
    # BeierZhu/Prompt-align configs/trainers/ProGrad/rn50.yaml (batch 32, 200 epochs, CTX_INIT True,
    # T 1.0) and train.py (N_CTX 16, LOSS.LAMBDA 1.0)
    ctx_init: str = "auto"  # the dataset template's words before the class name, after n_ctx - k zeros
    n_ctx: int = 16
    temperature: float = 1.0
    projection_weight: float = 1.0  # LOSS.LAMBDA (0.8 in the paper for 8/16 shots on Flowers, DTD, EuroSAT)


@register_method
class ProGrad(PromptHead):
    """ProGrad: prompt-aligned gradients — keep only the parts of the CE gradient that agree with zero-shot.

    Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023,
    https://arxiv.org/abs/2205.14865; official code BeierZhu/Prompt-align ``trainers/prograd.py`` and
    ``dassl/engine/trainer.py prograd_backward_and_update``. If ``g_ce · g_kd < 0`` the update is
    ``g_ce - lambda (g_ce · g_kd) / ||g_kd||^2 g_kd``, where ``g_kd`` is the gradient of the
    distillation loss ``T^2 CE(softmax(zs / T), log_softmax(logits / T))`` towards zero-shot CLIP.
    Context: ``n_ctx - k`` zeros then the k token embeddings of the template's words (the code).

    Example: ``vlpeft train --method prograd --set projection_weight=0.8 ...``
    """

    name = "prograd"
    paper = "https://arxiv.org/abs/2205.14865"
    config_class = ProGradConfig

    def prepare(self, data: HeadData) -> None:
        cfg = self.config
        phrase = _template_words(data.text.dataset_template) if cfg.ctx_init == "auto" else cfg.ctx_init
        words = new_context(self.backbone, 0, phrase) if phrase else torch.zeros(0, self._width())
        if len(words) > cfg.n_ctx:
            raise ConfigError(
                f"ProGrad's init phrase {phrase!r} has {len(words)} tokens > n_ctx={cfg.n_ctx}."
            )
        self.ctx = nn.Parameter(torch.cat([torch.zeros(cfg.n_ctx - len(words), words.shape[1]), words]))
        self.attach(self.backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))
        self.register_buffer("zero_shot_weights", data.text.weights("single"), persistent=False)

    def _width(self) -> int:
        return self.backbone.token_embedding.embedding_dim

    def backward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        logits = self.logit_scale * f @ self.text_features().t()
        ce = F.cross_entropy(logits, labels)
        with torch.no_grad():
            teacher = (self.logit_scale * f @ self.zero_shot_weights.t() / self.config.temperature).softmax(
                -1
            )
        t = self.config.temperature
        kd = -(teacher * F.log_softmax(logits / t, dim=-1)).sum(-1).mean() * t * t
        params = self.trainable_parameters()
        g_kd = torch.autograd.grad(kd, params, retain_graph=True)
        g_ce = torch.autograd.grad(ce, params)
        for p, gc, gk in zip(params, g_ce, g_kd, strict=True):
            p.grad = project_gradient(gc, gk, self.config.projection_weight)
        return ce.detach()


def coop_epochs(dataset: str, shots: int | None) -> dict[str, int]:
    """CoOp's epochs by shots (scripts/coop/main.sh; PLOT's train.py too): 50 / 100 / 200; ImageNet 50."""
    if dataset == "ImageNet" or (shots is not None and shots <= 1):
        return {"epochs": 50}
    if shots is not None and shots <= 4:
        return {"epochs": 100}
    return {}


def project_gradient(g_ce: torch.Tensor, g_kd: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """ProGrad's rule: remove the component of ``g_ce`` that conflicts with ``g_kd`` (if they conflict)."""
    dot = (g_ce * g_kd).sum()
    if dot >= 0:
        return g_ce
    return g_ce - weight * dot / g_kd.pow(2).sum().clamp(min=1e-12) * g_kd


def _template_words(template: str) -> str:
    """The words of a template before its class name: 'a photo of a {}.' -> 'a photo of a'."""
    head = template.split("{}")[0].strip()
    return head.rstrip(",").strip()
