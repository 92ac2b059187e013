"""AdaptFormer: a parallel bottleneck adapter beside each MLP, attached with forward hooks.

The modules are the method's own (saved in ``adapter.safetensors``); the hooks live on the
method's private copy of the backbone, so no backbone code is copied or changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.methods.adapters.base import ModuleAdapter, ModuleAdapterConfig
from vlpeft.methods.base import not_exportable, register_method


@dataclass
class AdaptFormerConfig(ModuleAdapterConfig):
    # ShoufaChen/AdaptFormer main_image.py: ffn_option parallel, ffn_adapter_layernorm_option none,
    # init "lora", scalar 0.1, ffn_num 64; models/custom_modules.py: dropout 0.1; SGD momentum 0.9,
    # blr 0.1 -> lr = 0.1 * batch / 256, wd 0. Image encoder only, as the paper.
    towers: str = "vision"
    bottleneck: int = 64
    scale: float = 0.1
    dropout: float = 0.1
    optimizer: str = "sgd"
    lr: float = 0.1 * 32 / 256
    weight_decay: float = 0.0
    min_lr: float = 0.0


class ParallelAdapter(nn.Module):
    """``scale * up(dropout(relu(down(x))))``, down Kaiming-uniform, up and biases zero ("lora" init)."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        self.dropout, self.scale = nn.Dropout(dropout), scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for tensor in (self.up.weight, self.down.bias, self.up.bias):
            nn.init.zeros_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(torch.relu(self.down(x)))) * self.scale


@register_method
class AdaptFormer(ModuleAdapter):
    """AdaptFormer: a bottleneck MLP beside every block's MLP, added to its output.

    Chen et al., "AdaptFormer", NeurIPS 2022, https://arxiv.org/abs/2205.13535
    (ShoufaChen/AdaptFormer ``models/custom_modules.py``): the adapter reads the block's residual
    stream after attention (the input of ``layer_norm2``; the released config uses no layer norm
    in the adapter, the paper draws one) and its output is added to the MLP's. Zero-initialised up
    projection: the model is zero-shot CLIP at init. The ReLU makes it unmergeable.

    Example: ``vlpeft train --method adaptformer --set bottleneck=16 ...``
    """

    name = "adaptformer"
    paper = "https://arxiv.org/abs/2205.13535"
    config_class = AdaptFormerConfig

    def export_model(self, merge: bool) -> nn.Module:
        raise not_exportable(self.name, "its ReLU bottleneck cannot be merged into the weights")

    def adapt(self, model: Backbone) -> None:
        cfg = self.config
        towers = ["vision", "text"] if cfg.towers == "both" else [cfg.towers]
        self.adapters = nn.ModuleDict()
        for tower in towers:
            width = model.vision_width if tower == "vision" else model.text_width
            for i, block in enumerate(model.layers(tower)):
                adapter = ParallelAdapter(width, cfg.bottleneck, cfg.scale, cfg.dropout).to(model.device)
                self.adapters[f"{tower}_{i}"] = adapter
                _hook_parallel(block, adapter)


def _hook_parallel(block: nn.Module, adapter: ParallelAdapter) -> None:
    """Remember the input of ``layer_norm2`` (x'); add ``adapter(x')`` to the MLP's output."""
    seen: dict[str, torch.Tensor] = {}

    def keep_input(module, args):
        seen["x"] = args[0]

    def add_adapter(module, args, out):
        return out + adapter(seen.pop("x"))

    block.layer_norm2.register_forward_pre_hook(keep_input)
    block.mlp.register_forward_hook(add_adapter)
