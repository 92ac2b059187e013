"""Trainable-parameter counts of methods on a synthetic problem (for `vlpeft methods list`)."""

from __future__ import annotations

import torch

from vlpeft.features import FeatureSet
from vlpeft.methods.base import Method
from vlpeft.methods.heads.base import FeatureHead
from vlpeft.methods.inputs import ClassText, HeadData


def synthetic_head_data(embed_dim: int, classes: int, shots: int, views: int = 1, seed: int = 0) -> HeadData:
    """Random normalised features and text embeddings of a (D, C, K) problem."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(shots)
    feats = torch.randn(views, len(labels), embed_dim, generator=g)
    table = torch.randn(classes, embed_dim, generator=g)
    names = [f"class {i}" for i in range(classes)]
    index = {f"a photo of a {n}.": i for i, n in enumerate(names)}
    text = ClassText(
        names, lambda kind: ["a photo of a {}."], lambda ps: table[[index.get(p, 0) for p in ps]]
    )
    return HeadData(FeatureSet(feats, labels), None, text, classes, logit_scale=100.0, seed=seed, shots=shots)


def trainable_parameter_count(
    method_cls: type[Method],
    embed_dim: int,
    classes: int,
    shots: int,
    text_width: int = 512,
    vision_width: int = 768,
) -> int:
    """Parameters the method trains on a (D, C, K) problem (0 for training-free methods)."""
    if hasattr(method_cls, "parameter_count"):
        return method_cls.parameter_count(embed_dim, classes, text_width, vision_width)
    if not issubclass(method_cls, FeatureHead):
        return 0
    head = method_cls()
    head.prepare(synthetic_head_data(embed_dim, classes, shots, views=1))
    return head.num_trainable_parameters()
