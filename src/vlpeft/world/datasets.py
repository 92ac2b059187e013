"""The world's downstream datasets, written to disk in CoOp's exact layout.

Six few-shot datasets echo the standard suite — object categories (WorldShapes), look-alike
fine-grained classes (WorldPolygons), textures (WorldTextures), counting (WorldCounting),
colour-shape compositions half of which pretraining never drew (WorldCompositions), and a
rendering style pretraining never saw (WorldPointillism) — plus four test-only domain shifts
of WorldShapes echoing ImageNet-V2, -Sketch, -A and -R. ``generate_world(root)`` writes
``root/<folder>/images/<class>/<split>_<i>.png`` and ``split_zhou_<Name>.json`` for each; the
same seed always gives the same bytes.

Like real benchmarks, each dataset has its own domain: WorldShapes, WorldPolygons and
WorldCounting are flat or shaded drawings, WorldTextures adds noise, while pretraining mixes
six styles. Version 2 narrowed those domains: with every style mixed in, a 16-shot linear probe
on the embedded model's features could not beat zero-shot on shapes, textures or counting (the
shifts V2/Sketch/A/R still test the other styles). Version 3 (this one) redrew WorldPolygons: its
pentagon-to-nonagon classes at small sizes were at chance for the image features themselves (a
linear probe on 300 test images scored 20%, chance 17%), so it measured nothing; it is now the
series triangle, square, pentagon, hexagon, octagon, circle, plain and medium or large, whose
neighbours still look alike. The other sets draw the same images as in version 2.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlpeft.data.base import register_dataset
from vlpeft.data.coop import SplitFileDataset
from vlpeft.io import atomic_directory, write_json_atomic
from vlpeft.world.render import Obj, Scene, render
from vlpeft.world.scenes import group, make_object
from vlpeft.world.vocab import BACKGROUNDS, COLORS, PATTERNS, PRETRAIN_STYLES, SIZES

WORLD_VERSION = 3  # bumped when a dataset's drawing changes: generated worlds are redrawn
# Per-image seeds do not include WORLD_VERSION: sets whose drawing did not change keep their exact
# images (and results) across versions. It was 2 when the seeds were introduced.
IMAGE_SEED_SALT = 2
IMAGE_SIZE = 64
POSITIONS = ("left", "right", "top", "bottom", "center")
SceneMaker = Callable[[str, random.Random], Scene]


def _any_color(rng: random.Random) -> str:
    return rng.choice(list(COLORS))


def _pattern(rng: random.Random, p: float = 0.5) -> str:
    return rng.choice(PATTERNS[1:]) if rng.random() < p else "plain"


def _single(shape: str, color: str, rng: random.Random, style: str | None = None, **kw) -> Scene:
    size = kw.pop("size", rng.choice(SIZES))
    obj = make_object(rng, shape, color, kw.pop("pattern", _pattern(rng)), size, rng.choice(POSITIONS))
    return Scene((obj,), rng.choice(BACKGROUNDS), style or rng.choice(PRETRAIN_STYLES), rng.getrandbits(31))


def shapes_scene(name: str, rng: random.Random) -> Scene:
    return _single(name, _any_color(rng), rng, rng.choice(("flat", "shaded")))


def polygons_scene(name: str, rng: random.Random) -> Scene:
    style = rng.choice(("flat", "shaded"))
    return _single(name, _any_color(rng), rng, style, size=rng.choice(("medium", "large")), pattern="plain")


def textures_scene(name: str, rng: random.Random) -> Scene:
    style = rng.choice(("flat", "shaded", "noisy"))
    if rng.random() < 0.5:
        obj = Obj("square", _any_color(rng), name)
        return Scene((obj,), "plain", style, rng.getrandbits(31), texture=True)
    return _single(
        rng.choice(("circle", "square", "hexagon", "oval")),
        _any_color(rng),
        rng,
        style,
        size="large",
        pattern=name,
    )


def counting_scene(name: str, rng: random.Random) -> Scene:
    count = ("one", "two", "three", "four", "five", "six").index(name) + 1
    shape = rng.choice(("circle", "square", "triangle", "star", "heart", "diamond", "hexagon", "cross"))
    objs = group(rng, count, shape, _any_color(rng), _pattern(rng, 0.3))
    return Scene(tuple(objs), rng.choice(BACKGROUNDS), rng.choice(("flat", "shaded")), rng.getrandbits(31))


def compositions_scene(name: str, rng: random.Random) -> Scene:
    color, shape = name.split(" ")
    return _single(shape, color, rng, rng.choice(("flat", "shaded", "noisy", "blurry")), pattern="plain")


def pointillism_scene(name: str, rng: random.Random) -> Scene:
    return _single(name, _any_color(rng), rng, "pointillism", pattern="plain")


def sketch_scene(name: str, rng: random.Random) -> Scene:
    return _single(name, _any_color(rng), rng, "sketch")


def adversarial_scene(name: str, rng: random.Random) -> Scene:
    """Small, low-contrast targets among small distractor blobs of other shapes' parts."""
    target = make_object(
        rng, name, rng.choice(("gray", "brown", "black", "white")), "plain", "small", rng.choice(POSITIONS)
    )
    noise = [
        Obj(
            "circle",
            rng.choice(list(COLORS)),
            "plain",
            "small",
            rng.uniform(0.08, 0.92),
            rng.uniform(0.08, 0.92),
            0.035,
            0.0,
        )
        for _ in range(rng.randint(4, 8))
    ]
    style = rng.choice(("noisy", "blurry", "flat"))
    return Scene((target, *noise), rng.choice(("speckled", "gradient")), style, rng.getrandbits(31))


