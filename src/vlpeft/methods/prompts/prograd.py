"""ProGrad: CoOp whose gradient keeps only what agrees with zero-shot CLIP's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.base import PromptConfig, PromptHead
from vlpeft.methods.prompts.tokens import new_context


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
        self.record_terms(ce=ce, kd=kd)
        return ce.detach()


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
