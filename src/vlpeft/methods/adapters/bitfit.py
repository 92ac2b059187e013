"""BitFit: tune only the backbone's biases."""

from __future__ import annotations

from vlpeft.backbones.base import Backbone
from vlpeft.methods.adapters.base import ModuleAdapter, unfreeze
from vlpeft.methods.base import register_method


@register_method
class BitFit(ModuleAdapter):
    """BitFit: train every bias term of the encoders (linear layers and layer norms), nothing else.

    Ben Zaken et al., "BitFit", ACL 2022, https://arxiv.org/abs/2106.10199; as the CLIP few-shot
    baseline of Farina et al. (2SFS, CVPR 2025) on CLIP-LoRA's recipe (``main.py``: AdamW 2e-4,
    wd 1e-2, cosine, batch 32, single template). There, OpenAI's fused ``in_proj_bias`` of q/k/v is
    not a module ``.bias`` and stays frozen; on HF CLIP q/k/v have their own biases and we train them
    (BitFit's definition: all biases).

    Example: ``vlpeft train --method bitfit --set towers=vision ...``
    """

    name = "bitfit"
    paper = "https://arxiv.org/abs/2106.10199"

    def adapt(self, model: Backbone) -> None:
        unfreeze(model, lambda n, p: n.endswith(".bias") and self.in_tower(n))