def renditions_scene(name: str, rng: random.Random) -> Scene:
    style = rng.choice(("inverted", "shaded", "blurry"))
    return _single(name, _any_color(rng), rng, style, pattern=_pattern(rng, 0.8))


SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "ring",
    "diamond",
    "arrow",
    "moon",
    "oval",
    "trapezoid",
)
COMPOSITION_CLASSES = (
    "purple triangle",
    "green heart",
    "orange ring",
    "blue star",
    "pink square",
    "yellow cross",  # never drawn
    "purple heart",
    "green ring",
    "orange star",
    "blue square",
    "pink cross",
    "yellow triangle",  # drawn
)


@dataclass(frozen=True)
class WorldSet:
    """One generated dataset: class names, how to draw an image of a class, split sizes per class."""

    name: str
    folder: str
    template: str
    classes: tuple[str, ...]
    make: SceneMaker
    sizes: tuple[int, int, int] = (40, 16, 50)  # train, val, test images per class
    test_only: bool = False
    description: str = ""
    echoes: str = ""


WORLD_SETS: tuple[WorldSet, ...] = (
    WorldSet(
        "WorldShapes",
        "world_shapes",
        "a photo of a {}.",
        SHAPE_CLASSES,
        shapes_scene,
        description="12 shape categories, any colour and pattern, flat or shaded",
        echoes="ImageNet / Caltech101",
    ),
    WorldSet(
        "WorldPolygons",
        "world_polygons",
        "a photo of a {}.",
        ("triangle", "square", "pentagon", "hexagon", "octagon", "circle"),
        polygons_scene,
        description="plain regular polygons from 3 to 8 sides and the circle they approach",
        echoes="FGVCAircraft / StanfordCars",
    ),
    WorldSet(
        "WorldTextures",
        "world_textures",
        "{} texture.",
        PATTERNS[1:],
        textures_scene,
        description="7 patterns on full frames and large shapes",
        echoes="DTD",
    ),
    WorldSet(
        "WorldCounting",
        "world_counting",
        "a photo of {} objects.",
        ("one", "two", "three", "four", "five", "six"),
        counting_scene,
        description="how many equal objects are drawn",
        echoes="CLEVR-count",
    ),
    WorldSet(
        "WorldCompositions",
        "world_compositions",
        "a photo of a {}.",
        COMPOSITION_CLASSES,
        compositions_scene,
        description="colour-shape pairs, half never drawn in pretraining",
        echoes="compositional zero-shot",
    ),
    WorldSet(
        "WorldPointillism",
        "world_pointillism",
        "a photo of a {}.",
        SHAPE_CLASSES[:10],
        pointillism_scene,
        description="shapes in a dotted style pretraining never showed",
        echoes="EuroSAT (a new domain)",
    ),
    WorldSet(
        "WorldShapesV2",
        "world_shapes_v2",
        "a photo of a {}.",
        SHAPE_CLASSES,
        shapes_scene,
        (0, 0, 50),
        True,
        "WorldShapes redrawn with new seeds",
        "ImageNet-V2",
    ),
    WorldSet(
        "WorldShapesSketch",
        "world_shapes_sketch",
        "a photo of a {}.",
        SHAPE_CLASSES,
        sketch_scene,
        (0, 0, 50),
        True,
        "WorldShapes classes as pencil sketches",
        "ImageNet-Sketch",
    ),
    WorldSet(
        "WorldShapesA",
        "world_shapes_a",
        "a photo of a {}.",
        SHAPE_CLASSES,
        adversarial_scene,
        (0, 0, 50),
        True,
        "small low-contrast shapes among distractors",
        "ImageNet-A",
    ),
    WorldSet(
        "WorldShapesR",
        "world_shapes_r",
        "a photo of a {}.",
        SHAPE_CLASSES,
        renditions_scene,
        (0, 0, 50),
        True,
        "inverted, shaded and blurred renditions",
        "ImageNet-R",
    ),
)
FEW_SHOT_SETS = tuple(s.name for s in WORLD_SETS if not s.test_only)
SHIFT_SETS = tuple(s.name for s in WORLD_SETS if s.test_only)
WORLD_TEMPLATES = tuple(dict.fromkeys(s.template for s in WORLD_SETS))


