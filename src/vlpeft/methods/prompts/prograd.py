"""ProGrad: CoOp whose gradient keeps only what agrees with zero-shot CLIP's."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import HeadData
from vlpeft.methods.prompts.base import PromptConfig, PromptHead, coop_epochs
from vlpeft.methods.prompts.tokens import init_context, new_context

# BeierZhu/Prompt-align ProGrad.public/trainers/prograd.py (commit 1b76203), CUSTOM_TEMPLATES: the
# template of the context init and of the zero-shot teacher. Other datasets: their own template.
PROGRAD_TEMPLATES = {
    "ImageNet": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "OxfordPets": "a type of pet, a photo of a {}.",
    "StanfordCars": "a photo of a {}.",
    "OxfordFlowers": "a type of flower, a photo of a {}.",
    "Food101": "a type of food, a photo of {}.",
    "FGVCAircraft": "a type of aircraft, a photo of a {}.",
    "SUN397": "a photo of a {}.",
    "DescribableTextures": "a texture of {}.",
    "EuroSAT": "a centered satellite photo of {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}


@dataclass
class ProGradConfig(PromptConfig):
    # BeierZhu/Prompt-align configs/trainers/ProGrad/rn50.yaml (batch 32, 200 epochs, CTX_INIT True,
    # T 1.0) and train.py (N_CTX 16, LOSS.LAMBDA 1.0); epochs by shots and lambda 0.8 from the README
    ctx_init: str = "auto"  # auto: ProGrad's template for the dataset, without "{}." (resolved in prepare)
    n_ctx: int = 16
    temperature: float = 1.0
    projection_weight: float = 1.0  # LOSS.LAMBDA (0.8 for 8/16 shots on Flowers, DTD, EuroSAT: preset)
    teacher_template: str = "auto"  # auto: ProGrad's template for the dataset (resolved in prepare)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_template != "auto" and "{}" not in self.teacher_template:
            raise ConfigError(
                f"teacher_template needs a '{{}}' for the class name, got {self.teacher_template!r}."
            )


@register_method
class ProGrad(PromptHead):
    """ProGrad: prompt-aligned gradients — keep only the parts of the CE gradient that agree with zero-shot.

    Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023,
    https://arxiv.org/abs/2205.14865; official code BeierZhu/Prompt-align ``trainers/prograd.py`` and
    ``dassl/engine/trainer.py prograd_backward_and_update``. If ``g_ce · g_kd < 0`` the update is
    ``g_ce - lambda (g_ce · g_kd) / ||g_kd||^2 g_kd``, where ``g_kd`` is the gradient of the
    distillation loss ``T^2 CE(softmax(zs / T), log_softmax(logits / T))`` towards zero-shot CLIP.

    As the code: the teacher and the context init use ProGrad's own per-dataset templates
    (``CUSTOM_TEMPLATES``, e.g. OxfordPets "a type of pet, a photo of a {}."). The init phrase is
    the template without " {}."; the code counts its *words* (k = 8 for that phrase) although it has
    9 BPE tokens: the context is ``n_ctx - k`` zeros then the first k token embeddings, and the
    remaining tokens ("a") stay fixed between the context and the class name. ``ctx_init=""``
    gives CoOp's random N(0, 0.02) context. The teacher sees the same (cached, fp32) image features
    as the student; the code runs a second fp32 CLIP on the same augmented batch, the student in fp16.

    Example: ``vlpeft train --method prograd --set projection_weight=0.8 ...``
    """

    name = "prograd"
    paper = "https://arxiv.org/abs/2205.14865"
    config_class = ProGradConfig

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        """README: 1 shot rn50_ep50, 2-4 shots rn50_ep100, 8-16 shots rn50 (200); lambda 0.8 at 8/16 shots
        on Flowers, DTD and EuroSAT; ImageNet 50 epochs."""
        out = {**super().preset(dataset, shots), **coop_epochs(dataset, shots)}
        if dataset in ("OxfordFlowers", "DescribableTextures", "EuroSAT") and (shots or 16) >= 8:
            out["projection_weight"] = 0.8
        return out

    def prepare(self, data: HeadData) -> None:
        cfg = self.config
        template = PROGRAD_TEMPLATES.get(data.dataset, data.text.dataset_template)
        phrase = init_phrase(template) if cfg.ctx_init == "auto" else cfg.ctx_init
        teacher = template if cfg.teacher_template == "auto" else cfg.teacher_template
        self.config = replace(cfg, ctx_init=phrase, teacher_template=teacher)  # resolved: saved with the run
        if phrase:
            words = len(phrase.split(" "))  # the code counts words, not tokens
            if words > cfg.n_ctx:
                raise ConfigError(f"ProGrad's init phrase {phrase!r} has {words} words > n_ctx={cfg.n_ctx}.")
            embeds = init_context(self.backbone, phrase)[:words]
            ctx = torch.cat([torch.zeros(cfg.n_ctx - words, embeds.shape[1]), embeds])
        else:
            generator = torch.Generator().manual_seed(data.seed)
            ctx = new_context(self.backbone, cfg.n_ctx, "", None, generator)
        self.ctx = nn.Parameter(ctx)
        self.attach(self.backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))
        self.register_buffer("zero_shot_weights", data.text.template_weights([teacher]), persistent=False)

    def fixed_words(self, backbone: Backbone) -> str:
        """The init phrase's tokens past its word count (OxfordPets: "a")."""
        phrase = self.config.ctx_init
        if not phrase or phrase == "auto":
            return ""
        ids = backbone.tokenizer(phrase, add_special_tokens=False)["input_ids"]
        rest = ids[len(phrase.split(" ")) :]
        return backbone.tokenizer.decode(rest).strip() if rest else ""

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


def init_phrase(template: str) -> str:
    """The code's ``CUSTOM_TEMPLATES[name].replace(" {}.", "").replace("_", " ")``; for templates with text
    after the class name (other datasets' own), the words before it."""
    if template.endswith(" {}."):
        return template.replace(" {}.", "").replace("_", " ")
    return template.split("{}")[0].strip().rstrip(",").strip()
