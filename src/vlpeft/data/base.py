"""Datasets: the items of a split, the class names, the templates, and the spec that reads them.

A :class:`DatasetSpec` knows one on-disk layout (CoOp's, for the standard datasets) and reads
it into a :class:`Dataset`: immutable lists of :class:`Datum` for train/val/test, the class
names indexed by label, and the dataset's prompt templates. Few-shot sampling and base/new
subsampling return new ``Dataset`` objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

from vlpeft.data import fewshot as _fewshot
from vlpeft.data.datum import Datum
from vlpeft.data.templates import DEFAULT_TEMPLATE, resolve_templates
from vlpeft.errors import ConfigError, DatasetError
from vlpeft.registry import Registry

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Dataset:
    """A dataset as loaded: class names by label, the three splits, and prompt templates."""

    name: str
    classnames: tuple[str, ...]
    train: tuple[Datum, ...]
    val: tuple[Datum, ...]
    test: tuple[Datum, ...]
    template: str = DEFAULT_TEMPLATE
    ensemble: tuple[str, ...] | None = None
    default_templates: str = "single"
    root: str = ""
    shots: int | None = None
    seed: int | None = None
    subsample: str = "all"
    test_only: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> tuple[Datum, ...]:
        if name not in SPLITS:
            raise ConfigError(f"Unknown split '{name}'. Choose one of {list(SPLITS)}.")
        items = getattr(self, name)
        if not items:
            raise DatasetError(f"Dataset '{self.name}' has no '{name}' split{self._why_empty(name)}.")
        return items

    def _why_empty(self, name: str) -> str:
        if self.test_only and name != "test":
            return f": {self.name} is a test-only dataset; train on its source dataset and evaluate here"
        return ""

    def templates(self, kind: str = "single") -> list[str]:
        """Templates of ``kind`` (single/ensemble/imagenet80/default) for this dataset."""
        return resolve_templates(kind, self.template, self.ensemble, self.default_templates)

    def fewshot(self, shots: int, seed: int) -> Dataset:
        """CoOp's K-shot train and min(K, 4)-shot val; test is unchanged."""
        if self.test_only:
            raise DatasetError(
                f"{self.name} is a test-only dataset; few-shot training data comes from its source."
            )
        if self.shots is not None:
            raise ConfigError(f"Dataset '{self.name}' is already a {self.shots}-shot subset.")
        train, val = _fewshot.fewshot_train_val(self.train, self.val, shots, seed)
        return replace(self, train=tuple(train), val=tuple(val), shots=shots, seed=seed)

    def subsample_classes(self, which: str) -> Dataset:
        """Base (first half of the labels) or new (second half) classes, relabelled from 0."""
        selected = _fewshot.subsample_labels(self.num_classes, which)
        if which == "all":
            return self
        if self.subsample != "all":
            raise ConfigError(f"Dataset '{self.name}' is already subsampled to '{self.subsample}' classes.")
        splits = {s: tuple(_fewshot.relabel(getattr(self, s), selected)) for s in SPLITS}
        names = tuple(self.classnames[i] for i in selected)
        return replace(self, classnames=names, subsample=which, **splits)

    def describe(self) -> dict:
        """A JSON-friendly summary for run records."""
        return {
            "name": self.name,
            "root": self.root,
            "num_classes": self.num_classes,
            "shots": self.shots,
            "seed": self.seed,
            "subsample": self.subsample,
            "sizes": {s: len(getattr(self, s)) for s in SPLITS},
        }


@dataclass
class CheckReport:
    """What `vlpeft datasets check` found: sizes, problems, and the layout expected."""

    dataset: str
    root: str
    dataset_dir: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    num_classes: int | None = None
    missing: dict[str, list[str]] = field(default_factory=dict)
    corrupt: dict[str, list[str]] = field(default_factory=dict)  # with --verify-images: undecodable files
    problems: list[str] = field(default_factory=list)
    layout: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and not any(self.missing.values()) and not any(self.corrupt.values())


