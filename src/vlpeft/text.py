"""Class text embeddings from prompt templates (single template or ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import format_prompts
from vlpeft.utils import track


@torch.no_grad()
def encode_prompts(backbone: Backbone, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N,) prompts -> (N, D) L2-normalised text embeddings, in batches."""
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    out = [backbone.encode_text(backbone.tokenize(b)) for b in track(batches, "Encoding prompts")]
    return F.normalize(torch.cat(out).float(), dim=-1)


@torch.no_grad()
def class_embeddings(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """(C, D) zero-shot class weights: the normalised mean of the normalised per-template embeddings.

    CLIP's prompt ensembling as in CoOp's ``ZeroshotCLIP2``; with one template it is simply
    that template's normalised embedding.
    """
    prompts = [p for t in templates for p in format_prompts(t, classnames)]  # template-major
    feats = encode_prompts(backbone, prompts, batch_size)  # (T*C, D)
    feats = feats.reshape(len(templates), len(classnames), -1).mean(dim=0)  # (C, D)
    return F.normalize(feats, dim=-1)
