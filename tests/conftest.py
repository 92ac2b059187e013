"""Shared fixtures: tiny checkpoints, CoOp-layout dataset trees with placeholder images."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("VLPEFT_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VLPEFT_SHARED", REPO.parent / "shared"))

# dataset name -> split file in ../shared/splits
SPLIT_FILES = {
    "OxfordPets": "split_zhou_OxfordPets.json",
    "Caltech101": "split_zhou_Caltech101.json",
    "StanfordCars": "split_zhou_StanfordCars.json",
    "OxfordFlowers": "split_zhou_OxfordFlowers.json",
    "DescribableTextures": "split_zhou_DescribableTextures.json",
    "EuroSAT": "split_zhou_EuroSAT.json",
    "UCF101": "split_zhou_UCF101.json",
}


def shared_path(*parts: str) -> Path:
    """A file under ../shared; missing shared data fails in CI and skips elsewhere."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI must run with ../shared beside the checkout")
        pytest.skip(f"{path} not available (set VLPEFT_SHARED)")
    return path


def real_looking_image(h: int, w: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """Smooth gradients plus noise and a bright disc: structure at every scale, like a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, 128 + 100 * np.sin(xx / 7 + yy / 11)], -1)
    arr += rng.normal(0, 18, (h, w, 3))
    arr[(xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (min(h, w) / 5) ** 2] = 240
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if mode == "RGBA":
        img.putalpha(Image.fromarray((xx * 255 // max(w - 1, 1)).astype(np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def write_placeholders(paths, size: int = 8) -> None:
    """One tiny JPEG per label colour, hard-linked to every path (fast for thousands of files)."""
    cache: dict[int, Path] = {}
    for path, label in paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if label not in cache:
            code = zlib.crc32(str(label).encode())
            color = (code % 256, (code >> 8) % 256, (code >> 16) % 256)
            Image.new("RGB", (size, size), color).save(path, format="JPEG")
            cache[label] = path
        elif not path.exists():
            os.link(cache[label], path)


def make_coop_tree(root: Path, name: str, split: dict | None = None) -> Path:
    """A CoOp data folder for ``name`` under ``root``: the real (or given) split, placeholder images."""
    from vlpeft.data import get_dataset_spec

    spec = get_dataset_spec(name)
    ddir = root / spec.dataset_dir
    ddir.mkdir(parents=True, exist_ok=True)
    if split is None:
        shutil.copy(shared_path("splits", SPLIT_FILES[name]), ddir / spec.split_file)
        split = json.loads((ddir / spec.split_file).read_text())
    else:
        (ddir / spec.split_file).write_text(json.dumps(split))
    image_dir = ddir / spec.image_subdir if spec.image_subdir else ddir
    write_placeholders((image_dir / rel, label) for items in split.values() for rel, label, _ in items)
    return root


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    from vlpeft.backbones import init_tiny

    return init_tiny(tmp_path_factory.mktemp("models") / "tiny-clip", family="clip", seed=0)


@pytest.fixture(scope="session")
def tiny_siglip(tmp_path_factory) -> Path:
    from vlpeft.backbones import init_tiny

    return init_tiny(tmp_path_factory.mktemp("models") / "tiny-siglip", family="siglip", seed=0)


@pytest.fixture(params=["clip", "siglip"])
def tiny_dir(request, tiny_clip, tiny_siglip) -> Path:
    return tiny_clip if request.param == "clip" else tiny_siglip


def make_shapes_folder(root: Path, per_class: int = 10, seed: int = 0) -> Path:
    """An image-folder dataset (one folder per class) of four coloured shapes drawn by the world renderer."""
    import random

    from vlpeft.world.render import Scene, render
    from vlpeft.world.scenes import make_object

    classes = {
        "red circle": ("circle", "red"),
        "blue square": ("square", "blue"),
        "green triangle": ("triangle", "green"),
        "yellow ring": ("ring", "yellow"),
    }
    rng = random.Random(seed)
    for name, (shape, color) in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            obj = make_object(rng, shape, color, "plain", rng.choice(("small", "medium", "large")), "center")
            render(Scene((obj,), "plain", "flat", rng.getrandbits(31)), 48).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture
def shapes_folder(tmp_path) -> Path:
    """A small image-folder dataset of coloured shapes (4 classes x 10 images)."""
    return make_shapes_folder(tmp_path / "shapes")


@pytest.fixture(scope="session")
def coop_root(tmp_path_factory) -> Path:
    """All seven published-split datasets in one CoOp data root (read-only: do not modify)."""
    root = tmp_path_factory.mktemp("coop-data")
    for name in SPLIT_FILES:
        make_coop_tree(root, name)
    return root


TINY_WORLD_CLASSES = ("circle", "square", "star")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 3-class WorldShapes in CoOp layout: 3 train, 1 val, 2 test images per class."""
    from vlpeft.data import load_dataset
    from vlpeft.world.datasets import WorldSet, shapes_scene, write_world_set

    ws = WorldSet("WorldShapes", "world_shapes", "a photo of a {}.", TINY_WORLD_CLASSES, shapes_scene)
    root = tmp_path_factory.mktemp("world")
    write_world_set(ws, root / ws.folder, 0, per_class=(3, 1, 2))
    return load_dataset("WorldShapes", root)


def pixel_data(backbone, world, seed: int = 0):
    """What a pixel-level method learns from, with the single template "a photo of a {}."."""
    from vlpeft.methods import ClassText
    from vlpeft.methods.inputs import PixelData

    encode = lambda prompts: backbone.encode_text(backbone.tokenize(prompts)).detach()  # noqa: E731
    text = ClassText(world.classnames, lambda kind: ["a photo of a {}."], encode)
    return PixelData(world.train, world.val, text, world.num_classes, float(backbone.logit_scale), seed=seed)


def pixels_of(backbone, items):
    """(N, 3, H, W) eval-transformed pixels of dataset items."""
    import torch

    return torch.stack([backbone.preprocess(Image.open(i.impath)) for i in items])


@pytest.fixture(autouse=True)
def _fresh_progress_setting():
    """`-q` in an in-process CLI call switches progress bars off for the process: undo it after each test."""
    yield
    from vlpeft.utils import set_progress

    set_progress(None)
