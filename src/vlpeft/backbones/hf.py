"""transformers CLIP and SigLIP behind the :class:`Backbone` interface.

Only the model's own submodules are called (embeddings, encoder, layer norms, projections):
no model code is copied, so any CLIPModel/SiglipModel checkpoint works and hook points are the
real encoder layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vlpeft.backbones.base import Backbone, TextSlots, Tower
from vlpeft.data.transforms import ImageTransform
from vlpeft.errors import BackboneError, ConfigError

FAMILIES = ("clip", "siglip")


class HFBackbone(Backbone):
    """A transformers ``CLIPModel`` or ``SiglipModel`` with its tokenizer and eval transform."""

    def __init__(self, model: nn.Module, tokenizer, transform: ImageTransform, spec: str):
        super().__init__()
        family = model.config.model_type
        if family not in FAMILIES:
            raise BackboneError(f"'{spec}' is a '{family}' model; vlpeft supports {list(FAMILIES)}.")
        self.model = model
        self.tokenizer = tokenizer
        self._transform = transform
        self.spec = spec
        self.family = family
        text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
        self.causal_text = family == "clip"
        self.context_length = int(text_cfg.max_position_embeddings)
        self.text_width = int(text_cfg.hidden_size)
        self.vision_width = int(vision_cfg.hidden_size)
        self.embed_dim = int(model.config.projection_dim) if family == "clip" else int(vision_cfg.hidden_size)
        self.eos_token_id = tokenizer.eos_token_id
        if self.eos_token_id is None:
            raise BackboneError(f"The tokenizer of '{spec}' defines no end-of-text token.")

    # ---- image ---------------------------------------------------------------------------
    @property
    def preprocess(self) -> ImageTransform:
        return self._transform

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        self.image_forwards += len(pixels)
        out = self.model.vision_model(pixel_values=pixels.to(self.device))
        if self.family == "clip":
            return self.model.visual_projection(out.pooler_output)  # (B, D)
        return out.pooler_output  # SigLIP: attention-pooling head output (B, D)

    def encode_image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        self.image_forwards += len(pixels)
        hidden = self.model.vision_model(pixel_values=pixels.to(self.device)).last_hidden_state  # (B, T, Wv)
        if self.family == "clip":  # OpenAI's ViT applies ln_post and the projection to every token
            return self.model.visual_projection(self.model.vision_model.post_layernorm(hidden))
        return hidden  # SigLIP: already post-layernorm; patch tokens, no CLS

    # ---- text ----------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"]  # (N, L)

    def tokenize_with_slots(self, texts: Sequence[str], n_slots: int) -> TextSlots:
        bodies = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        bos = self.tokenizer.bos_token_id
        head = [bos] if self.causal_text and bos is not None else []
        longest = max(len(head) + n_slots + len(b) + 1 for b in bodies)
        if longest > self.context_length:
            raise ConfigError(
                f"A prompt of {n_slots} context tokens plus the longest text needs {longest} tokens; "
                f"'{self.spec}' takes {self.context_length}. Use fewer context tokens (n_ctx)."
            )
        rows = [[*head, *([pad] * n_slots), *b, self.eos_token_id] for b in bodies]
        ids = torch.full((len(rows), self.context_length), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        ends = torch.tensor([len(r) - 1 for r in rows])
        eot = ends if self.causal_text else torch.full_like(ends, self.context_length - 1)
        return TextSlots(ids, len(head), eot, torch.tensor([len(b) for b in bodies]))

    def eot_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        n, length = token_ids.shape
        if not self.causal_text:  # SigLIP pools the last position (the text is padded to full length)
            return torch.full((n,), length - 1, dtype=torch.long, device=token_ids.device)
        is_eos = token_ids == self.eos_token_id
        if not bool(is_eos.any(dim=1).all()):
            raise BackboneError(
                "Every tokenized text must contain the end-of-text token; use Backbone.tokenize."
            )
        return is_eos.int().argmax(dim=1)  # first EOT position, as transformers pools

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_model.embeddings.token_embedding

    def encode_text_embeddings(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        text = self.model.text_model
        if truncate and self.causal_text:
            embeds = embeds[:, : int(eot_index.max()) + 1]  # (N, L', W): later positions cannot matter
        hidden = text.embeddings(inputs_embeds=embeds)  # + position embeddings
        mask = causal_mask(hidden) if self.causal_text else None
        hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = text.final_layer_norm(hidden)
        pooled = hidden[
            torch.arange(hidden.shape[0], device=hidden.device), eot_index.to(hidden.device)
        ]  # (N, W)
        return self.model.text_projection(pooled) if self.family == "clip" else text.head(pooled)

    # ---- heads ---------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().reshape(())

    @property
    def logit_bias(self) -> torch.Tensor:
        if self.family == "siglip":
            return self.model.logit_bias.reshape(())
        return torch.zeros((), device=self.device, dtype=self.dtype)

    # ---- hook points -----------------------------------------------------------------------
    def _tower(self, tower: Tower) -> nn.Module:
        if tower not in ("text", "vision"):
            raise BackboneError(f"tower must be 'text' or 'vision', got '{tower}'.")
        return self.model.text_model if tower == "text" else self.model.vision_model

    def layers(self, tower: Tower) -> nn.ModuleList:
        return self._tower(tower).encoder.layers

    def embeddings(self, tower: Tower) -> nn.Module:
        return self._tower(tower).embeddings


def causal_mask(hidden: torch.Tensor) -> torch.Tensor:
    """(1, 1, T, T) additive mask: position i attends to positions <= i."""
    length = hidden.shape[1]
    blocked = torch.ones(length, length, dtype=torch.bool, device=hidden.device).triu(1)
    mask = torch.zeros(length, length, dtype=hidden.dtype, device=hidden.device)
    return mask.masked_fill(blocked, torch.finfo(hidden.dtype).min)[None, None]
