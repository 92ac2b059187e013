"""Prompt templates: CoOp's per-dataset templates and OpenAI's ImageNet ensembles.

Sources: ``CUSTOM_TEMPLATES`` in KaiyangZhou/CoOp ``trainers/zsclip.py`` (also used for the
CoOp/CoCoOp prompt init); the 80 ImageNet templates from OpenAI's
``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` and their 7-template selection, as in
CoOp ``trainers/imagenet_templates.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlpeft.errors import ConfigError

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

IMAGENET_TEMPLATES_SELECT: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

# muzairkhattak/PromptSRC trainers/imagenet_templates.py: the first 60 of the 80 (PromptSRC's
# frozen text features average them).
PROMPTSRC_TEMPLATES: tuple[str, ...] = IMAGENET_TEMPLATES[:60]

DEFAULT_TEMPLATE = "a photo of a {}."

TEMPLATE_SETS = ("single", "ensemble", "imagenet80", "default")


def classname_for_prompt(name: str) -> str:
    """CoOp replaces underscores in class names before formatting prompts."""
    return name.replace("_", " ")


def format_prompts(template: str, classnames: Sequence[str]) -> list[str]:
    """``template.format(name)`` for each class name, with CoOp's underscore rule."""
    if "{}" not in template:
        raise ConfigError(f"Template {template!r} has no '{{}}' placeholder for the class name.")
    return [template.format(classname_for_prompt(c)) for c in classnames]


def default_ensemble(single: str) -> list[str]:
    """CoOp's ZeroshotCLIP2 ensemble: the 7 selected ImageNet templates plus the dataset's own.

    ImageNet itself uses the 7 alone (its spec passes its own ensemble).
    """
    return [*IMAGENET_TEMPLATES_SELECT, single]


def resolve_templates(
    kind: str, single: str, ensemble: Sequence[str] | None = None, default: str = "single"
) -> list[str]:
    """The template list for ``kind``: ``single`` (the dataset's own), ``ensemble``, ``imagenet80``,
    or ``default`` — the dataset's usual recipe (Tip-Adapter/APE/LP++: the 7-template ensemble on
    ImageNet, the single template elsewhere)."""
    if kind == "default":
        kind = default
    if kind == "single":
        return [single]
    if kind == "ensemble":
        return list(ensemble) if ensemble else default_ensemble(single)
    if kind == "imagenet80":
        return list(IMAGENET_TEMPLATES)
    raise ConfigError(f"Unknown template set '{kind}'. Choose one of {list(TEMPLATE_SETS)}.")
