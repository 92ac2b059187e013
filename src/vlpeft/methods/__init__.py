"""Methods; importing this package registers every method."""

from vlpeft.methods import (
    ape,
    clap,
    clip_adapter,
    cocoop,
    coop,
    cross_modal,
    linear_probe,
    lp_pp,
    multimodal,
    plot,
    taskres,
    tip_adapter,
    zero_shot,
)
from vlpeft.methods.base import METHODS, Method, MethodConfig, get_method, list_methods, register_method
from vlpeft.methods.feature_head import ClassText, FeatureHead, HeadData

__all__ = [
    "METHODS",
    "ClassText",
    "FeatureHead",
    "HeadData",
    "Method",
    "MethodConfig",
    "ape",
    "clap",
    "clip_adapter",
    "cocoop",
    "coop",
    "cross_modal",
    "get_method",
    "linear_probe",
    "list_methods",
    "lp_pp",
    "multimodal",
    "plot",
    "register_method",
    "taskres",
    "tip_adapter",
    "zero_shot",
]
