"""SSF: learned scale and shift after the backbone's layers, folded into the weights on export.

The modules are the method's own (saved in ``adapter.safetensors``); the hooks live on the
method's private copy of the backbone, so no backbone code is copied or changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.adapters.base import ModuleAdapter, ModuleAdapterConfig
from vlpeft.methods.base import register_method


class ScaleShift(nn.Module):
    """SSF's ``x * scale + shift`` over the channel dimension ``dim`` (-1 for tokens, 1 for conv maps)."""

    def __init__(self, channels: int, dim: int = -1):
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(torch.empty(channels))
        self.shift = nn.Parameter(torch.empty(channels))
        nn.init.normal_(self.scale, mean=1.0, std=0.02)  # dongzelian/SSF models/vision_transformer.py
        nn.init.normal_(self.shift, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1] * x.ndim
        shape[self.dim] = -1
        return x * self.scale.view(shape).to(x.dtype) + self.shift.view(shape).to(x.dtype)


def ssf_sites(model: Backbone, tower: str) -> list[tuple[str, nn.Module, int]]:
    """(name, module, channel dim) of every output SSF rescales, in the official placement.

    dongzelian/SSF ``models/vision_transformer.py``: after the patch embedding, after norm1, the qkv
    projection and the attention output projection, after norm2, fc1 (before the activation) and
    fc2, and after the final norm. HF CLIP has separate q/k/v projections (one SSF each, the
    official 3d-wide one split in three) and also a pre-layer-norm, which gets one too.
    """
    prefix = f"model.{tower}_model."
    tower_module = model.get_submodule(prefix.rstrip("."))
    sites: list[tuple[str, nn.Module, int]] = []
    embeddings = tower_module.embeddings
    if hasattr(embeddings, "patch_embedding"):
        sites.append(("embeddings.patch_embedding", embeddings.patch_embedding, 1))
    for extra in ("pre_layrnorm",):
        if hasattr(tower_module, extra):
            sites.append((extra, getattr(tower_module, extra), -1))
    for i, block in enumerate(tower_module.encoder.layers):
        for sub in (
            "layer_norm1",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "layer_norm2",
            "mlp.fc1",
            "mlp.fc2",
        ):
            sites.append((f"encoder.layers.{i}.{sub}", block.get_submodule(sub), -1))
    for final in ("post_layernorm", "final_layer_norm"):
        if hasattr(tower_module, final):
            sites.append((final, getattr(tower_module, final), -1))
    return sites


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[0]
    raise ConfigError(f"SSF cannot rescale a {type(module).__name__}.")


@dataclass
class SSFConfig(ModuleAdapterConfig):
    # dongzelian/SSF train_scripts/vit/cifar_100/train_ssf.sh: AdamW lr 1e-3, wd 0.05 (1-d
    # parameters undecayed in timm; every SSF parameter is 1-d, so effectively 0). Placement in the
    # image encoder, as the paper (a ViT); steps follow the module adapters' few-shot protocol.
    towers: str = "vision"
    lr: float = 1e-3
    weight_decay: float = 0.0


@register_method
class SSF(ModuleAdapter):
    """SSF: learned per-channel scale and shift after every operation of the encoder.

    Lian et al., "Scaling & Shifting Your Features", NeurIPS 2022, https://arxiv.org/abs/2210.08823
    (dongzelian/SSF). Scale ~ N(1, 0.02), shift ~ N(0, 0.02), so the model is *near* (not exactly)
    the zero-shot one at init. Every SSF follows a linear map, a layer norm or the patch convolution,
    so :meth:`merged_model` folds it into that layer's weights (the paper's re-parameterisation).

    Example: ``vlpeft train --method ssf --shots 16 ...``
    """

    name = "ssf"
    paper = "https://arxiv.org/abs/2210.08823"
    config_class = SSFConfig
    identity_at_init = False

    def adapt(self, model: Backbone) -> None:
        towers = ["vision", "text"] if self.config.towers == "both" else [self.config.towers]
        sites = [(f"{t}.{n}".replace(".", "__"), m, d) for t in towers for n, m, d in ssf_sites(model, t)]
        self.ssf = nn.ModuleDict()
        for key, module, dim in sites:
            self.ssf[key] = ScaleShift(_channels(module), dim).to(model.device)
            module.register_forward_hook(lambda m, args, out, op=self.ssf[key]: op(out))
        self.__dict__["_sites"] = [(key, module) for key, module, _ in sites]

    def export_model(self, merge: bool) -> nn.Module:
        if not merge:
            raise ConfigError(
                "SSF's scales and shifts live beside the weights: pass --merge to fold them in."
            )
        return self.merged_model()

    def merged_model(self) -> nn.Module:
        """A plain transformers model with every scale/shift folded into the preceding layer."""
        import copy

        backbone = copy.deepcopy(self.backbone)
        for key, module in self.__dict__["_sites"]:
            target = backbone.get_submodule(_module_path(self.backbone, module))
            target._forward_hooks.clear()
            _fold(backbone, target, self.ssf[key])
        return backbone.model


def _module_path(root: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in root.named_modules() if m is module)


@torch.no_grad()
def _fold(backbone: Backbone, layer: nn.Module, op: ScaleShift) -> None:
    """``op(layer(x))`` as one layer: W' = diag(s) W, b' = s * b + t (LayerNorm: on its affine)."""
    scale, shift = op.scale.to(layer.weight), op.shift.to(layer.weight)
    if isinstance(layer, nn.Conv2d):  # bias-free patch conv: the shift joins the patch positions
        layer.weight.mul_(scale.view(-1, 1, 1, 1))
        if layer.bias is not None:
            layer.bias.mul_(scale).add_(shift)
            return
        positions = backbone.model.vision_model.embeddings.position_embedding.weight  # (1 + P, W)
        positions[1:].add_(shift)
        return
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.ndim - 1))))
    layer.bias.mul_(scale).add_(shift)