class DatasetSpec:
    """How one dataset lies on disk. Subclasses set the class attributes and implement ``read``."""

    name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    dataset_dir: ClassVar[str] = ""  # folder under the data root ("" = the root itself)
    template: ClassVar[str] = DEFAULT_TEMPLATE
    ensemble: ClassVar[tuple[str, ...] | None] = None
    default_templates: ClassVar[str] = "single"  # what "--templates default" means for this dataset
    test_only: ClassVar[bool] = False
    layout: ClassVar[str] = ""  # the expected directory tree, shown by `check` and in errors
    source: ClassVar[str] = ""  # where to get the data
    description: ClassVar[str] = ""

    def locate(self, root: str | os.PathLike) -> Path:
        """The dataset directory: ``root/dataset_dir``, or ``root`` itself if it is that folder."""
        root = Path(root).expanduser()
        if not root.exists():
            raise DatasetError(f"Data root '{root}' does not exist. {self.expected()}")
        candidate = root / self.dataset_dir if self.dataset_dir else root
        if candidate.is_dir():
            return candidate.resolve()
        if self.dataset_dir and root.name == self.dataset_dir:
            return root.resolve()
        raise DatasetError(f"No '{self.dataset_dir}/' folder under '{root}'. {self.expected()}")

    def expected(self) -> str:
        text = f"{self.name} expects this layout under --root:\n{self.layout}"
        return text + (f"\nGet the data: {self.source}" if self.source else "")

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        """Class names by label and the items of each split, read from the dataset directory."""
        raise NotImplementedError(f"{type(self).__name__} must implement read(ddir)")

    def load(self, root: str | os.PathLike, check_files: bool = True) -> Dataset:
        """Read and validate the dataset under ``root``; missing image files are an error."""
        ddir = self.locate(root)
        classnames, splits = self.read(ddir)
        if check_files:
            self._raise_if_missing(ddir, splits)
        return Dataset(
            name=self.name,
            classnames=tuple(classnames),
            **{s: tuple(splits.get(s, ())) for s in SPLITS},
            template=self.template,
            ensemble=self.ensemble,
            default_templates=self.default_templates,
            root=str(ddir),
            test_only=self.test_only,
        )

    def check(self, root: str | os.PathLike, verify_images: bool = False) -> CheckReport:
        """Everything wrong with the dataset under ``root``, without raising; ``verify_images`` decodes
        every listed file that exists (truncated or non-image files are otherwise found only in training)."""
        report = CheckReport(dataset=self.name, root=str(root), layout=self.layout)
        try:
            ddir = self.locate(root)
            report.dataset_dir = str(ddir)
            classnames, splits = self.read(ddir)
        except DatasetError as err:
            report.problems.append(str(err))
            return report
        report.num_classes = len(classnames)
        report.sizes = {s: len(v) for s, v in splits.items()}
        report.missing = {s: missing_files(v) for s, v in splits.items()}
        if verify_images:
            report.corrupt = undecodable_files(splits, set().union(*report.missing.values()))
        return report

    def _raise_if_missing(self, ddir: Path, splits: dict[str, list[Datum]]) -> None:
        missing = [p for items in splits.values() for p in missing_files(items)]
        if missing:
            shown = "\n  ".join(missing[:5])
            total = sum(len(v) for v in splits.values())
            raise DatasetError(
                f"{len(missing)} of {total} image files of {self.name} are missing under '{ddir}', e.g.:\n"
                f"  {shown}\nRun `vlpeft datasets check {self.name} --root ...` for the full list. "
                f"{self.expected()}"
            )


def undecodable_files(splits: dict[str, list[Datum]], missing: set[str]) -> dict[str, list[str]]:
    """Per split, the listed files that exist but do not decode as images (with a progress bar)."""
    from vlpeft.data.images import load_image
    from vlpeft.utils import track

    items = [(s, d) for s, v in splits.items() for d in v if d.impath not in missing]
    bad: dict[str, list[str]] = {s: [] for s in splits}
    for split, item in track(items, "Decoding images"):
        try:
            load_image(item.impath)
        except DatasetError:
            bad[split].append(item.relpath or item.impath)
    return bad


def missing_files(items: Sequence[Datum]) -> list[str]:
    return [item.impath for item in items if not os.path.isfile(item.impath)]


def classnames_from_items(source: str, splits: dict[str, list[Datum]]) -> list[str]:
    """Class names by label, checking that every label has one name and labels are 0..C-1."""
    names: dict[int, tuple[str, str, str]] = {}
    for split, items in splits.items():
        for item in items:
            seen = names.setdefault(item.label, (item.classname, split, item.relpath))
            if seen[0] != item.classname:
                raise DatasetError(
                    f"{source}: label {item.label} is named both '{seen[0]}' ({seen[1]} item '{seen[2]}') "
                    f"and '{item.classname}' ({split} item '{item.relpath}'). Each label needs exactly one "
                    "class name: fix the file or re-download the published split."
                )
    if not names:
        raise DatasetError(f"{source}: no items found.")
    labels = sorted(names)
    if labels != list(range(len(labels))):
        gaps = sorted(set(range(labels[-1] + 1)) - set(labels))[:10]
        raise DatasetError(
            f"{source}: labels must be 0..{len(labels) - 1} with none missing; labels {gaps} have no items "
            f"(min {labels[0]}, max {labels[-1]}). Fix the file or re-download the published split."
        )
    warn_duplicate_names(source, [names[i][0] for i in labels])
    return [names[i][0] for i in labels]


def warn_duplicate_names(source: str, classnames: Sequence[str]) -> None:
    """Two labels with one name get identical prompts: allowed (some published lists have them), but said."""
    seen: dict[str, int] = {}
    for label, name in enumerate(classnames):
        if name in seen:
            logger.warning(
                "%s: labels %d and %d share the class name '%s'; text prompts cannot tell them apart.",
                source,
                seen[name],
                label,
                name,
            )
        seen[name] = label


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(cls: type[DatasetSpec]) -> type[DatasetSpec]:
    """Class decorator: register an instance of the spec under its ``name`` and ``aliases``."""
    DATASETS.register(cls.name, cls(), cls.aliases)
    return cls


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def load_dataset(
    name: str,
    root: str | os.PathLike,
    shots: int | None = None,
    seed: int = 1,
    subsample: str = "all",
) -> Dataset:
    """Load ``name`` from ``root``; optionally K-shot (CoOp sampling) and base/new subsampled.

    The order is CoOp's: few-shot sampling on all classes first, then class subsampling.
    """
    dataset = get_dataset_spec(name).load(root)
    if shots is not None and shots > 0:
        dataset = dataset.fewshot(shots, seed)
    return dataset.subsample_classes(subsample)