def world_root(cache_dir: str | None, world_seed: int = 0) -> Path:
    """Where the generated world lives in the cache (one folder per world version and seed)."""
    from vlpeft.features import default_cache_dir

    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "world" / f"v{WORLD_VERSION}-seed{world_seed}"


def world_set(name: str) -> WorldSet:
    return next(s for s in WORLD_SETS if s.name == name)


def image_seed(world_seed: int, set_name: str, split: str, label: int, index: int) -> int:
    """A stable 63-bit seed per generated image (independent of Python's hash randomisation)."""
    key = f"{IMAGE_SEED_SALT}|{world_seed}|{set_name}|{split}|{label}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def scene_for(ws: WorldSet, world_seed: int, split: str, label: int, index: int) -> Scene:
    # WorldShapesV2 draws from WorldShapes' generator with other seeds: same distribution, new images.
    return ws.make(ws.classes[label], random.Random(image_seed(world_seed, ws.name, split, label, index)))


def write_world_set(
    ws: WorldSet, directory: Path, world_seed: int = 0, per_class: Sequence[int] | None = None
) -> None:
    """Draw ``ws`` into ``directory`` (CoOp layout): images/<class>/<split>_<i>.png + the split file."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for name, count in zip(("train", "val", "test"), per_class or ws.sizes, strict=True):
        for label, cls in enumerate(ws.classes):
            (directory / "images" / _slug(cls)).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rel = f"{_slug(cls)}/{name}_{i:04d}.png"
                render(scene_for(ws, world_seed, name, label, i), IMAGE_SIZE).save(directory / "images" / rel)
                split[name].append([rel, label, cls])
    (directory / f"split_zhou_{ws.name}.json").write_text(json.dumps(split, indent=1))


def generate_world(root: str | Path, seed: int = 0, names: Sequence[str] | None = None) -> Path:
    """Write the world datasets under ``root`` (skipping those already generated with this seed)."""
    root = Path(root)
    manifest_path = root / "world.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for ws in WORLD_SETS:
        if names and ws.name not in names:
            continue
        stamp = {"version": WORLD_VERSION, "seed": seed, "image_size": IMAGE_SIZE}
        if manifest.get(ws.name) == stamp and (root / ws.folder).is_dir():
            continue
        with atomic_directory(root / ws.folder, overwrite=True) as tmp:
            write_world_set(ws, tmp, seed)
        manifest[ws.name] = stamp
        write_json_atomic(manifest_path, manifest)
    return root


class WorldDatasetSpec(SplitFileDataset):
    """A generated world dataset (CoOp layout); missing data points at `vlpeft world generate`."""

    image_subdir = "images"
    source = "generate it with `vlpeft world generate --root DIR` (seconds, offline)"


def _register(ws: WorldSet) -> None:
    attrs = {
        "name": ws.name,
        "dataset_dir": ws.folder,
        "split_file": f"split_zhou_{ws.name}.json",
        "template": ws.template,
        "test_only": ws.test_only,
        "description": f"{ws.description} (echoes {ws.echoes})",
        "layout": f"{ws.folder}/\n|-- images/\n|-- split_zhou_{ws.name}.json",
    }
    register_dataset(type(ws.name, (WorldDatasetSpec,), attrs))


for _ws in WORLD_SETS:
    _register(_ws)
