"""Sampling scenes and describing them in words (the pretraining pairs)."""

from __future__ import annotations

import math
import random

from vlpeft.data.world.render import Obj, Scene
from vlpeft.data.world.vocab import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLORS,
    COUNTS,
    HELD_OUT_PAIRS,
    PATTERNS,
    POSITION_PHRASES,
    PRETRAIN_STYLES,
    SHAPES,
    SIZE_SCALE,
    SIZES,
    STYLE_PHRASES,
)

POSITION_CENTERS = {
    "left": (0.3, 0.5),
    "right": (0.7, 0.5),
    "top": (0.5, 0.3),
    "bottom": (0.5, 0.7),
    "center": (0.5, 0.5),
}


def place(radius: float, position: str, rng: random.Random) -> tuple[float, float]:
    """A centre for an object of ``radius`` near ``position``, kept inside the frame."""
    px, py = POSITION_CENTERS[position]
    margin = radius + 0.02
    cx = min(max(px + rng.uniform(-0.06, 0.06), margin), 1 - margin)
    cy = min(max(py + rng.uniform(-0.06, 0.06), margin), 1 - margin)
    return cx, cy


def make_object(
    rng: random.Random,
    shape: str,
    color: str,
    pattern: str = "plain",
    size: str = "medium",
    position: str = "center",
) -> Obj:
    radius = SIZE_SCALE[size] * rng.uniform(0.9, 1.1)
    cx, cy = place(radius, position, rng)
    return Obj(shape, color, pattern, size, cx, cy, radius, rng.uniform(-0.5, 0.5))


def scatter(rng: random.Random, count: int, radius: float) -> list[tuple[float, float]]:
    """``count`` non-overlapping centres for objects of ``radius`` (rejection sampling)."""
    centers: list[tuple[float, float]] = []
    for _ in range(2000):
        if len(centers) == count:
            break
        c = (rng.uniform(radius + 0.02, 1 - radius - 0.02), rng.uniform(radius + 0.02, 1 - radius - 0.02))
        if all(math.dist(c, o) > 2.1 * radius for o in centers):
            centers.append(c)
    return centers


def group(rng: random.Random, count: int, shape: str, color: str, pattern: str = "plain") -> list[Obj]:
    """``count`` equal objects scattered over the frame (shrunk until they fit)."""
    radius = {1: 0.3, 2: 0.2, 3: 0.16, 4: 0.14, 5: 0.12, 6: 0.11}[count] * rng.uniform(0.9, 1.05)
    centers = scatter(rng, count, radius)
    while len(centers) < count:
        radius *= 0.9
        centers = scatter(rng, count, radius)
    return [Obj(shape, color, pattern, "small", x, y, radius, rng.uniform(-0.5, 0.5)) for x, y in centers]


def allowed_color(rng: random.Random, shape: str) -> str:
    """A colour whose pairing with ``shape`` pretraining may show (held-out pairs excluded)."""
    return rng.choice([c for c in COLORS if (c, shape) not in HELD_OUT_PAIRS])


def pretrain_scene(rng: random.Random) -> tuple[Scene, dict]:
    """A random pretraining scene and the facts its caption may mention."""
    style = rng.choice(PRETRAIN_STYLES)
    bg = rng.choice(BACKGROUNDS)
    kind = rng.random()
    shape = rng.choice(list(SHAPES))
    color = allowed_color(rng, shape)
    pattern = rng.choice(PATTERNS) if rng.random() < 0.6 else "plain"
    seed = rng.getrandbits(31)
    if kind < 0.08 and style not in ("sketch",):  # a full-frame texture
        obj = Obj("square", color, pattern if pattern != "plain" else rng.choice(PATTERNS[1:]))
        return Scene((obj,), bg, style, seed, texture=True), {"texture": obj}
    if kind < 0.28:  # several equal objects
        count = rng.randint(2, 6)
        objs = group(rng, count, shape, color, pattern)
        return Scene(tuple(objs), bg, style, seed), {"count": count, "obj": objs[0]}
    if kind < 0.38:  # two different objects
        other = rng.choice([s for s in SHAPES if s != shape])
        a = make_object(rng, shape, color, pattern, "small", "left")
        b = make_object(rng, other, allowed_color(rng, other), "plain", "small", "right")
        return Scene((a, b), bg, style, seed), {"pair": (a, b)}
    size, position = rng.choice(SIZES), rng.choice(list(POSITION_CENTERS))
    obj = make_object(rng, shape, color, pattern, size, position)
    return Scene((obj,), bg, style, seed), {"obj": obj, "position": position}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(rng: random.Random, obj: Obj, style: str, count: int = 1, p_color: float = 0.8) -> str:
    """E.g. ``a large striped red star`` / ``three blue rings``, with attributes randomly dropped."""
    words = []
    if count == 1 and obj.size != "medium" and rng.random() < 0.4:
        words.append(obj.size)
    if obj.pattern != "plain" and style not in ("sketch", "pointillism") and rng.random() < 0.7:
        words.append(obj.pattern)
    if rng.random() < p_color:
        words.append(obj.color)
    noun = SHAPES[obj.shape][0] if count > 1 else obj.shape
    phrase = " ".join([*words, noun])
    return f"{COUNTS[count - 1]} {phrase}" if count > 1 else f"{_article(phrase)} {phrase}"


def caption(scene: Scene, facts: dict, rng: random.Random) -> str:
    """A varied description of what is drawn."""
    style = scene.style
    if "texture" in facts:
        obj = facts["texture"]
        core = f"{obj.color} {obj.pattern} texture" if rng.random() < 0.6 else f"{obj.pattern} texture"
        return core if rng.random() < 0.5 else f"{rng.choice(STYLE_PHRASES[style])} of a {core}"
    if "count" in facts:
        count = facts["count"]
        if rng.random() < 0.25:
            core = f"{COUNTS[count - 1]} {rng.choice(('objects', 'shapes', 'things'))}"
        else:
            core = object_phrase(rng, facts["obj"], style, count)
    elif "pair" in facts:
        a, b = facts["pair"]
        core = f"{object_phrase(rng, a, style)} and {object_phrase(rng, b, style)}"
    else:
        core = object_phrase(rng, facts["obj"], style)
        if rng.random() < 0.3:
            core += " " + rng.choice(POSITION_PHRASES[facts["position"]])
    if style not in ("sketch",) and rng.random() < 0.2:
        core += " " + rng.choice(BACKGROUND_PHRASES[scene.background])
    if rng.random() < 0.7 or style != "flat":
        return f"{rng.choice(STYLE_PHRASES[style])} of {core}"
    return core


def pretrain_pair(seed: int) -> tuple[Scene, str]:
    """The pretraining pair number ``seed``: a scene and its caption."""
    rng = random.Random(seed)
    scene, facts = pretrain_scene(rng)
    return scene, caption(scene, facts, rng)
