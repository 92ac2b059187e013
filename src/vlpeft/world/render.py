"""Drawing scenes of the procedural world with PIL, deterministically.

A :class:`Scene` (objects with shape, colour, pattern, size, position and rotation; a
background; a rendering style) is drawn at twice the output size and downsampled, so edges
are anti-aliased. All randomness comes from the scene's ``seed``: the same scene always gives
the same pixels.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from vlpeft.world.vocab import COLORS, SHAPES, SIZE_SCALE

SUPERSAMPLE = 2


@dataclass(frozen=True)
class Obj:
    """One object: ``cx``, ``cy`` in [0, 1] image coordinates, ``radius`` as a fraction of the side."""

    shape: str
    color: str
    pattern: str = "plain"
    size: str = "medium"
    cx: float = 0.5
    cy: float = 0.5
    radius: float = SIZE_SCALE["medium"]
    angle: float = 0.0


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str = "plain"
    style: str = "flat"
    seed: int = 0
    texture: bool = False  # the first object's pattern fills the whole frame
    extras: dict = field(default_factory=dict, compare=False)


# ---- geometry ------------------------------------------------------------------------------


def _regular(cx: float, cy: float, r: float, n: int, angle: float, start: float = -math.pi / 2):
    return [
        (
            cx + r * math.cos(start + angle + 2 * math.pi * k / n),
            cy + r * math.sin(start + angle + 2 * math.pi * k / n),
        )
        for k in range(n)
    ]


def _rotate(points, cx: float, cy: float, angle: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _star(cx, cy, r, angle, points=5, inner=0.45):
    return [
        (
            cx + rr * math.cos(-math.pi / 2 + angle + math.pi * k / points),
            cy + rr * math.sin(-math.pi / 2 + angle + math.pi * k / points),
        )
        for k, rr in ((k, r if k % 2 == 0 else r * inner) for k in range(2 * points))
    ]


def _heart(cx, cy, r, angle):
    pts = []
    for k in range(64):
        t = 2 * math.pi * k / 64
        x = 16 * math.sin(t) ** 3
        y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
        pts.append((cx + r * x / 17, cy + r * (y + 2) / 17))
    return _rotate(pts, cx, cy, angle)


def _box(cx, cy, w, h, angle):
    return _rotate([(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)], cx, cy, angle)


def _outline(obj: Obj, side: int):
    """Polygon(s) of ``obj`` in pixels: a list of (polygon, filled) pairs (False = cut out)."""
    cx, cy, r, a = obj.cx * side, obj.cy * side, obj.radius * side, obj.angle
    kind = SHAPES[obj.shape][1]
    if isinstance(kind, int):
        start = -math.pi / 2 if kind != 4 else -math.pi / 4
        return [(_regular(cx, cy, r, kind, a, start), True)]
    if kind == "circle":
        return [(_regular(cx, cy, r, 64, a), True)]
    if kind == "oval":
        return [
            (
                _rotate(
                    [
                        (cx + r * math.cos(t), cy + 0.58 * r * math.sin(t))
                        for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)
                    ],
                    cx,
                    cy,
                    a,
                ),
                True,
            )
        ]
    if kind == "rectangle":
        return [(_box(cx, cy, r, 0.55 * r, a), True)]
    if kind == "diamond":
        return [
            (_rotate([(cx, cy - r), (cx + 0.62 * r, cy), (cx, cy + r), (cx - 0.62 * r, cy)], cx, cy, a), True)
        ]
    if kind == "trapezoid":
        pts = [
            (cx - 0.5 * r, cy - 0.6 * r),
            (cx + 0.5 * r, cy - 0.6 * r),
            (cx + r, cy + 0.6 * r),
            (cx - r, cy + 0.6 * r),
        ]
        return [(_rotate(pts, cx, cy, a), True)]
    if kind == "star":
        return [(_star(cx, cy, r, a), True)]
    if kind == "heart":
        return [(_heart(cx, cy, r, a), True)]
    if kind == "cross":
        w = 0.34 * r
        pts = [
            (-w, -r),
            (w, -r),
            (w, -w),
            (r, -w),
            (r, w),
            (w, w),
            (w, r),
            (-w, r),
            (-w, w),
            (-r, w),
            (-r, -w),
            (-w, -w),
        ]
        return [(_rotate([(cx + x, cy + y) for x, y in pts], cx, cy, a), True)]
    if kind == "arrow":
        pts = [
            (-r, -0.25 * r),
            (0.1 * r, -0.25 * r),
            (0.1 * r, -0.65 * r),
            (r, 0),
            (0.1 * r, 0.65 * r),
            (0.1 * r, 0.25 * r),
            (-r, 0.25 * r),
        ]
        return [(_rotate([(cx + x, cy + y) for x, y in pts], cx, cy, a), True)]
    if kind == "ring":
        return [(_regular(cx, cy, r, 64, 0), True), (_regular(cx, cy, 0.55 * r, 64, 0), False)]
    if kind == "moon":
        ox, oy = 0.45 * r * math.cos(a), 0.45 * r * math.sin(a)
        return [(_regular(cx, cy, r, 64, 0), True), (_regular(cx + ox, cy + oy, 0.85 * r, 64, 0), False)]
    raise ValueError(f"no drawer for shape kind {kind!r}")


def shape_mask(obj: Obj, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for polygon, filled in _outline(obj, side):
        draw.polygon(polygon, fill=255 if filled else 0)
    return mask


# ---- colour, patterns, backgrounds -------------------------------------------------------


def jittered(color: str, rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in COLORS[color])  # type: ignore[return-value]


def _secondary(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A contrasting shade of the same hue for pattern marks (darker for light colours)."""
    light = sum(rgb) / 3 > 110
    return tuple(int(c * 0.45) if light else int(c + (255 - c) * 0.6) for c in rgb)  # type: ignore[return-value]


