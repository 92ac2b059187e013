"""Prompt learners: learned tokens fed to the encoders.

Two bases: ``base.PromptHead`` for text-side learners that train on cached image features
(CoOp, CoCoOp, KgCoOp, ProGrad, PLOT), and ``deep.PixelPromptLearner`` for learners that prompt
the image encoder and so see pixels (VPT, IVLP, MaPLe, PromptSRC, PLOT++; their shared base is
``multimodal.MultimodalPrompts``). ``tokens.py`` builds the prompt token sequences.
"""

from vlpeft.methods.prompts import cocoop, coop, ivlp, kgcoop, maple, plot, plotpp, prograd, promptsrc, vpt
from vlpeft.methods.prompts.base import PromptHead
from vlpeft.methods.prompts.deep import PixelPromptLearner

__all__ = [
    "PixelPromptLearner",
    "PromptHead",
    "cocoop",
    "coop",
    "ivlp",
    "kgcoop",
    "maple",
    "plot",
    "plotpp",
    "prograd",
    "promptsrc",
    "vpt",
]
