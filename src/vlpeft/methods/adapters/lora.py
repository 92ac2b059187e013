"""LoRA and DoRA on HF CLIP/SigLIP through HF peft (no hand-written LoRA layers)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.errors import ConfigError
from vlpeft.methods.adapters.base import ModuleAdapter, ModuleAdapterConfig
from vlpeft.methods.base import register_method

MATRICES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


@dataclass
class LoRAConfig(ModuleAdapterConfig):
    # MaxZanella/CLIP-LoRA run_utils.py: r=2, alpha=1, dropout_rate=0.25, params=['q','k','v'],
    # encoder='both', position='all'; loralib/layers.py scales by alpha / sqrt(r) (rsLoRA).
    r: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    matrices: tuple[str, ...] = ("q", "k", "v")  # of q, k, v, o (the attention output projection)
    blocks: str = "all"  # all | bottom | mid | up | half-up | half-bottom (CLIP-LoRA) | "0,1,5"
    rslora: bool = True  # scale alpha / sqrt(r) as CLIP-LoRA; False: alpha / r (the LoRA paper)
    dora: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.matrices if m not in MATRICES]
        if unknown or not self.matrices:
            raise ConfigError(f"matrices must be a non-empty subset of {list(MATRICES)}, got {unknown}.")
        if self.r < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("r must be at least 1 and dropout in [0, 1).")


def block_indices(blocks: str, depth: int) -> list[int]:
    """CLIP-LoRA's ``position`` names (``lora.py``: INDEX_POSITIONS for 12 layers, scaled to ``depth``)."""
    half, third = depth // 2, depth // 3
    named = {
        "all": range(depth),
        "bottom": range(0, third),
        "mid": range(third, 2 * third),
        "up": range(2 * third, depth),
        "half-up": range(half, depth),
        "half-bottom": range(0, half),
    }
    if blocks in named:
        return list(named[blocks])
    try:
        chosen = sorted({int(b) for b in blocks.split(",")})
    except ValueError:
        raise ConfigError(
            f"blocks must be one of {list(named)} or a list like '0,5,11', got {blocks!r}."
        ) from None
    if not chosen or chosen[0] < 0 or chosen[-1] >= depth:
        raise ConfigError(f"blocks {blocks!r} are outside the {depth} blocks of this backbone.")
    return chosen


def target_pattern(model: Backbone, cfg: LoRAConfig) -> str:
    """A regex peft full-matches against module names: the chosen matrices of the chosen blocks."""
    towers = ["vision", "text"] if cfg.towers == "both" else [cfg.towers]
    parts = []
    for tower in towers:
        idx = "|".join(str(i) for i in block_indices(cfg.blocks, len(model.layers(tower))))
        names = "|".join(MATRICES[m] for m in cfg.matrices)
        parts.append(rf"model\.{tower}_model\.encoder\.layers\.({idx})\.self_attn\.({names})")
    return "|".join(f"(?:{p})" for p in parts)


@register_method
class LoRA(ModuleAdapter):
    """LoRA: low-rank updates of the attention matrices of both encoders, CLIP-LoRA's recipe.

    Hu et al., "LoRA", ICLR 2022, https://arxiv.org/abs/2106.09685, applied to CLIP as
    Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPRW 2024,
    https://arxiv.org/abs/2405.18541 (MaxZanella/CLIP-LoRA). ``W x + (alpha / sqrt(r)) B A dropout(x)``
    on q, k, v of every block of both towers, r=2, alpha=1, dropout 0.25 on the input, A Kaiming
    uniform and B zero (so the model is zero-shot CLIP at init), AdamW 2e-4, 500 x shots iterations.
    Injected by ``peft.inject_adapter_in_model``; ``dora=True`` gives DoRA (Liu et al., ICML 2024,
    https://arxiv.org/abs/2402.09353). Deviation: CLIP-LoRA multiplies cosine logits by a fixed 100;
    we use the checkpoint's learned logit scale (100 for OpenAI's CLIP).

    Example: ``vlpeft train --method lora --shots 16 --set r=4 --set towers=vision ...``
    """

    name = "lora"
    paper = "https://arxiv.org/abs/2405.18541"
    config_class = LoRAConfig

    def adapt(self, model: Backbone) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.config
        peft_cfg = LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            use_rslora=cfg.rslora,
            use_dora=cfg.dora,
            bias="none",
            init_lora_weights=True,
            target_modules=target_pattern(model, cfg),
        )
        inject_adapter_in_model(peft_cfg, model)
        if not any(True for _ in self.lora_layers()):
            raise ConfigError(f"LoRA found no module matching {peft_cfg.target_modules!r} in this backbone.")

    def lora_layers(self) -> Iterator[nn.Module]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        return (m for m in self.backbone.modules() if isinstance(m, BaseTunerLayer))

    def merge(self) -> None:
        """Add ``scale * B A`` into the frozen weights (inference without the extra matmuls)."""
        for layer in self.lora_layers():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.lora_layers():
            layer.unmerge()

    def export_model(self, merge: bool) -> nn.Module:
        if not merge:
            raise ConfigError(f"{self.name}'s update lives beside the weights: pass --merge to fold it in.")
        return self.merged_model()

    def merged_model(self) -> nn.Module:
        """A plain transformers model with the LoRA updates merged in (for export)."""
        import copy

        from peft.tuners.tuners_utils import BaseTunerLayer

        model = copy.deepcopy(self.backbone.model)
        for name, module in list(model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, module.get_base_layer())
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            model.__dict__.pop(attr, None)
        return model


@dataclass
class DoRAConfig(LoRAConfig):
    dora: bool = True


@register_method
class DoRA(LoRA):
    """DoRA: LoRA with the weight split into magnitude and direction (peft ``use_dora=True``).

    Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024,
    https://arxiv.org/abs/2402.09353, with CLIP-LoRA's placement and recipe (no official CLIP recipe).

    Example: ``vlpeft train --method dora --shots 16 ...``
    """

    name = "dora"
    paper = "https://arxiv.org/abs/2402.09353"
    config_class = DoRAConfig
