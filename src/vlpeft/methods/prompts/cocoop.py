"""CoCoOp: the learned context is shifted by a bias computed from each image (a meta-net)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.methods.base import not_exportable, register_method
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.base import PromptConfig, PromptHead


@dataclass
class CoCoOpConfig(PromptConfig):
    # KaiyangZhou/CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml: n_ctx 4 from
    # "a photo of a", SGD 0.002, batch 1, 10 epochs, cosine with 1 constant warm-up epoch at 1e-5.
    ctx_init: str = "a photo of a"
    n_ctx: int = 4
    batch_size: int = 1
    epochs: int = 10
    eval_chunk: int = 4096  # prompts per text-encoder call at evaluation (images x classes)


@register_method
class CoCoOp(PromptHead):
    """CoCoOp: conditional context ``ctx + pi(x)``, with ``pi`` a small meta-net of the image feature.

    Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022,
    https://arxiv.org/abs/2203.05557; official code KaiyangZhou/CoOp ``trainers/cocoop.py``. The
    meta-net is ``Linear(D, D/16) -> ReLU -> Linear(D/16, W)`` (with biases) on the normalised
    image feature; its output is added to every context token. The official code loops over
    images; here the B x C prompts of a batch go through the text encoder in one call.

    Example: ``vlpeft train --method cocoop --subsample base ...``
    """

    name = "cocoop"
    paper = "https://arxiv.org/abs/2203.05557"
    config_class = CoCoOpConfig

    def export_parts(self, merge: bool = False):
        raise not_exportable(self.name, "the prompts depend on each image")

    def build(self, num_classes: int, embed_dim: int) -> None:
        width = self.backbone.token_embedding.embedding_dim
        self.meta_net = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 16), nn.ReLU(inplace=True), nn.Linear(embed_dim // 16, width)
        )

    def before_load(self, meta) -> None:
        embed, width = int(meta["embed_dim"]), int(meta["text_width"])
        self.meta_net = nn.Sequential(
            nn.Linear(embed, embed // 16), nn.ReLU(inplace=True), nn.Linear(embed // 16, width)
        )

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int, vision_width: int = 768
    ) -> int:
        hidden = embed_dim // 16
        meta_net = embed_dim * hidden + hidden + hidden * text_width + text_width
        return super().parameter_count(embed_dim, num_classes, text_width) + meta_net

    def prepare(self, data: HeadData) -> None:
        super().prepare(data)
        self.build(data.num_classes, data.train.features.shape[-1])

    def conditional_text(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised image features -> (B, C, D) normalised class embeddings."""
        ctx = self.ctx[None] + self.meta_net(features)[:, None]  # (B, n_ctx, W): one bias for all tokens
        embeds = self.tokens(ctx, per_image=True)  # (B, C, L, W)
        b, c = embeds.shape[:2]
        device = self.backbone.device
        eot = self.tokens.eot.to(device).repeat(b)
        feats = self.backbone.encode_text_embeddings(embeds.flatten(0, 1).to(device), eot)
        return F.normalize(feats.float(), dim=-1).cpu().view(b, c, -1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        f = F.normalize(features, dim=-1)
        chunk = max(1, self.config.eval_chunk // self.tokens.prefix.shape[0]) if not self.training else len(f)
        parts = [
            self.logit_scale * torch.einsum("bd,bcd->bc", part, self.conditional_text(part))
            for part in f.split(chunk)
        ]
        return torch.cat(parts)
