"""The backbone interface every method is written against.

A :class:`Backbone` is a frozen dual encoder. Methods see only this interface: encoders for
pixels, token ids and token *embeddings* (for learned prompts), the logit scale/bias, the
checkpoint's own eval transform, and hook points on the encoder layers for deep prompts.
Backbone code never mentions a method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from vlpeft.data.transforms import ImageTransform
from vlpeft.errors import ConfigError

Tower = Literal["text", "vision"]


@dataclass(frozen=True)
class TextSlots:
    """Token ids with placeholder slots (see :meth:`Backbone.tokenize_with_slots`)."""

    ids: torch.Tensor  # (N, L)
    first_slot: int
    eot: torch.Tensor  # (N,)
    lengths: torch.Tensor  # (N,) tokens of each text, without special tokens


HiddenFn = Callable[[torch.Tensor], torch.Tensor]


class Backbone(nn.Module):
    """A CLIP-like image/text dual encoder (frozen at load)."""

    spec: str
    family: str
    embed_dim: int  # joint embedding size D
    text_width: int  # token embedding size W of the text tower
    vision_width: int
    context_length: int  # L, the tokenized length
    causal_text: bool  # causal text attention (CLIP) allows truncating after the EOT token
    image_forwards: int = 0  # images this backbone's image encoder has processed

    # ---- image side -------------------------------------------------------------------
    @property
    def preprocess(self) -> ImageTransform:
        """The checkpoint's eval transform: PIL image -> (3, H, W) float tensor."""
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) image embeddings (not normalised)."""
        raise NotImplementedError

    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, T, D) per-token features of the last layer (local features)."""
        raise NotImplementedError

    # ---- text side --------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (N, L) token ids, padded to ``context_length``."""
        raise NotImplementedError

    def tokenize_with_slots(self, texts: Sequence[str], n_slots: int) -> TextSlots:
        """Tokenize ``texts`` with ``n_slots`` placeholder positions in front of each text.

        For learned prompts: the slots' embeddings are replaced by learned vectors. Returns the
        (N, L) ids, the position of the first slot, the (N,) pooled (EOT) positions and the
        (N,) number of tokens of each text.
        """
        raise NotImplementedError

    def eot_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N,) position whose final hidden state is the text embedding."""
        raise NotImplementedError

    @property
    def token_embedding(self) -> nn.Embedding:
        """The text tower's token embedding table (V, W)."""
        raise NotImplementedError

    def encode_text_embeddings(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        """(N, L, W) token embeddings (no positions) + (N,) EOT positions -> (N, D).

        Fed ``token_embedding(ids)`` and ``eot_index(ids)`` it equals :meth:`encode_text`.
        With causal text attention and ``truncate``, positions after the last EOT are never
        computed (exact: no earlier position can attend to them).
        """
        raise NotImplementedError

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D) text embeddings (not normalised)."""
        embeds = self.token_embedding(token_ids.to(self.device))
        return self.encode_text_embeddings(embeds, self.eot_index(token_ids).to(self.device))

    # ---- heads ------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        """The learned temperature, already exponentiated (CLIP: 100 after training)."""
        raise NotImplementedError

    @property
    def logit_bias(self) -> torch.Tensor:
        """SigLIP's learned logit bias; zero for CLIP."""
        raise NotImplementedError

    # ---- hook points for deep prompts ---------------------------------------------------
    def layers(self, tower: Tower) -> nn.ModuleList:
        """The transformer blocks of ``tower``, in order."""
        raise NotImplementedError

    def embeddings(self, tower: Tower) -> nn.Module:
        """The module producing ``tower``'s input token sequence (token/patch + position)."""
        raise NotImplementedError

    def add_layer_input_hook(self, tower: Tower, index: int, fn: HiddenFn) -> RemovableHandle:
        """Call ``fn(hidden_states)`` on the (B, T, W) input of block ``index``; use its result instead."""
        blocks = self.layers(tower)
        if not -len(blocks) <= index < len(blocks):
            raise ConfigError(f"{tower} tower has {len(blocks)} layers; layer index {index} is out of range.")

        def pre_hook(module, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        return blocks[index].register_forward_pre_hook(pre_hook, with_kwargs=True)

    def add_embedding_hook(self, tower: Tower, fn: HiddenFn) -> RemovableHandle:
        """Call ``fn`` on the (B, T, W) output of ``tower``'s embeddings (e.g. to append prompt tokens)."""
        return self.embeddings(tower).register_forward_hook(lambda module, args, out: fn(out))

    # ---- bookkeeping ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def fingerprint(self) -> str:
        """SHA-256 over every weight (names, shapes, dtypes, bytes): identifies the exact weights."""
        cached = getattr(self, "_fingerprint", None)
        if cached is None:
            cached = weights_fingerprint(self.state_dict())
            self._fingerprint = cached
        return cached

    def describe(self) -> dict:
        """A JSON-friendly summary for run records."""
        return {
            "spec": self.spec,
            "family": self.family,
            "embed_dim": self.embed_dim,
            "context_length": self.context_length,
            "image_size": list(self.preprocess.output_size),
            "parameters": sum(p.numel() for p in self.parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
            "fingerprint": self.fingerprint(),
        }


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(state_dict[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