def pattern_mask(pattern: str, side: int, rng: random.Random) -> Image.Image | None:
    """Where the secondary colour goes (255), for a pattern; None for plain."""
    if pattern == "plain":
        return None
    period = rng.randint(7, 10) * SUPERSAMPLE
    phase = rng.random() * period
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    if pattern == "striped":
        marks = ((xx + yy + phase) % period) < period * 0.45
    elif pattern == "dotted":
        gx, gy = (xx + phase) % period - period / 2, (yy + phase) % period - period / 2
        marks = gx**2 + gy**2 < (period * 0.28) ** 2
    elif pattern == "checkered":
        marks = (((xx + phase) // period) + ((yy + phase) // period)) % 2 == 0
    elif pattern == "zigzag":
        wave = np.abs(((xx + phase) % period) - period / 2)
        marks = ((yy + wave) % period) < period * 0.4
    elif pattern == "grid":
        marks = (((xx + phase) % period) < period * 0.22) | (((yy + phase) % period) < period * 0.22)
    elif pattern == "wavy":
        marks = (
            (yy + 0.35 * period * np.sin((xx + phase) * 2 * math.pi / (1.7 * period))) % period
        ) < period * 0.45
    elif pattern == "crosshatched":
        marks = (((xx + yy + phase) % period) < period * 0.2) | (((xx - yy + phase) % period) < period * 0.2)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return Image.fromarray((marks * 255).astype(np.uint8), "L")


def _fill(obj: Obj, side: int, rng: random.Random) -> Image.Image:
    base = jittered(obj.color, rng)
    img = Image.new("RGB", (side, side), base)
    marks = pattern_mask(obj.pattern, side, rng)
    if marks is not None:
        img.paste(_secondary(base), (0, 0), marks)
    return img


def background(kind: str, side: int, rng: random.Random, dark: bool = False) -> Image.Image:
    level = rng.randint(20, 70) if dark else rng.randint(185, 240)
    tint = tuple(max(0, min(255, level + rng.randint(-25, 25))) for _ in range(3))
    if kind == "plain":
        return Image.new("RGB", (side, side), tint)
    if kind == "gradient":
        other = tuple(max(0, min(255, c + rng.randint(-90, 90))) for c in tint)
        t = np.linspace(0, 1, side, dtype=np.float32)[None, :, None]
        arr = (1 - t) * np.array(tint, np.float32) + t * np.array(other, np.float32)
        arr = np.repeat(arr, side, axis=0)
        if rng.random() < 0.5:
            arr = arr.transpose(1, 0, 2)
        return Image.fromarray(arr.astype(np.uint8))
    if kind == "speckled":
        np_rng = np.random.default_rng(rng.getrandbits(32))
        noise = np_rng.normal(0, 28, (side, side, 1)).astype(np.float32)
        arr = np.array(tint, np.float32) + np.repeat(noise, 3, axis=2)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if kind == "paper":
        np_rng = np.random.default_rng(rng.getrandbits(32))
        arr = np.array((236, 230, 214), np.float32) + np_rng.normal(0, 6, (side, side, 1)).astype(np.float32)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for y in range(rng.randint(4, 9) * SUPERSAMPLE, side, 11 * SUPERSAMPLE):
            draw.line([(0, y), (side, y)], fill=(200, 205, 225), width=1)
        return img
    raise ValueError(f"unknown background {kind!r}")


# ---- styles ----------------------------------------------------------------------------------


def _draw_flat(canvas: Image.Image, obj: Obj, side: int, rng: random.Random, shaded: bool) -> None:
    mask = shape_mask(obj, side)
    fill = _fill(obj, side, rng)
    if shaded:
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        cx, cy, r = (
            (obj.cx - 0.35 * obj.radius) * side,
            (obj.cy - 0.35 * obj.radius) * side,
            obj.radius * side,
        )
        light = np.clip(1.25 - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / (1.6 * r), 0.35, 1.25)
        arr = np.clip(np.asarray(fill, np.float32) * light[..., None], 0, 255).astype(np.uint8)
        fill = Image.fromarray(arr)
    canvas.paste(fill, (0, 0), mask)
    if shaded:
        edge = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(3 * SUPERSAMPLE + 1)))
        canvas.paste((25, 25, 25), (0, 0), edge)


