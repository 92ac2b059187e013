"""The concepts of vlpeft's procedural world: shapes, colours, patterns, sizes, counts, styles.

Every word here appears in pretraining captions; downstream datasets name their classes with
these words, sometimes in combinations the pretraining data never shows (held-out colour-shape
pairs) or drawn in a style it never shows (``HELD_OUT_STYLE``).
"""

from __future__ import annotations

# name -> (plural, number of polygon vertices or a drawer name)
SHAPES: dict[str, tuple[str, int | str]] = {
    "circle": ("circles", "circle"),
    "oval": ("ovals", "oval"),
    "square": ("squares", 4),
    "rectangle": ("rectangles", "rectangle"),
    "triangle": ("triangles", 3),
    "pentagon": ("pentagons", 5),
    "hexagon": ("hexagons", 6),
    "heptagon": ("heptagons", 7),
    "octagon": ("octagons", 8),
    "nonagon": ("nonagons", 9),
    "star": ("stars", "star"),
    "heart": ("hearts", "heart"),
    "cross": ("crosses", "cross"),
    "ring": ("rings", "ring"),
    "diamond": ("diamonds", "diamond"),
    "arrow": ("arrows", "arrow"),
    "moon": ("moons", "moon"),
    "trapezoid": ("trapezoids", "trapezoid"),
}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 215),
    "purple": (130, 50, 180),
    "pink": (240, 120, 180),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}

PATTERNS = ("plain", "striped", "dotted", "checkered", "zigzag", "grid", "wavy", "crosshatched")
SIZES = ("small", "medium", "large")
SIZE_SCALE = {"small": 0.16, "medium": 0.26, "large": 0.38}  # radius as a fraction of the image
COUNTS = ("one", "two", "three", "four", "five", "six")
POSITIONS = ("left", "right", "top", "bottom", "center")
BACKGROUNDS = ("plain", "gradient", "speckled", "paper")
STYLES = ("flat", "shaded", "sketch", "noisy", "blurry", "inverted", "pointillism")
HELD_OUT_STYLE = "pointillism"  # never drawn in pretraining
PRETRAIN_STYLES = tuple(s for s in STYLES if s != HELD_OUT_STYLE)

# Colour-shape pairs that pretraining never draws (WorldCompositions asks for them).
HELD_OUT_PAIRS = frozenset(
    {
        ("purple", "triangle"),
        ("green", "heart"),
        ("orange", "ring"),
        ("blue", "star"),
        ("pink", "square"),
        ("yellow", "cross"),
    }
)

STYLE_PHRASES = {
    "flat": ("a photo", "a picture", "an image", "a flat drawing"),
    "shaded": ("a rendering", "a 3d rendering", "a shaded picture", "a glossy render"),
    "sketch": ("a sketch", "a drawing", "a line drawing", "a pencil sketch"),
    "noisy": ("a noisy photo", "a grainy picture", "a low quality photo", "a jpeg corrupted photo"),
    "blurry": ("a blurry photo", "a blurred picture", "an out of focus photo", "a low resolution photo"),
    "inverted": (
        "an inverted photo",
        "a negative image",
        "a strange colored picture",
        "a weird palette picture",
    ),
    "pointillism": ("a pointillist painting",),
}
BACKGROUND_PHRASES = {
    "plain": ("on a plain background", "on a clean background"),
    "gradient": ("on a gradient background", "on a smooth background"),
    "speckled": ("on a speckled background", "on a noisy background"),
    "paper": ("on paper", "on a paper background"),
}
POSITION_PHRASES = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "center": ("in the center", "in the middle"),
}
