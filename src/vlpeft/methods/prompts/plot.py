"""PLOT on a ViT's patch tokens: several learned prompts per class matched to the patch features by
optimal transport (``plot-patches``). Official PLOT uses ResNet feature-map locals and official PLOT++
(``plot++``, :mod:`vlpeft.methods.prompts.plotpp`) prompted CLS features; this variant is neither."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.base import not_exportable, register_method
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.base import PromptConfig, PromptHead, coop_epochs
from vlpeft.methods.prompts.tokens import new_context


@torch.no_grad()
def sinkhorn(cost: torch.Tensor, eps: float = 0.1, max_iter: int = 100, thresh: float = 1e-2) -> torch.Tensor:
    """Entropic OT plan for (..., M, N) costs with uniform marginals 1/M and 1/N (PLOT's ``Sinkhorn``).

    ``K = exp(-cost / eps)``; alternate ``r = (1/M) / (K c)``, ``c = (1/N) / (K^T r)`` from ones until
    the mean change of ``r`` is below ``thresh``; the plan is ``diag(r) K diag(c)``.
    """
    m, n = cost.shape[-2:]
    kernel = torch.exp(-cost / eps)
    r = torch.ones(cost.shape[:-1], dtype=cost.dtype, device=cost.device)
    c = torch.ones((*cost.shape[:-2], n), dtype=cost.dtype, device=cost.device)
    for _ in range(max_iter):
        previous = r
        r = (1.0 / m) / (kernel @ c[..., None]).squeeze(-1)
        c = (1.0 / n) / (kernel.transpose(-2, -1) @ r[..., None]).squeeze(-1)
        if (r - previous).abs().mean() < thresh:
            break
    return r[..., None] * kernel * c[..., None, :]


@dataclass
class PLOTConfig(PromptConfig):
    # CHENGY12/PLOT plot-coop: N 4 prompts x N_CTX 16, random init, generic (scripts/main.sh, train.py);
    # configs/trainers/PLOT/rn50.yaml: SGD 0.002, cosine, 1 constant warm-up epoch at 1e-5; batch 32
    # (the yaml's 128 is overridden to 32 by train.py only for three datasets; its epochs by shots below).
    n_prompts: int = 4
    n_ctx: int = 16
    eps: float = 0.1
    max_iter: int = 100
    thresh: float = 1e-2
    # plot.py computes the global logits too but returns the OT logits alone, on every dataset (the line
    # that would add them, `# logits2 = (logits2 + logits)`, is commented out): True adds them.
    add_global: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ctx_init:
            raise ConfigError(
                "plot initialises its prompts at random (N(0, 0.02)), as plot-coop's code does; ctx_init is "
                f"not supported (got {self.ctx_init!r}). Leave it empty."
            )


@register_method
class PLOT(PromptHead):
    """PLOT over a ViT's patch tokens: the class score is the OT similarity between N prompts and the patches.

    Chen et al., "PLOT: Prompt Learning with Optimal Transport for Vision-Language Models", ICLR 2023,
    https://arxiv.org/abs/2210.01253; official code CHENGY12/PLOT ``plot-coop/trainers/plot.py``.
    Cost ``1 - cos(local feature m, prompt n)``; Sinkhorn (eps 0.1, <=100 iterations, uniform
    marginals) under no_grad; score ``sum_mn T_mn cos_mn``; logits ``logit_scale * score``. The
    official code is RN50-only (its local features are the attention-pool's 7x7 outputs) and its ViT
    version is PLOT++ (``plot++``: prompt-conditioned CLS features); here the local features are a
    ViT's patch tokens after the final layer norm and projection, cached like any feature — a
    variant of our own, named for what it is. Epochs: 50 for 1 shot, 100 for 2-4, 200 for 8-16
    (train.py). Runs saved under the old name ``plot`` load as this method.

    Example: ``vlpeft train --method plot-patches --shots 16 ...``
    """

    name = "plot-patches"
    paper = "https://arxiv.org/abs/2210.01253"
    config_class = PLOTConfig
    uses_tokens = True

    def export_parts(self, merge: bool = False):
        raise not_exportable(self.name, "optimal transport over local features")

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        return {**super().preset(dataset, shots), **coop_epochs(dataset, shots)}

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int, vision_width: int = 768
    ) -> int:
        cfg = cls.config_class()
        return cfg.n_prompts * cfg.n_ctx * text_width

    def bind(self, backbone: Backbone) -> None:
        super().bind(backbone)
        self._skip_first = backbone.family == "clip"  # the CLS token is the global feature, not a local one

    def prepare(self, data: HeadData) -> None:
        cfg = self.config
        generator = torch.Generator().manual_seed(data.seed)
        ctx = [new_context(self.backbone, cfg.n_ctx, "", None, generator) for _ in range(cfg.n_prompts)]
        self.ctx = nn.Parameter(torch.stack(ctx))  # (N, n_ctx, W)
        self.attach(self.backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def raw_text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, D) unnormalised embeddings of the N prompts of every class."""
        ctx = self.ctx if ctx is None else ctx
        device = self.backbone.device
        embeds = torch.cat([self.tokens(c) for c in ctx]).to(device)  # (N*C, L, W), prompt-major
        eot = self.tokens.eot.repeat(len(ctx)).to(device)
        feats = self.backbone.encode_text_embeddings(embeds, eot).float().cpu()
        return feats.view(len(ctx), -1, feats.shape[-1])

    def text_features(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C, D) normalised embeddings of the N prompts of every class."""
        return F.normalize(self.raw_text_features(ctx), dim=-1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, D) token features -> (B, C) logits."""
        local = F.normalize(features[:, 1:] if self._skip_first else features, dim=-1)  # (B, M, D)
        raw = self.raw_text_features()  # (N, C, D)
        text = F.normalize(raw, dim=-1)
        sim = torch.einsum("bmd,ncd->bcmn", local, text)  # (B, C, M, N)
        plan = sinkhorn(1 - sim, self.config.eps, self.config.max_iter, self.config.thresh)
        logits = self.logit_scale * (plan * sim).sum(dim=(-2, -1))
        if self.config.add_global:
            # the code pools the *unnormalised* prompt features: normalize(mean_n t_n)
            glob = F.normalize(features[:, 0], dim=-1) @ F.normalize(raw.mean(0), dim=-1).t()
            logits = logits + self.logit_scale * glob
        return logits
