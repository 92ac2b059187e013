"""ModuleAdapter: methods that change the backbone's own layers (LoRA, BitFit, SSF, fine-tuning, ...).

A module adapter works on a private copy of the frozen backbone (``self.adapted``): it injects
modules or unfreezes a subset of the copy's parameters, so the caller's backbone, and every
feature cached for it, stays valid. It sees pixels (the image encoder changes) and classifies with
the text head: class prompts through the (possibly adapted) text encoder, recomputed each step
only when the text tower has trainable parameters. Only what was learned is saved: the copy's
trainable parameters and the method's own modules, never the frozen weights.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import format_prompts
from vlpeft.errors import ConfigError
from vlpeft.methods.base import Method, check_shape
from vlpeft.methods.configs import TrainedHeadConfig
from vlpeft.methods.inputs import PixelData
from vlpeft.training.loop import PRECISIONS

TOWERS = ("vision", "text", "both")
ADAPTED = "adapted."  # state-dict prefix of the backbone copy


@dataclass
class ModuleAdapterConfig(TrainedHeadConfig):
    # The few-shot recipe of MaxZanella/CLIP-LoRA (run_utils.py, lora.py): AdamW(2e-4, wd 1e-2,
    # betas 0.9/0.999), cosine per iteration to eta_min 1e-6, no warm-up, batch 32, 500 x shots
    # iterations, RandomResizedCrop(0.08, 1) + flip, the single prompt "a photo of a {}.".
    template: str = "a photo of a {}."
    towers: str = "both"  # vision | text | both: where the method adapts the backbone
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 1e-2
    batch_size: int = 32
    schedule: str = "cosine-iter"
    warmup_epochs: int = 0
    min_lr: float = 1e-6
    batches_per_epoch: str = "ceil"  # CLIP-LoRA's loader keeps the last partial batch
    iters_per_shot: int = 500  # total steps = iters_per_shot * shots; 0 (or no --shots): `epochs`
    epochs: int = 50
    precision: str = "auto"  # auto: bf16 where CUDA supports it, else fp32 | fp32 | bf16 | fp16 (CUDA)
    grad_checkpointing: bool = False
    accumulate: int = 1  # micro-batches per optimiser step (same global batch, less memory)
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    # checkpoint: the model's learned scale | a number: a fixed scale. CLIP-LoRA multiplies cosines by a
    # fixed 100 (main.py logit_scale = 100), which equals OpenAI CLIP's learned scale; set 100 to
    # reproduce it on other checkpoints (SigLIP, OpenCLIP).
    logit_scale: str = "checkpoint"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.towers not in TOWERS:
            raise ConfigError(f"towers must be one of {list(TOWERS)}, got '{self.towers}'.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got '{self.precision}'.")
        if self.accumulate < 1 or self.iters_per_shot < 0:
            raise ConfigError("accumulate must be at least 1 and iters_per_shot not negative.")
        if "{}" not in self.template:
            raise ConfigError(f"template must contain '{{}}' for the class name, got {self.template!r}.")
        if self.logit_scale != "checkpoint":
            try:
                ok = float(self.logit_scale) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ConfigError(
                    f"logit_scale must be 'checkpoint' or a positive number, got {self.logit_scale!r}."
                )


def tower_of(name: str) -> str | None:
    """'vision' / 'text' for a parameter name of a CLIP/SigLIP model, None for shared ones."""
    if "vision_model." in name or "visual_projection" in name:
        return "vision"
    if "text_model." in name or "text_projection" in name:
        return "text"
    return None


class ModuleAdapter(Method):
    """Base class. Subclasses implement :meth:`adapt` (inject modules / unfreeze a subset of the copy)."""

    family = "module-adapter"
    config_class = ModuleAdapterConfig
    needs_pixels: ClassVar[bool] = True
    needs_backbone: ClassVar[bool] = True
    transfers_to_new_classes: ClassVar[bool] = True
    trained_by_gradient: ClassVar[bool] = True
    identity_at_init: ClassVar[bool] = True  # logits equal zero-shot with the method's template at init

    @classmethod
    def parameter_count(
        cls, embed_dim: int, num_classes: int, text_width: int = 512, vision_width: int = 768
    ) -> int:
        """Trainable parameters on a 12+12-layer CLIP of these widths (ViT-B/16 by default).

        Built on the meta device: nothing is allocated.
        """
        from types import SimpleNamespace

        from transformers import CLIPConfig, CLIPModel

        from vlpeft.backbones.hf import HFBackbone

        def tower(width: int) -> dict[str, int]:
            heads = max(width // 64, 1)
            return dict(
                hidden_size=width,
                intermediate_size=4 * width,
                num_hidden_layers=12,
                num_attention_heads=heads,
            )

        vision = dict(tower(vision_width), patch_size=16)
        config = CLIPConfig(text_config=tower(text_width), vision_config=vision, projection_dim=embed_dim)
        with torch.device("meta"):
            model = CLIPModel(config)
        backbone = HFBackbone(model, SimpleNamespace(eos_token_id=2), None, "meta")  # type: ignore[arg-type]
        method = cls()
        method.bind(backbone)
        extra = embed_dim * num_classes + num_classes if hasattr(method, "build") else 0  # a class head
        return method.num_trainable_parameters() + extra

    # ---- the adapted copy --------------------------------------------------------------------
    def adapt(self, model: Backbone) -> None:
        """Change ``model`` (a private copy of the backbone, all frozen) in place."""
        raise NotImplementedError(f"{type(self).__name__} must implement adapt(model)")

    def bind(self, backbone: Backbone, seed: int = 0) -> None:
        """Make the adapted copy of ``backbone`` (once per backbone and seed) and load any saved state.

        Random initialisations inside :meth:`adapt` draw from ``seed`` (the run's seed at ``prepare``).
        """
        if self.__dict__.get("_source") is backbone and self.__dict__.get("_seed") == seed:
            return
        model = copy.deepcopy(backbone)
        model.requires_grad_(False)
        model.image_forwards = 0
        self.adapted = model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapt(model)
        self.train(self.training)  # injected modules (dropout) follow the method's mode
        self.__dict__["_seed"] = seed
        self.__dict__["_text_trainable"] = None
        object.__setattr__(self, "_source", backbone)
        pending = self.__dict__.pop("_pending", None)
        if pending is not None:
            self._load_into_copy(pending)

    @property
    def backbone(self) -> Backbone:
        if "adapted" not in self._modules:
            raise ConfigError(f"{self.name} must be attached to its backbone first.")
        return self._modules["adapted"]

    def in_tower(self, name: str, towers: str | None = None) -> bool:
        """Whether parameter ``name`` of the copy lies in the configured tower(s)."""
        towers = towers or self.config.towers
        return towers == "both" or tower_of(name) == towers

    # ---- text head ---------------------------------------------------------------------------
    def attach(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        if self.__dict__.get("_source") is not backbone:
            self.bind(backbone)
        ids = self.backbone.tokenize(format_prompts(self.config.template, list(classnames)))
        self.register_buffer("class_ids", ids, persistent=False)
        self.__dict__["_frozen_text"] = None

    def prepare(self, data: PixelData) -> None:
        """Initialise from the data (before training); subclasses may extend."""
        self.bind(self.__dict__["_source"], seed=data.seed)
        self.attach(self.__dict__["_source"], data.text.classnames)
        if self.config.grad_checkpointing:
            set_checkpointing(self.backbone.model, True)

    def text_trainable(self) -> bool:
        """Whether any parameter of the copy's text tower is trained (then text runs every step)."""
        cached = self.__dict__.get("_text_trainable")
        if cached is None:
            cached = any(
                p.requires_grad and tower_of(n) == "text" for n, p in self.backbone.named_parameters()
            )
            self.__dict__["_text_trainable"] = cached
        return cached

    def text_features(self) -> torch.Tensor:
        """(C, D) normalised class embeddings; computed once while they cannot change (frozen text
        tower, or no gradient: the cache is dropped by ``train()``/``eval()`` and ``attach``)."""
        if self.text_trainable() and torch.is_grad_enabled():
            return F.normalize(self.backbone.encode_text(self.class_ids).float(), dim=-1)
        cached = self.__dict__.get("_frozen_text")
        if cached is None:
            with torch.no_grad():
                cached = F.normalize(self.backbone.encode_text(self.class_ids).float(), dim=-1)
            self.__dict__["_frozen_text"] = cached
        return cached

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.backbone.device, self.backbone.dtype)
        return F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)

    def scale(self) -> torch.Tensor:
        """The logit scale: the checkpoint's learned one, or the config's fixed number (CLIP-LoRA's 100)."""
        if self.config.logit_scale == "checkpoint":
            return self.backbone.logit_scale.float()
        return torch.tensor(float(self.config.logit_scale), device=self.backbone.logit_scale.device)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        model = self.backbone
        cosine = self.image_features(pixels) @ self.text_features().t()
        return self.scale() * cosine + model.logit_bias.float()

    def loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(pixels)
        return F.cross_entropy(logits, labels.to(logits.device))

    def backward(self, pixels: torch.Tensor, labels: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        loss = self.loss(pixels, labels) * weight
        loss.backward()
        return loss.detach()

    # ---- training ----------------------------------------------------------------------------
    def total_steps(self, data: PixelData) -> int | None:
        """CLIP-LoRA's ``n_iters * shots`` optimiser steps; None (use ``epochs``) without shots."""
        if self.config.iters_per_shot and data.shots:
            return self.config.iters_per_shot * data.shots
        return None

    def fit(self, data: PixelData) -> dict[str, Any]:
        from vlpeft.training.loop import train_on_pixels

        self.prepare(data)
        report = train_on_pixels(self, data, self.config, max_steps=self.total_steps(data))
        if self.config.grad_checkpointing:
            set_checkpointing(self.backbone.model, False)
        return report

    def on_epoch_end(self, epoch: int) -> None:
        """Hook after each epoch."""

    def on_fit_end(self) -> None:
        """Hook after the last epoch."""

    def train(self, mode: bool = True) -> ModuleAdapter:
        self.__dict__["_frozen_text"] = None
        return super().train(mode)

    # ---- export ------------------------------------------------------------------------------
    def export_parts(self, merge: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """The adapted transformers model (saving does not change it) and the class head."""
        with torch.no_grad():
            weight, bias = self.class_head()
        return self.export_model(merge), weight.float().cpu(), bias.float().cpu()

    def class_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, D) weight and (C,) bias on normalised image features: the text head, scaled."""
        model = self.backbone
        weight = self.scale() * self.text_features()
        return weight, model.logit_bias.float().expand(len(weight)).clone()

    def export_model(self, merge: bool) -> nn.Module:
        """The transformers model to save; methods whose deltas live outside the weights override it."""
        return self.backbone.model

    # ---- what is saved -----------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The method's own tensors and the copy's trainable parameters (never its frozen weights)."""
        state = {}
        for name, tensor in self.state_dict(keep_vars=True).items():
            if name.startswith(ADAPTED) and not (isinstance(tensor, nn.Parameter) and tensor.requires_grad):
                continue
            state[name] = tensor.detach().cpu().contiguous()
        return state

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load now if bound to a backbone, else when :meth:`bind` makes the copy."""
        if "adapted" in self._modules:
            self._load_into_copy(state)
        else:
            self._pending = dict(state)

    def _load_into_copy(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in state if k not in self.state_dict()]
        if missing:
            raise ConfigError(
                f"Saved tensors {missing[:3]} do not exist in this {self.name} model; "
                "was the run trained on another backbone architecture?"
            )
        own = self.state_dict(keep_vars=True)
        for name, tensor in state.items():
            check_shape(self.name, name, tuple(own[name].shape), tuple(tensor.shape))
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor.to(own[name]))
        self.__dict__["_frozen_text"] = None  # the text features of the old weights are stale

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())


def set_checkpointing(model: nn.Module, on: bool) -> None:
    """Recompute each block's activations in the backward pass (transformers >= 5.x names first)."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()


def unfreeze(model: nn.Module, select) -> int:
    """Set ``requires_grad`` on every parameter ``select(name, param)`` accepts; returns how many."""
    count = 0
    for name, param in model.named_parameters():
        if select(name, param):
            param.requires_grad_(True)
            count += 1
    if count == 0:
        raise ConfigError("The method selected no parameter of this backbone to train; check its settings.")
    return count
