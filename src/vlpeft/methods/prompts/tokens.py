"""Learned text prompts: context vectors spliced into class-name token sequences.

A method owns its learned context (generic ``(n_ctx, W)`` or class-specific ``(C, n_ctx, W)``);
``PromptTokens`` holds the class-dependent token embeddings around it — CoOp's
``token_prefix`` (SOS) and ``token_suffix`` (class tokens, ".", EOT, padding) — as buffers
rebuilt from class names (never saved), so a prompt learned on base classes is evaluated on
new ones by calling :meth:`PromptTokens.set_classnames`.

Class-token position ``end`` / ``middle`` / ``front`` follows KaiyangZhou/CoOp
``trainers/coop.py`` (``PromptLearner.forward``): ``[SOS, ctx, name, ., EOT]``,
``[SOS, ctx[:n/2], name, ctx[n/2:], ., EOT]``, ``[SOS, name, ctx, ., EOT]``; it is computed
for all classes at once with a per-class gather instead of a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlpeft.backbones.base import Backbone
from vlpeft.data.templates import classname_for_prompt
from vlpeft.errors import ConfigError

POSITIONS = ("end", "middle", "front")


def init_context(backbone: Backbone, phrase: str) -> torch.Tensor:
    """(n, W) token embeddings of ``phrase`` (CoOp's ``ctx_init``)."""
    ids = backbone.tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"ctx_init {phrase!r} has no tokens.")
    with torch.no_grad():
        return backbone.token_embedding(torch.tensor(ids, device=backbone.device)).float().cpu().clone()


def split_init(backbone: Backbone, ctx_init: str, n_ctx: int) -> tuple[str, str]:
    """MaPLe/IVLP/PromptSRC: with ``n_ctx`` smaller than ``ctx_init``'s tokens, the first ``n_ctx``
    tokens are learned and the rest stay as fixed words before the class name ("a photo" + "of a")."""
    ids = backbone.tokenizer(ctx_init, add_special_tokens=False)["input_ids"]
    if not ctx_init or n_ctx <= 0 or n_ctx >= len(ids):
        return ctx_init, ""
    words = ctx_init.split()
    return " ".join(words[:n_ctx]), " ".join(words[n_ctx:])


def new_context(
    backbone: Backbone,
    n_ctx: int,
    ctx_init: str = "",
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """CoOp's initial context: ``ctx_init``'s embeddings, else N(0, 0.02) of (n_ctx, W) or (C, n_ctx, W)."""
    if ctx_init:  # a word initialisation is always generic (CoOp ignores CSC with it)
        return init_context(backbone, ctx_init)
    width = backbone.token_embedding.embedding_dim
    shape = (num_classes, n_ctx, width) if num_classes else (n_ctx, width)
    return torch.randn(shape, generator=generator) * 0.02


class PromptTokens(nn.Module):
    """The class-dependent token embeddings around a learned context (buffers, never saved)."""

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        n_ctx: int,
        position: str = "end",
        fixed_words: str = "",
    ):
        super().__init__()
        if position not in POSITIONS:
            raise ConfigError(f"class_token_position must be one of {list(POSITIONS)}, got '{position}'.")
        self.position = position
        self._n_ctx = n_ctx
        self.fixed_words = fixed_words  # words kept between the context and the class name
        self.set_classnames(backbone, classnames)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    def set_classnames(self, backbone: Backbone, classnames: Sequence[str]) -> None:
        """Build the class-dependent token embeddings (again, e.g. for new classes)."""
        lead = f"{self.fixed_words} " if self.fixed_words else ""
        names = [lead + classname_for_prompt(c) + "." for c in classnames]
        slots = backbone.tokenize_with_slots(names, self.n_ctx)
        with torch.no_grad():
            emb = backbone.token_embedding(slots.ids.to(backbone.device)).float().cpu()  # (C, L, W)
        first = slots.first_slot
        self.first_slot = first
        self.register_buffer("prefix", emb[:, :first], persistent=False)
        self.register_buffer("suffix", emb[:, first + self.n_ctx :], persistent=False)
        self.register_buffer("eot", slots.eot, persistent=False)
        self.register_buffer("order", self._order(slots.lengths - 1, emb.shape[1], first), persistent=False)
        self.classnames = list(classnames)

    def _order(self, name_lens: torch.Tensor, length: int, first: int) -> torch.Tensor:
        """(C, L) gather index from ``[prefix, ctx, suffix]`` to the class-token position's order."""
        n, rows = self.n_ctx, []
        for name_len in name_lens.tolist():  # name tokens, without the final "."
            prefix = list(range(first))
            ctx = list(range(first, first + n))
            suffix = list(range(first + n, length))
            if self.position == "end":
                order = prefix + ctx + suffix
            elif self.position == "middle":
                half = n // 2
                order = prefix + ctx[:half] + suffix[:name_len] + ctx[half:] + suffix[name_len:]
            else:
                order = prefix + suffix[:name_len] + ctx + suffix[name_len:]
            rows.append(order)
        return torch.tensor(rows)

    def forward(self, ctx: torch.Tensor, per_image: bool = False) -> torch.Tensor:
        """Context (n_ctx, W) or class-specific (C, n_ctx, W) -> (C, L, W) prompt embeddings.

        With ``per_image``, ``ctx`` is (B, n_ctx, W) and the result (B, C, L, W).
        """
        num_classes = self.prefix.shape[0]
        if per_image:
            ctx = ctx[:, None].expand(-1, num_classes, -1, -1)
        elif ctx.dim() == 2:
            ctx = ctx.expand(num_classes, -1, -1)
        lead = ctx.shape[:-3]
        prefix = self.prefix.to(ctx).expand(*lead, -1, -1, -1)
        suffix = self.suffix.to(ctx).expand(*lead, -1, -1, -1)
        tokens = torch.cat([prefix, ctx, suffix], dim=-2)  # (..., C, L, W)
        if self.position == "end":
            return tokens
        index = self.order.to(tokens.device)[..., None].expand(*lead, -1, -1, tokens.shape[-1])
        return tokens.gather(-2, index)