def _draw_sketch(canvas: Image.Image, obj: Obj, side: int, rng: random.Random) -> None:
    """Pencil outline: the edge of the filled shape, stroked twice with small offsets."""
    mask = shape_mask(obj, side)
    width = rng.randint(1, 2) * SUPERSAMPLE
    edge = ImageChops.subtract(mask, mask.filter(ImageFilter.MinFilter(2 * width + 1)))
    color = tuple(int(c * 0.8) for c in jittered(obj.color, rng))
    for _stroke in range(2):
        dx, dy = rng.randint(-SUPERSAMPLE, SUPERSAMPLE), rng.randint(-SUPERSAMPLE, SUPERSAMPLE)
        canvas.paste(color, (0, 0), ImageChops.offset(edge, dx, dy))


def _draw_pointillism(canvas: Image.Image, obj: Obj, side: int, rng: random.Random) -> None:
    mask = np.asarray(shape_mask(obj, side)) > 0
    draw = ImageDraw.Draw(canvas)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    picks = np_rng.choice(len(xs), size=max(8, len(xs) // (9 * SUPERSAMPLE * SUPERSAMPLE)), replace=True)
    base = np.array(COLORS[obj.color], np.float32)
    dot = 1.6 * SUPERSAMPLE
    for i in picks:
        c = tuple(int(v) for v in np.clip(base + np_rng.normal(0, 30, 3), 0, 255))
        x, y = xs[i], ys[i]
        draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=c)


def _speckle_dots(canvas: Image.Image, side: int, rng: random.Random) -> None:
    """Pointillist background: a light canvas covered with pale dots."""
    draw = ImageDraw.Draw(canvas)
    np_rng = np.random.default_rng(rng.getrandbits(32))
    for _ in range(side * side // (40 * SUPERSAMPLE * SUPERSAMPLE)):
        x, y = np_rng.uniform(0, side, 2)
        g = int(np_rng.uniform(175, 235))
        c = (g + int(np_rng.integers(-15, 15)), g, g + int(np_rng.integers(-15, 15)))
        d = 1.2 * SUPERSAMPLE
        draw.ellipse([x - d, y - d, x + d, y + d], fill=c)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image."""
    rng = random.Random(scene.seed)
    side = size * SUPERSAMPLE
    style = scene.style
    if style == "sketch":
        canvas = background("paper", side, rng)
    elif style == "pointillism":
        canvas = Image.new("RGB", (side, side), (238, 236, 228))
        _speckle_dots(canvas, side, rng)
    else:
        canvas = background(scene.background, side, rng, dark=scene.extras.get("dark", rng.random() < 0.25))
    if scene.texture:
        obj = scene.objects[0]
        canvas = _fill(obj, side, rng)
    else:
        for obj in scene.objects:
            if style == "sketch":
                _draw_sketch(canvas, obj, side, rng)
            elif style == "pointillism":
                _draw_pointillism(canvas, obj, side, rng)
            else:
                _draw_flat(canvas, obj, side, rng, shaded=style == "shaded")
    img = canvas.resize((size, size), Image.Resampling.LANCZOS)
    return _post(img, style, rng)


def _post(img: Image.Image, style: str, rng: random.Random) -> Image.Image:
    if style == "noisy":
        np_rng = np.random.default_rng(rng.getrandbits(32))
        arr = np.asarray(img, np.float32) + np_rng.normal(0, rng.uniform(22, 38), (*img.size[::-1], 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if style == "blurry":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 1.8)))
    if style == "inverted":
        inverted = ImageOps.invert(img)
        return inverted if rng.random() < 0.5 else Image.merge("RGB", inverted.split()[::-1])
    return img
