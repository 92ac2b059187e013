"""PromptSRC: IVLP prompts regularised towards frozen CLIP, with Gaussian prompt aggregation."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlpeft.data.templates import PROMPTSRC_TEMPLATES, format_prompts
from vlpeft.errors import ConfigError
from vlpeft.methods.base import register_method
from vlpeft.methods.inputs import PixelData
from vlpeft.methods.prompts.multimodal import MultimodalConfig, MultimodalPrompts


@dataclass
class PromptSRCConfig(MultimodalConfig):
    # muzairkhattak/PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    lr: float = 0.0025
    epochs: int = 20
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa_mean: float = 15.0
    gpa_std: float = 1.0


@register_method
class PromptSRC(MultimodalPrompts):
    """PromptSRC: IVLP prompts regularised towards frozen CLIP, averaged over epochs with Gaussian weights.

    Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting",
    ICCV 2023, https://arxiv.org/abs/2307.06948; official code muzairkhattak/PromptSRC
    ``trainers/promptsrc.py``. Loss: ``CE + KL(p_zs || p) / (B C) + 25 * L1(text, text_zs) +
    10 * L1(image, image_zs)``; ``text_zs`` averages the unnormalised embeddings of 60 ImageNet
    templates. After epoch e (1-based) the prompts are accumulated with weight
    ``N(e; 15, 1)`` (normalised over the epochs); the final prompts are that average. The code
    averages the whole state dict; the frozen weights average to themselves, so averaging the
    learned tensors is the same.

    Example: ``vlpeft train --method promptsrc --subsample base ...``
    """

    name = "promptsrc"
    paper = "https://arxiv.org/abs/2307.06948"
    config_class = PromptSRCConfig

    def prepare(self, data: PixelData) -> None:
        super().prepare(data)
        backbone = self.backbone
        prompts = [p for t in PROMPTSRC_TEMPLATES for p in format_prompts(t, data.text.classnames)]
        with torch.no_grad():
            raw = torch.cat(
                [
                    backbone.encode_text(backbone.tokenize(prompts[i : i + 256])).float()
                    for i in range(0, len(prompts), 256)
                ]
            )
        frozen = F.normalize(raw.view(len(PROMPTSRC_TEMPLATES), data.num_classes, -1).mean(0), dim=-1)
        self.register_buffer("frozen_text", frozen, persistent=False)
        self._gpa_weights = gaussian_weights(self.config.epochs, self.config.gpa_mean, self.config.gpa_std)
        self._gpa_sum = None

    def loss(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        image, text = self.image_features(pixels), self.text_features()
        logits = self.logit_scale * image @ text.t()
        with torch.no_grad():
            frozen_image = F.normalize(self.backbone.encode_image(pixels).float(), dim=-1)
            zero_shot = self.logit_scale * frozen_image @ self.frozen_text.t()
        ce = F.cross_entropy(logits, labels.to(logits.device))
        kl = (
            F.kl_div(
                F.log_softmax(logits, dim=1),
                F.log_softmax(zero_shot, dim=1),
                reduction="sum",
                log_target=True,
            )
            / logits.numel()
        )
        text_l1 = F.l1_loss(text, self.frozen_text) * self.config.text_loss_weight
        image_l1 = F.l1_loss(image, frozen_image) * self.config.image_loss_weight
        self.record_terms(ce=ce, kl=kl, text_l1=text_l1, image_l1=image_l1)
        return ce + kl + text_l1 + image_l1

    def on_epoch_end(self, epoch: int) -> None:
        weight = self._gpa_weights[epoch]
        snapshot = {k: v.detach().clone() * weight for k, v in self.named_parameters()}
        if self._gpa_sum is None:
            self._gpa_sum = snapshot
        else:
            for k, v in snapshot.items():
                self._gpa_sum[k] += v

    def on_fit_end(self) -> None:
        if self._gpa_sum is None:
            return
        with torch.no_grad():
            for k, p in self.named_parameters():
                p.copy_(self._gpa_sum[k])


def gaussian_weights(epochs: int, mean: float, std: float) -> list[float]:
    """PromptSRC's GPA weights ``N(e; mean, std)`` for epochs e = 1..epochs, normalised to sum to 1."""
    raw = [
        math.exp(-((e - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi))
        for e in range(1, epochs + 1)
    ]
    total = sum(raw)
    if total == 0:
        raise ConfigError(f"gpa_mean={mean}, gpa_std={std} put no weight on epochs 1..{epochs}; adjust them.")
    return [w / total for w in raw]
