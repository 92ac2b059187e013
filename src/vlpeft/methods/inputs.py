"""What a method learns from: class text, cached features (feature heads) or images
(methods that see pixels), and the validation policies.

A method never sees test data: the runner hands it the train split and a validation split only
when the run's validation policy allows one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlpeft.data.base import Datum
from vlpeft.data.templates import format_prompts
from vlpeft.data.transforms import AugmentSpec
from vlpeft.features import FeatureSet

VAL_POLICIES = ("none", "fewshot", "full")


class ClassText:
    """Class-name prompts and their (cached) raw text embeddings, by template set."""

    def __init__(
        self,
        classnames: Sequence[str],
        templates: Callable[[str], list[str]],
        encode: Callable[[list[str]], torch.Tensor],
        dataset_template: str = "a photo of a {}.",
    ):
        self.classnames = list(classnames)
        self._templates = templates
        self._encode = encode
        self.dataset_template = dataset_template

    def templates(self, kind: str, add_dataset_template: bool = False) -> list[str]:
        """Templates of ``kind``; with ``add_dataset_template`` the dataset's own is appended if absent."""
        out = list(self._templates(kind))
        if add_dataset_template and self.dataset_template not in out:
            out.append(self.dataset_template)
        return out

    def raw(self, kind: str, add_dataset_template: bool = False) -> torch.Tensor:
        """(T, C, D) unnormalised embeddings, template-major."""
        templates = self.templates(kind, add_dataset_template)
        prompts = [p for t in templates for p in format_prompts(t, self.classnames)]
        return self._encode(prompts).float().reshape(len(templates), len(self.classnames), -1)

    def weights(
        self,
        kind: str = "default",
        add_dataset_template: bool = False,
        extra: Mapping[str, list[str]] | None = None,
    ) -> torch.Tensor:
        """(C, D) classifier: normalise each prompt's embedding, average per class, normalise (CLIP/CoOp/Tip).

        ``extra`` adds per-class prompts (e.g. CuPL's generated descriptions), averaged together
        with the template prompts.
        """
        per_template = F.normalize(self.raw(kind, add_dataset_template), dim=-1)  # (T, C, D)
        if not extra:
            return F.normalize(per_template.mean(0), dim=-1)
        sums, counts = per_template.sum(0), torch.full((len(self.classnames),), float(len(per_template)))
        for c, name in enumerate(self.classnames):
            prompts = extra.get(name, [])
            if prompts:
                sums[c] += F.normalize(self._encode(list(prompts)).float(), dim=-1).sum(0)
                counts[c] += len(prompts)
        return F.normalize(sums / counts[:, None], dim=-1)

    def template_weights(self, templates: Sequence[str]) -> torch.Tensor:
        """(C, D) classifier of the given templates (a method's own, e.g. ProGrad's teacher)."""
        prompts = [p for t in templates for p in format_prompts(t, self.classnames)]
        raw = self._encode(prompts).float().reshape(len(templates), len(self.classnames), -1)
        return F.normalize(F.normalize(raw, dim=-1).mean(0), dim=-1)

    def raw_mean(self, kind: str = "default", add_dataset_template: bool = False) -> torch.Tensor:
        """(C, D) average of the *unnormalised* template embeddings (TaskRes, CLAP)."""
        return self.raw(kind, add_dataset_template).mean(0)


@dataclass
class HeadData:
    """Everything a head may learn from: train features (V views), validation per policy, text."""

    train: FeatureSet
    val: FeatureSet | None
    text: ClassText
    num_classes: int
    logit_scale: float = 100.0
    logit_bias: float = 0.0
    seed: int = 1
    dataset: str = ""
    shots: int | None = None


@dataclass(frozen=True)
class TrainViews:
    """The train features a head asks for: ``num_views`` views of ``augment`` (+ the eval view first)."""

    augment: AugmentSpec | None = None
    num_views: int = 0
    include_eval: bool = True
    tokens: bool = False


@dataclass
class PixelData:
    """What a method that prompts the image encoder learns from: images, not cached features."""

    train: Sequence[Datum]
    val: Sequence[Datum]
    text: ClassText
    num_classes: int
    logit_scale: float = 100.0
    seed: int = 1
    dataset: str = ""
    shots: int | None = None
