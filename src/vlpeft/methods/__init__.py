"""Methods; importing this package registers every method."""

from vlpeft.methods import (
    ape,
    clap,
    clip_adapter,
    cocoop,
    coop,
    cross_modal,
    finetune,
    layer_adapters,
    linear_probe,
    lora,
    lp_pp,
    multimodal,
    plot,
    taskres,
    tip_adapter,
    zero_shot,
)
from vlpeft.methods.base import METHODS, Method, MethodConfig, get_method, list_methods, register_method
from vlpeft.methods.feature_head import ClassText, FeatureHead, HeadData
from vlpeft.methods.module_adapter import ModuleAdapter

__all__ = [
    "METHODS",
    "ClassText",
    "FeatureHead",
    "HeadData",
    "Method",
    "MethodConfig",
    "ModuleAdapter",
    "ape",
    "clap",
    "clip_adapter",
    "cocoop",
    "coop",
    "cross_modal",
    "finetune",
    "get_method",
    "layer_adapters",
    "linear_probe",
    "list_methods",
    "lora",
    "lp_pp",
    "multimodal",
    "plot",
    "register_method",
    "taskres",
    "tip_adapter",
    "zero_shot",
]
