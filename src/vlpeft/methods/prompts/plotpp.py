"""PLOT++: PLOT for ViTs — M sets of vision prompts and N text prompts matched by optimal transport."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.configs import TrainedHeadConfig
from vlpeft.methods.inputs import PixelData
from vlpeft.methods.prompts.deep import PixelPromptLearner, vision_prompts
from vlpeft.methods.prompts.plot import sinkhorn
from vlpeft.training.loop import train_on_pixels

# CHENGY12/PLOT plot-pp/trainers/plotpp.py (commit 728539f), MultiModalPromptLearner.template_dict: the N
# text prompts' init phrases per dataset (as written, trailing spaces included). Other datasets: Caltech101's.
PLOTPP_TEMPLATES: dict[str, tuple[str, ...]] = {
    "Caltech101": ("a photo of a", "this is a photo", "this is picture of", "one picture of a"),
    "DescribableTextures": (
        "a photo of a texture",
        "this is a photo texture",
        "this is a picture texture",
        "one picture of a texture",
    ),
    "EuroSAT": (
        "a centered satellite photo of",
        "a centered satellite picture of",
        "this is centered satellite photo of",
        "one centered satellite photo of a",
    ),
    "FGVCAircraft": (
        "a photo of an aircraft",
        "a picture of an aircraft",
        "this is aircraft picture of",
        "one picture of an aircraft",
    ),
    "Food101": (
        "a photo of a food",
        "this is a food photo",
        " this is food picture of",
        "one picture of a food",
    ),
    "ImageNet": ("a photo of a", "this is a photo ", "this is a", "one picture of a"),
    "OxfordFlowers": (
        "a photo of a flower",
        "one picture of a flower",
        "this is flower picture of",
        "one picture of a flower",
    ),
    "OxfordPets": (
        "a photo of a pet",
        "one picture of a pet",
        "this is pet picture of",
        "one picture of a pet",
    ),
    "StanfordCars": ("a photo of a", "this is a photo ", "this is picture of", "one picture of a"),
    "SUN397": ("a photo of a", "this is a photo", "this is picture of", "one picture of a"),
    "UCF101": (
        "a photo of a person doing",
        "this is a photo people doing",
        "this is picture of people doing",
        "one picture of a person doing",
    ),
}
STAGES = ("vision", "joint")


@dataclass
class PLOTPPConfig(TrainedHeadConfig):
    # CHENGY12/PLOT plot-pp configs/trainers/PLOTPP/vit.yaml (SGD 0.002, 50 epochs, batch 32, cosine with 1
    # constant warm-up epoch at 1e-5) for each of the two stages of scripts/main_visiononly.sh and
    # main_joint.sh (N 4 text prompts, N_CTX_V 2, CTX_INIT True, M the scripts' argument: 4 in the README).
    templates: str = "single"
    n_prompts: int = 4  # N text prompts
    n_vision_prompts: int = 4  # M sets of vision prompts
    n_ctx_vision: int = 2  # tokens per vision prompt set (N_CTX_V)
    ctx_init: bool = True  # the dataset's N init phrases; False: N(0, 0.02) contexts of n_ctx tokens
    n_ctx: int = 4  # N_CTX: used when ctx_init is False (with it: the first phrase's word count)
    stages: tuple[str, ...] = STAGES  # vision: text fixed, global + OT logits; joint: both, OT logits
    eps: float = 0.1
    max_iter: int = 100
    thresh: float = 1e-2
    lr: float = 0.002
    epochs: int = 50  # per stage
    batch_size: int = 32
    prompt_prefixes: tuple[str, ...] = ()  # resolved in prepare (the init phrases, or "X X X X"), saved

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not self.stages
            or any(s not in STAGES for s in self.stages)
            or len(set(self.stages)) != len(self.stages)
        ):
            raise ConfigError(
                f"stages must be a sequence of {list(STAGES)} (each once), got {list(self.stages)}."
            )
        if min(self.n_prompts, self.n_vision_prompts, self.n_ctx_vision, self.n_ctx) < 1:
            raise ConfigError("n_prompts, n_vision_prompts, n_ctx_vision and n_ctx must be at least 1.")
        if self.ctx_init and self.n_prompts > 4:
            raise ConfigError(
                f"ctx_init gives 4 init phrases per dataset; n_prompts={self.n_prompts} needs ctx_init=false."
            )


@register_method
class PLOTPP(PixelPromptLearner):
    """PLOT++: M vision prompt sets give M prompted CLS features, N text prompts give N class embeddings;
    the class score is the optimal-transport similarity between the two sets.

    Chen et al., "PLOT: Prompt Learning with Optimal Transport for Vision-Language Models", ICLR 2023,
    https://arxiv.org/abs/2210.01253; PLOT++ is the ViT version in the official code CHENGY12/PLOT
    ``plot-pp/trainers/plotpp.py``. Each vision prompt set (``n_ctx_vision`` tokens) is appended
    after the patch tokens in its own forward (after the position embedding, before ``ln_pre``).
    Text prompt i starts from the i-th of the dataset's four phrases: the context is the first k
    tokens of "<phrase i> <class>." with k the *word* count of the first phrase, so a longer phrase
    keeps its extra tokens fixed and a shorter one's context covers its EOT or the class name's first
    token, exactly as the code slices ``embedding[:, 1 + n_ctx:]``. Cost ``1 - cos``; Sinkhorn
    (eps 0.1, <=100 iterations, uniform marginals) under no_grad; logits ``logit_scale * sum T cos``.
    Training runs the code's two stages, each its own schedule: ``vision`` (text prompts fixed; logits
    plus the global ones ``cos(normalize(mean_m f_m), normalize(mean_n t_n))`` of unnormalised features)
    then ``joint`` (everything, OT logits alone, which also predict).

    Example: ``vlpeft train --method plot++ --set n_vision_prompts=4 ...``
    """

    name = "plot++"
    paper = "https://arxiv.org/abs/2210.01253"
    config_class = PLOTPPConfig

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int, vision_width: int = 768
    ) -> int:
        cfg = cls.config_class()
        return cfg.n_prompts * cfg.n_ctx * text_width + cfg.n_vision_prompts * cfg.n_ctx_vision * vision_width

    @property
    def stage(self) -> str:
        return self.__dict__.get("_stage") or self.config.stages[-1]

    # ---- prompts -------------------------------------------------------------------------------
    def prepare(self, data: PixelData) -> None:
        cfg, backbone = self.config, self.backbone
        generator = torch.Generator().manual_seed(data.seed)
        if cfg.ctx_init:
            prefixes = PLOTPP_TEMPLATES.get(data.dataset, PLOTPP_TEMPLATES["Caltech101"])[: cfg.n_prompts]
            n_ctx = len(prefixes[0].split())  # the code: len(ctx_list[0].split())
            ctx = torch.stack([self._token_embeddings([p])[0, 1 : 1 + n_ctx] for p in prefixes])
        else:
            prefixes = (" ".join(["X"] * cfg.n_ctx),) * cfg.n_prompts
            ctx = torch.randn(cfg.n_prompts, cfg.n_ctx, backbone.text_width, generator=generator) * 0.02
        self.config = replace(cfg, prompt_prefixes=tuple(prefixes))
        self.ctx = nn.Parameter(ctx)  # (N, n_ctx, W)
        vision = torch.randn(
            cfg.n_vision_prompts, cfg.n_ctx_vision, backbone.vision_width, generator=generator
        )
        self.ctx_vision = nn.Parameter(vision * 0.02)  # (M, n_ctx_v, Wv)
        self.attach(backbone, data.text.classnames)
        self.register_buffer("logit_scale", torch.tensor(float(data.logit_scale)))

    def _token_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """(T, L, W) embeddings of OpenAI-style token sequences: SOS, the BPE tokens, EOT, zeros."""
        ids = self._token_ids(texts)
        with torch.no_grad():
            return self.backbone.token_embedding(ids.to(self.backbone.device)).float().cpu()

    def _token_ids(self, texts: Sequence[str]) -> torch.Tensor:
        tok, length = self.backbone.tokenizer, self.backbone.context_length
        rows = []
        for text in texts:
            ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            if len(ids) > length:
                raise ConfigError(f"Prompt {text!r} is longer than the text encoder's {length} tokens.")
            rows.append(ids + [0] * (length - len(ids)))
        return torch.tensor(rows)

    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        """Per prompt i and class c: the tokens of "<prefix i> <class>." around the context."""
        self.bind(backbone)
        names = [c.replace("_", " ") for c in classnames]
        texts = [f"{p} {name}." for p in self.config.prompt_prefixes for name in names]  # prompt-major
        ids = self._token_ids(texts)
        embeds = self._token_embeddings(texts)
        n_ctx = self.ctx.shape[1]
        self.register_buffer("token_prefix", embeds[:, :1], persistent=False)
        self.register_buffer("token_suffix", embeds[:, 1 + n_ctx :], persistent=False)
        self.register_buffer(
            "eot", (ids == backbone.tokenizer.eos_token_id).int().argmax(dim=1), persistent=False
        )
        self.num_classes = len(names)

    def before_load(self, meta: Any) -> None:
        """Parameters come from the saved tensors; class tokens with attach()."""

    # ---- features and logits ---------------------------------------------------------------------
    def raw_text_features(self) -> torch.Tensor:
        """(N, C, D) unnormalised embeddings of the N prompts of every class."""
        n, c = self.ctx.shape[0], self.num_classes
        ctx = self.ctx[:, None].expand(-1, c, -1, -1).reshape(n * c, *self.ctx.shape[1:])
        device = self.backbone.device
        embeds = torch.cat([self.token_prefix.to(ctx), ctx, self.token_suffix.to(ctx)], dim=1).to(device)
        feats = self.backbone.encode_text_embeddings(embeds, self.eot.to(device)).float()
        return feats.view(n, c, -1)

    def raw_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(M, B, D) unnormalised CLS features, one forward per vision prompt set."""
        pixels = pixels.to(self.backbone.device, self.backbone.dtype)
        out = []
        for prompt in self.ctx_vision:
            with vision_prompts(self.backbone, prompt):
                out.append(self.backbone.encode_image(pixels).float())
        return torch.stack(out)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.raw_image_features(pixels).mean(0), dim=-1)

    def text_features(self) -> torch.Tensor:
        return F.normalize(self.raw_text_features().mean(0), dim=-1)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        image, text = self.raw_image_features(pixels), self.raw_text_features()  # (M, B, D), (N, C, D)
        sim = torch.einsum("mbd,ncd->bcmn", F.normalize(image, dim=-1), F.normalize(text, dim=-1))
        plan = sinkhorn(1 - sim, self.config.eps, self.config.max_iter, self.config.thresh)
        scale = self.logit_scale.to(sim.device)
        logits = scale * (plan * sim).sum(dim=(-2, -1))  # (B, C)
        if self.stage == "vision":  # the code's TRADE_OFF: global logits of the pooled features too
            pooled = F.normalize(image.mean(0), dim=-1) @ F.normalize(text.mean(0), dim=-1).t()
            logits = logits + scale * pooled
        return logits

    # ---- training ----------------------------------------------------------------------------------
    def fit(self, data: PixelData) -> dict[str, Any]:
        """The code's stages, each a full schedule: vision (text prompts fixed), then joint."""
        self.prepare(data)
        reports = {}
        for stage in self.config.stages:
            self.__dict__["_stage"] = stage
            self.ctx.requires_grad_(stage == "joint")
            reports[stage] = train_on_pixels(self, data, self.config)
        self.__dict__["_stage"] = None
        self.ctx.requires_grad_(True)
        return {"stages": reports, "steps": sum(r["steps"] for r in reports.values())}
