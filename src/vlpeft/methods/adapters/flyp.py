"""FLYP: fine-tune like you pretrain (contrastive loss against the class prompts)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import format_prompts
from vlpeft.errors import ConfigError
from vlpeft.methods.adapters.base import ModuleAdapter, ModuleAdapterConfig, unfreeze
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import PixelData


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
        image_to_text, text_to_image = (
            F.cross_entropy(logits, target) / 2,
            F.cross_entropy(logits.t(), target) / 2,
        )
        self.record_terms(image_to_text=image_to_text, text_to_image=text_to_image)
        return image_to_text + text_to_image
