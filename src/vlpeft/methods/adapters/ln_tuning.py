"""LN-tuning: tune only the backbone's layer norms."""

from __future__ import annotations

from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.methods.adapters.base import ModuleAdapter, unfreeze
from vlpeft.methods.base import register_method


def _layer_norm_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}


@register_method
class LNTuning(ModuleAdapter):
    """LN-tuning: train the weight and bias of every layer norm of the encoders.

    Zhao et al., "Tuning LayerNorm in Attention", ICLR 2024, https://arxiv.org/abs/2312.11420; the
    CLIP recipe of 2SFS (Farina et al., CVPR 2025, ``fs/ln_only.py``: every ``nn.LayerNorm`` of both
    towers, CLIP-LoRA's optimiser and schedule).

    Example: ``vlpeft train --method ln-tuning ...``
    """

    name = "ln-tuning"
    paper = "https://arxiv.org/abs/2312.11420"

    def adapt(self, model: Backbone) -> None:
        norms = _layer_norm_names(model)
        unfreeze(model, lambda n, p: n.rpartition(".")[0] in norms and self.in_tower(n))
