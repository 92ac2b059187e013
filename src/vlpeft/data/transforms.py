"""Image transforms without torchvision.

:class:`ImageTransform` reproduces a transformers image processor's eval transform from its
``preprocessor_config.json``: RGB conversion (transparency composited onto white, as
transformers does), PIL resize of the shortest side (or to a fixed size), centre crop with
``top = (h - crop_h) // 2``, rescale and normalise in float32. Note: OpenAI's original CLIP
preprocessing (torchvision) rounds the crop offset and drops alpha instead; we follow the
checkpoint's own (transformers) processor, which is what `hf:` checkpoints were evaluated with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlpeft.errors import BackboneError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTransform:
    """Resize (shortest side or fixed H×W), optional centre crop, rescale, normalise."""

    shortest_edge: int | None = 224
    size: tuple[int, int] | None = None  # fixed (height, width) resize, used when shortest_edge is None
    crop: tuple[int, int] | None = (224, 224)
    resample: int = Image.Resampling.BICUBIC
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the tensors this transform produces."""
        if self.crop is not None:
            return self.crop
        if self.size is not None:
            return self.size
        raise BackboneError("A transform without a crop or a fixed size has no fixed output size.")

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any]) -> ImageTransform:
        """Read a transformers ``preprocessor_config.json`` (CLIP and SigLIP styles, old and new)."""
        shortest, size = _resize_spec(config) if config.get("do_resize", True) else (None, None)
        crop = _hw(config.get("crop_size"), "crop_size") if config.get("do_center_crop", False) else None
        mean = (
            tuple(config.get("image_mean", OPENAI_CLIP_MEAN))
            if config.get("do_normalize", True)
            else (0.0,) * 3
        )
        std = (
            tuple(config.get("image_std", OPENAI_CLIP_STD))
            if config.get("do_normalize", True)
            else (1.0,) * 3
        )
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 1.0
        resample = int(config.get("resample", Image.Resampling.BICUBIC))
        return cls(shortest, size, crop, resample, rescale, mean, std)  # type: ignore[arg-type]

    def to_processor_config(self) -> dict[str, Any]:
        """The inverse of :meth:`from_processor_config` (a transformers-compatible dict)."""
        out: dict[str, Any] = {"do_resize": True, "resample": self.resample, "do_rescale": True}
        out["size"] = (
            {"shortest_edge": self.shortest_edge}
            if self.shortest_edge
            else {"height": self.size[0], "width": self.size[1]}  # type: ignore[index]
        )
        out["do_center_crop"] = self.crop is not None
        if self.crop is not None:
            out["crop_size"] = {"height": self.crop[0], "width": self.crop[1]}
        out.update(rescale_factor=self.rescale_factor, do_normalize=True, do_convert_rgb=True)
        out.update(image_mean=list(self.mean), image_std=list(self.std))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resize(self, img: Image.Image) -> Image.Image:
        if self.shortest_edge is not None:
            w, h = img.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        elif self.size is not None:
            new_h, new_w = self.size
        else:
            return img
        return img.resize((new_w, new_h), resample=self.resample)

    def center_crop(self, img: Image.Image) -> Image.Image:
        if self.crop is None:
            return img
        ch, cw = self.crop
        w, h = img.size
        if h < ch or w < cw:  # transformers pads with zeros; only reachable with crop > resize
            img = _pad_center(img, max(h, ch), max(w, cw))
            w, h = img.size
        top, left = (h - ch) // 2, (w - cw) // 2
        return img.crop((left, top, left + cw, top + ch))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """(3, H, W) float32, rescaled and normalised."""
        arr = np.asarray(img, dtype=np.float64) * self.rescale_factor
        arr = arr.astype(np.float32)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def __call__(self, img: Image.Image):
        """PIL image -> normalised float32 tensor of shape (3, H, W)."""
        import torch

        return torch.from_numpy(self.to_array(self.center_crop(self.resize(to_rgb(img)))))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, compositing any transparency onto white (transformers' ``convert_to_rgb``)."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _pad_center(img: Image.Image, h: int, w: int) -> Image.Image:
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    canvas.paste(img, ((w - img.size[0]) // 2, (h - img.size[1]) // 2))
    return canvas


def _resize_spec(config: Mapping[str, Any]) -> tuple[int | None, tuple[int, int] | None]:
    size = config.get("size", 224)
    if isinstance(size, int):  # old-style configs: an int means the shortest edge
        return size, None
    if isinstance(size, Mapping) and "shortest_edge" in size:
        return int(size["shortest_edge"]), None
    return None, _hw(size, "size")


def _hw(value: Any, key: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise BackboneError(
        f"preprocessor_config.json: cannot read '{key}'={value!r}; "
        "expected an int or {'height': H, 'width': W}."
    )


@dataclass(frozen=True)
class AugmentSpec:
    """Random resized crop + horizontal flip (torchvision's RandomResizedCrop semantics).

    Defaults follow Tip-Adapter's cache augmentation (gaopengcuhk/Tip-Adapter ``main.py``:
    ``RandomResizedCrop(224, scale=(0.5, 1), interpolation=BICUBIC)``, ``RandomHorizontalFlip()``).
    The randomness of view ``v`` of an image is a pure function of ``(seed, v, image key)``,
    so a view is the same pixels in every run and every few-shot subset — and is encoded once.
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    seed: int = 0
    crop: str = "random-resized"  # or "center": the eval transform (resize + centre crop), then the flip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_resized_crop_box(width: int, height: int, spec: AugmentSpec, rng) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: (left, top, w, h), 10 tries then a centre fallback."""
    import math

    area = width * height
    log_ratio = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*spec.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(spec.ratio):
        w, h = width, round(width / min(spec.ratio))
    elif in_ratio > max(spec.ratio):
        w, h = round(height * max(spec.ratio)), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class AugmentedView:
    """View ``view`` of an image: random resized crop to the eval output size, random flip, normalise."""

    def __init__(self, base: ImageTransform, spec: AugmentSpec, view: int):
        self.base, self.spec, self.view = base, spec, view

    def __call__(self, img: Image.Image, key: str):
        import random

        import torch

        rng = random.Random(f"{self.spec.seed}|{self.view}|{key}")
        img = to_rgb(img)
        if self.spec.crop == "center":
            img = self.base.center_crop(self.base.resize(img))
        else:
            left, top, w, h = random_resized_crop_box(img.size[0], img.size[1], self.spec, rng)
            out_h, out_w = self.base.output_size
            img = img.resize((out_w, out_h), resample=self.base.resample, box=(left, top, left + w, top + h))
        if rng.random() < self.spec.flip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(self.base.to_array(img))
