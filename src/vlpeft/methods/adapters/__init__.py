"""Module adapters: methods that change the backbone's own layers, on a private copy of it.

A delta beside a layer (LoRA/DoRA through HF peft, SSF, AdaptFormer) or a subset of the weights
unfrozen (BitFit, LN-tuning, full fine-tuning, WiSE-FT, FLYP). ``base.py`` holds the interface.
"""

from vlpeft.methods.adapters import adaptformer, bitfit, flyp, full_ft, ln_tuning, lora, ssf
from vlpeft.methods.adapters.base import ModuleAdapter

__all__ = ["ModuleAdapter", "adaptformer", "bitfit", "flyp", "full_ft", "ln_tuning", "lora", "ssf"]
