"""Tuning a subset of the backbone's own weights: BitFit, LN-tuning, full fine-tuning, WiSE-FT, FLYP."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import format_prompts
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.deep_prompts import PixelData
from vlpeft.methods.module_adapter import ModuleAdapter, ModuleAdapterConfig, tower_of, unfreeze


@register_method
class BitFit(ModuleAdapter):
    """BitFit: train every bias term of the encoders (linear layers and layer norms), nothing else.

    Ben Zaken et al., "BitFit", ACL 2022, https://arxiv.org/abs/2106.10199; as the CLIP few-shot
    baseline of Farina et al. (2SFS, CVPR 2025) on CLIP-LoRA's recipe (``main.py``: AdamW 2e-4,
    wd 1e-2, cosine, batch 32, single template). There, OpenAI's fused ``in_proj_bias`` of q/k/v is
    not a module ``.bias`` and stays frozen; on HF CLIP q/k/v have their own biases and we train them
    (BitFit's definition: all biases).

    Example: ``vlpeft train --method bitfit --set towers=vision ...``
    """

    name = "bitfit"
    paper = "https://arxiv.org/abs/2106.10199"

    def adapt(self, model: Backbone) -> None:
        unfreeze(model, lambda n, p: n.endswith(".bias") and self.in_tower(n))


def _layer_norm_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


@register_method
class LNTuning(ModuleAdapter):
    """LN-tuning: train the weight and bias of every layer norm of the encoders.

    Zhao et al., "Tuning LayerNorm in Attention", ICLR 2024, https://arxiv.org/abs/2312.11420; the
    CLIP recipe of 2SFS (Farina et al., CVPR 2025, ``fs/ln_only.py``: every ``nn.LayerNorm`` of both
    towers, CLIP-LoRA's optimiser and schedule).

    Example: ``vlpeft train --method ln-tuning ...``
    """

    name = "ln-tuning"
    paper = "https://arxiv.org/abs/2312.11420"

    def adapt(self, model: Backbone) -> None:
        norms = _layer_norm_names(model)
        unfreeze(model, lambda n, p: n.rpartition(".")[0] in norms and self.in_tower(n))


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


@dataclass
class FLYPConfig(ModuleAdapterConfig):
    # locuslab/FLYP README, few-shot command: lr 1e-5, wd 0.2, batch 256, 20 epochs, no warm-up;
    # src/models/flyp_loss.py: CLIP's contrastive loss (learned logit scale, trained), all weights;
    # RandomResizedCrop(0.9, 1), no flip; captions: one random template per image occurrence.
    templates: str = "ensemble"
    lr: float = 1e-5
    weight_decay: float = 0.2
    batch_size: int = 256
    iters_per_shot: int = 0
    epochs: int = 20
    min_lr: float = 0.0
    aug_scale: tuple[float, float] = (0.9, 1.0)
    resolved_templates: tuple[str, ...] = ()  # filled when fitting: the templates `templates` named


@register_method
class FLYP(ModuleAdapter):
    """FLYP: fine-tune both encoders with CLIP's own contrastive loss against class-prompt captions.

    Goyal et al., "Finetune like you pretrain", CVPR 2023, https://arxiv.org/abs/2212.00638
    (locuslab/FLYP ``src/models/flyp_loss.py``): each image is paired with "template(class)" for a
    template drawn at random; the loss is the symmetric InfoNCE over the batch with the learned
    logit scale (same-class pairs count as negatives, as the code). Evaluated as zero-shot with the
    fine-tuned text encoder and the averaged templates. Not decomposable over micro-batches: under
    several processes each computes it on its share of the batch (the code's local loss).

    Example: ``vlpeft train --method flyp --shots 16 ...``
    """

    name = "flyp"
    paper = "https://arxiv.org/abs/2212.00638"
    config_class = FLYPConfig

    def adapt(self, model: Backbone) -> None:
        unfreeze(model, lambda n, p: self.in_tower(n) or n.endswith("logit_scale"))

    def prepare(self, data: PixelData) -> None:
        if self.config.accumulate != 1:
            raise ConfigError("FLYP's contrastive loss needs the whole batch at once: use accumulate=1.")
        templates = data.text.templates(self.config.templates, add_dataset_template=True)
        self.config.resolved_templates = tuple(templates)
        super().prepare(data)
        self._classnames = list(data.text.classnames)
        self._rng = random.Random(data.seed)

    def caption_templates(self) -> list[str]:
        return list(self.config.resolved_templates) or [self.config.template]

    def attach(self, backbone: Backbone, classnames) -> None:
        super().attach(backbone, classnames)
        templates = self.caption_templates()
        prompts = [p for t in templates for p in format_prompts(t, list(classnames))]
        self.register_buffer("class_ids", self.backbone.tokenize(prompts), persistent=False)
        self.__dict__["_n_templates"] = len(templates)

    def text_features(self) -> torch.Tensor:
        """(C, D): per class, normalise each template's embedding, average, normalise (FLYP's eval head)."""
        with torch.no_grad():
            feats = F.normalize(self.backbone.encode_text(self.class_ids).float(), dim=-1)
        per_template = feats.view(self.__dict__["_n_templates"], -1, feats.shape[-1])
        return F.normalize(per_template.mean(0), dim=-1)

    def loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        templates = self.caption_templates()
        captions = [
            format_prompts(self._rng.choice(templates), [self._classnames[int(y)]])[0] for y in labels
        ]
        model = self.backbone
        text = F.normalize(model.encode_text(model.tokenize(captions)).float(), dim=-1)
        logits = model.logit_scale.float() * self.image_features(pixels) @ text.t()  # (B, B)
        target = torch.arange(len(labels), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
