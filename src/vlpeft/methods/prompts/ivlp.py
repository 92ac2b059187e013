"""IVLP: independent deep prompts in both encoders."""

from __future__ import annotations

from vlpeft.methods.base import register_method
from vlpeft.methods.prompts.multimodal import MultimodalPrompts


@register_method
class IVLP(MultimodalPrompts):
    """IVLP: independent vision-language prompting — deep prompts in both encoders, not coupled.

    The baseline of Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023,
    https://arxiv.org/abs/2210.03117 (``trainers/independentVL.py``); 2 text and 2 vision tokens,
    depth 12 in both encoders (the shipped config). Text context from "a photo of a": the first
    n_ctx words are learned, the rest stay fixed before the class name.

    Example: ``vlpeft train --method ivlp --subsample base ...``
    """

    name = "ivlp"
    paper = "https://arxiv.org/abs/2210.03117"
