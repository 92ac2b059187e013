"""KgCoOp: CoOp regularised towards the hand-crafted prompts' embeddings."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.base import PromptConfig, PromptHead


@dataclass
class KgCoOpConfig(PromptConfig):
    # htyao89/KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml (batch 128, 100 epochs, init
    # "a photo of a") and scripts/run.sh (W = 8.0)
    ctx_init: str = "a photo of a"
    n_ctx: int = 4
    batch_size: int = 128
    epochs: int = 100
    weight: float = 8.0
    # trainers/kgcoop.py CUSTOM_TEMPLATES: CoOp's templates except DescribableTextures (resolved in prepare)
    teacher_template: str = "auto"


# htyao89/KgCoOp trainers/kgcoop.py CUSTOM_TEMPLATES where they differ from CoOp's dataset templates.
KGCOOP_TEMPLATES = {"DescribableTextures": "a photo of a {}, a type of texture."}


@register_method
class KgCoOp(PromptHead):
    """KgCoOp: CoOp plus ``W * (1 - mean_c cos(w_c, w_c^clip))`` towards the hand-crafted prompts.

    Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
    CVPR 2023, https://arxiv.org/abs/2303.13283; official code htyao89/KgCoOp ``trainers/kgcoop.py``.
    ``w^clip`` is zero-shot CLIP's embedding of KgCoOp's template for the dataset (CoOp's, except
    DescribableTextures: "a photo of a {}, a type of texture."). The code's ``1 - cos`` equals half
    the paper's squared L2 distance of unit vectors. The code computes ``w^clip`` with a second CLIP
    copy that is never cast to fp32 (fp16 on GPU); vlpeft computes it in fp32, which moves the
    knowledge term by about 2e-4 on ViT-B/16.

    Example: ``vlpeft train --method kgcoop --set weight=8.0 ...``
    """

    name = "kgcoop"
    paper = "https://arxiv.org/abs/2303.13283"
    config_class = KgCoOpConfig
    identity_at_init = True

    def prepare(self, data: HeadData) -> None:
        super().prepare(data)
        template = self.config.teacher_template
        if template == "auto":
            template = KGCOOP_TEMPLATES.get(data.dataset, data.text.dataset_template)
            self.config = replace(self.config, teacher_template=template)  # resolved: saved with the run
        self.register_buffer("clip_weights", data.text.template_weights([template]), persistent=False)

    def knowledge_loss(self, text: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(text, self.clip_weights, dim=-1, eps=1e-7).mean()

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        text = self.text_features()
        logits = self.logit_scale * F.normalize(features, dim=-1) @ text.t()
        ce, knowledge = F.cross_entropy(logits, labels), self.config.weight * self.knowledge_loss(text)
        self.record_terms(ce=ce, knowledge=knowledge)
        return ce + knowledge
