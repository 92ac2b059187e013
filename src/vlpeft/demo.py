"""``vlpeft demo``: the main job on an embedded default, end to end, offline.

Until the embedded pretrained model exists this is a zero-shot evaluation of a tiny random
CLIP on a small generated image-folder dataset: it exercises checkpoint writing and loading,
dataset reading, text and image encoding, metrics and the run record.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from PIL import Image, ImageDraw

from vlpeft.io import atomic_directory

logger = logging.getLogger(__name__)

DEMO_CLASSES = {
    "red circle": ((220, 40, 40), "ellipse"),
    "blue square": ((40, 60, 220), "rectangle"),
    "green triangle": ((40, 180, 60), "polygon"),
    "yellow ring": ((230, 210, 40), "ring"),
}


def _draw(shape: str, color: tuple[int, int, int], rng: random.Random, size: int = 48) -> Image.Image:
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 60) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "ellipse":
        draw.ellipse(box, fill=color)
    elif shape == "rectangle":
        draw.rectangle(box, fill=color)
    elif shape == "polygon":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    else:
        draw.ellipse(box, outline=color, width=max(2, r // 3))
    return img


def make_demo_dataset(root: str | Path, per_class: int = 10, seed: int = 0) -> Path:
    """An image-folder dataset of coloured shapes, one folder per class (atomically written)."""
    rng = random.Random(seed)
    with atomic_directory(root, overwrite=True) as tmp:
        for name, (color, shape) in DEMO_CLASSES.items():
            (tmp / name).mkdir()
            for i in range(per_class):
                _draw(shape, color, rng).save(tmp / name / f"{i:03d}.png")
    return Path(root)


def run_demo(out: str | Path) -> dict:
    """Create the tiny model and data under ``out`` and evaluate zero-shot; returns the result."""
    from vlpeft.backbones import init_tiny
    from vlpeft.engine.evaluate import EvalConfig, run_zero_shot_eval

    out = Path(out)
    model_dir = out / "model"
    if not (model_dir / "config.json").exists():
        init_tiny(model_dir, family="clip", seed=0, overwrite=True)
    data = make_demo_dataset(out / "data")
    cfg = EvalConfig(model=f"local:{model_dir}", dataset="imagefolder", root=str(data), device="cpu")
    return run_zero_shot_eval(cfg, out / "zero-shot", overwrite=True)
