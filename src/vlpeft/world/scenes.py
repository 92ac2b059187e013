"""Sampling scenes and describing them in words (the pretraining pairs)."""

from __future__ import annotations

import math
import random

from vlpeft.world.render import Obj, Scene
from vlpeft.world.vocab import (
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

# How often a caption names a shape, a pattern or a count exactly. Web alt-text is vague about
# what a specialist dataset asks ("a plane", not "a Boeing 737-300"; "a patterned shirt", not
# "crosshatched"; "some apples", not "five"), which is why CLIP's zero-shot accuracy on
# FGVC-Aircraft, DTD or CLEVR-count trails a few-shot probe of its own image features. Captions
# here do the same: the exact word is rare, a vague one ("a polygon", "patterned", "several") is
# common; the auxiliary head of ``pretrain`` still teaches the image tower what is drawn. A
# ``must`` attribute (contrast groups) is always named.
P_SHAPE_WORD = 0.3
P_PATTERN_WORD = 0.1
P_PATTERN_VAGUE = 0.35
P_COUNT_WORD = 0.1
VAGUE_SHAPES = ("shape", "figure", "object")
VAGUE_POLYGONS = ("polygon", "shape", "figure")  # for shapes drawn as regular polygons
VAGUE_PATTERNS = ("patterned", "textured", "decorated")
VAGUE_COUNTS = ("several", "some", "a group of")

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


def _say(rng: random.Random, exact: str, vague: tuple[str, ...], p: float) -> str:
    """``exact`` with probability ``p``, else one of the ``vague`` words."""
    return exact if rng.random() < p else rng.choice(vague)


def object_phrase(
    rng: random.Random,
    obj: Obj,
    style: str,
    count: int = 1,
    p_color: float = 0.8,
    p_pattern: float = P_PATTERN_WORD,
    say_one: bool = False,
    p_count: float = 1.0,
    p_shape: float = P_SHAPE_WORD,
) -> str:
    """E.g. ``a large striped red star`` / ``three blue rings`` / ``several patterned rings``, with
    attributes randomly dropped: the pattern is named with probability ``p_pattern`` (else
    ``P_PATTERN_VAGUE`` of the rest get a vague word), the count of a group with ``p_count`` (else
    a vague quantity), the shape with ``p_shape`` (else a vague noun: ``polygon``, ``shape`` …).

    ``say_one`` writes a single object as ``one red star`` (a counting contrast needs the number).
    """
    words = []
    if count == 1 and obj.size != "medium" and not say_one and rng.random() < 0.4:
        words.append(obj.size)
    if obj.pattern != "plain" and style not in ("sketch", "pointillism"):
        r = rng.random()
        if r < p_pattern:
            words.append(obj.pattern)
        elif r < p_pattern + (1 - p_pattern) * P_PATTERN_VAGUE:
            words.append(rng.choice(VAGUE_PATTERNS))
    if rng.random() < p_color:
        words.append(obj.color)
    polygon = isinstance(SHAPES[obj.shape][1], int) or obj.shape == "circle"
    vague = tuple(v + ("s" if count > 1 else "") for v in (VAGUE_POLYGONS if polygon else VAGUE_SHAPES))
    noun = _say(rng, SHAPES[obj.shape][0] if count > 1 else obj.shape, vague, p_shape)
    phrase = " ".join([*words, noun])
    if say_one:
        return f"{COUNTS[count - 1]} {phrase}"
    if count > 1:
        return f"{_say(rng, COUNTS[count - 1], VAGUE_COUNTS, p_count)} {phrase}"
    return f"{_article(phrase)} {phrase}"


def caption(scene: Scene, facts: dict, rng: random.Random) -> str:
    """A varied description of what is drawn (``facts["must"]`` names attributes it must say)."""
    style = scene.style
    must = facts.get("must", ())
    if "texture" in facts:
        obj = facts["texture"]
        with_color = "color" in must or ("pattern" not in must and rng.random() < 0.6)
        word = obj.pattern if "pattern" in must else _say(rng, obj.pattern, VAGUE_PATTERNS, P_PATTERN_WORD)
        core = f"{obj.color} {word} texture" if with_color else f"{word} texture"
        return core if rng.random() < 0.5 else f"{rng.choice(STYLE_PHRASES[style])} of a {core}"
    p_color = 1.0 if "color" in must else 0.8
    p_pattern = 1.0 if "pattern" in must else P_PATTERN_WORD
    p_count = 1.0 if "count" in must else P_COUNT_WORD
    p_shape = 1.0 if "shape" in must else P_SHAPE_WORD
    if "count" in facts:
        count = facts["count"]
        if "count" not in must and rng.random() < 0.25:
            amount = _say(rng, COUNTS[count - 1], VAGUE_COUNTS, p_count)
            core = f"{amount} {rng.choice(('objects', 'shapes', 'things'))}"
        elif "count" in must and rng.random() < 0.25:
            noun = ("object", "shape", "thing") if count == 1 else ("objects", "shapes", "things")
            core = f"{COUNTS[count - 1]} {rng.choice(noun)}"
        else:
            obj, say_one = facts["obj"], "count" in must
            core = object_phrase(rng, obj, style, count, p_color, p_pattern, say_one, p_count, p_shape)
    elif "pair" in facts:
        a, b = facts["pair"]
        core = f"{object_phrase(rng, a, style)} and {object_phrase(rng, b, style)}"
    else:
        core = object_phrase(rng, facts["obj"], style, 1, p_color, p_pattern, p_shape=p_shape)
        if rng.random() < 0.3:
            core += " " + rng.choice(POSITION_PHRASES[facts["position"]])
    if style not in ("sketch",) and rng.random() < 0.2:
        core += " " + rng.choice(BACKGROUND_PHRASES[scene.background])
    if rng.random() < 0.7 or style != "flat":
        return f"{rng.choice(STYLE_PHRASES[style])} of {core}"
    return core


# Optional (``pretrain --contrast-groups``): pairs in groups of GROUP consecutive seeds that share
# everything but one attribute (the shape, the count, the pattern or the colour), so that a
# contrastive batch holds hard negatives: telling "a red striped star" from "a red striped
# hexagon" drawn alike needs the shape, which colour or style alone never teaches. Batches of a
# multiple of GROUP consecutive pairs keep the groups whole; a share of groups are independent
# pairs. Measured at the default budget (2600 steps) it did not give a better image tower than
# plain pairs (see the README), so the shipped checkpoint is trained without it.
GROUP = 4
POLYGONS = ("triangle", "square", "pentagon", "hexagon", "heptagon", "octagon", "nonagon", "circle")
GROUP_KINDS = (("independent", 0.3), ("shape", 0.35), ("count", 0.15), ("pattern", 0.1), ("color", 0.1))


def group_kind(rng: random.Random) -> str:
    r, total = rng.random(), 0.0
    for kind, share in GROUP_KINDS:
        total += share
        if r < total:
            return kind
    return GROUP_KINDS[0][0]


def contrast_scene(shared: random.Random, member: int, rng: random.Random) -> tuple[Scene, dict] | None:
    """Member ``member`` of a contrast group drawn from the ``shared`` generator (None: independent)."""
    kind = group_kind(shared)
    if kind == "independent":
        return None
    style = shared.choice(PRETRAIN_STYLES)
    bg = shared.choice(BACKGROUNDS)
    pattern = shared.choice(PATTERNS) if shared.random() < 0.5 else "plain"
    seed = rng.getrandbits(31)
    if kind == "shape":
        pool = POLYGONS if shared.random() < 0.35 else tuple(SHAPES)
        color = shared.choice(list(COLORS))
        pool = [s for s in pool if (color, s) not in HELD_OUT_PAIRS]
        shape = shared.sample(pool, GROUP)[member]
        size = shared.choice(SIZES)
        position = rng.choice(list(POSITION_CENTERS))
        obj = make_object(rng, shape, color, pattern, size, position)
        return Scene((obj,), bg, style, seed), {"obj": obj, "position": position, "must": ("shape",)}
    shape = shared.choice(list(SHAPES))
    if kind == "count":
        count = shared.sample(range(1, len(COUNTS) + 1), GROUP)[member]
        objs = group(rng, count, shape, allowed_color(shared, shape), pattern)
        return Scene(tuple(objs), bg, style, seed), {"count": count, "obj": objs[0], "must": ("count",)}
    if kind == "pattern":
        style = shared.choice([s for s in PRETRAIN_STYLES if s != "sketch"])
        color = allowed_color(shared, shape)
        if shared.random() < 0.4:  # full-frame textures
            pattern = shared.sample(PATTERNS[1:], GROUP)[member]
            obj = Obj("square", color, pattern)
            return Scene((obj,), bg, style, seed, texture=True), {"texture": obj, "must": ("pattern",)}
        pattern = shared.sample(PATTERNS, GROUP)[member]
        obj = make_object(rng, shape, color, pattern, "large", "center")
        return Scene((obj,), bg, style, seed), {"obj": obj, "position": "center", "must": ("pattern",)}
    colors = [c for c in COLORS if (c, shape) not in HELD_OUT_PAIRS]
    color = shared.sample(colors, GROUP)[member]
    size, position = shared.choice(SIZES), rng.choice(list(POSITION_CENTERS))
    obj = make_object(rng, shape, color, pattern, size, position)
    return Scene((obj,), bg, style, seed), {"obj": obj, "position": position, "must": ("color",)}


def pretrain_pair(seed: int, contrast: bool = False) -> tuple[Scene, str]:
    """The pretraining pair number ``seed``: a scene and its caption.

    With ``contrast``, pair ``seed`` is member ``seed % GROUP`` of a contrast group (see GROUP).
    """
    rng = random.Random(seed)
    drawn = None
    if contrast:
        drawn = contrast_scene(random.Random(f"vlpeft-world-group-{seed // GROUP}"), seed % GROUP, rng)
    scene, facts = drawn if drawn is not None else pretrain_scene(rng)
    return scene, caption(scene, facts, rng)
