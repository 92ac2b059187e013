"""Your own data: a folder of class folders, or a CSV of ``path,label[,split]``.

Splits: given ones are used as they are. Without a val split, 20% of each class's train
images become val (CoOp's ``split_trainval``); without any split, each class is split
50/20/30 into train/val/test (CoOp's ``read_and_split_data``). Both use a fixed seed on the
sorted file list, so the same folder always gives the same split.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterable
from pathlib import Path

from vlpeft.data.base import SPLITS, DatasetSpec, Datum, register_dataset
from vlpeft.data.coop import listdir_visible
from vlpeft.data.images import IMAGE_EXTENSIONS, is_image_file
from vlpeft.errors import DatasetError

SPLIT_SEED = 0


def split_fractions(
    items: list[tuple[str, str]], fractions: tuple[float, ...], rng: random.Random
) -> list[list[tuple[str, str]]]:
    """Per class (in order of first appearance), shuffle and cut into len(fractions)+1 parts."""
    by_class: dict[str, list[tuple[str, str]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    parts: list[list[tuple[str, str]]] = [[] for _ in range(len(fractions) + 1)]
    for group in by_class.values():
        group = sorted(group)
        rng.shuffle(group)
        start = 0
        for k, frac in enumerate(fractions):
            n = round(len(group) * frac)
            parts[k].extend(group[start : start + n])
            start += n
        parts[-1].extend(group[start:])
    return parts


def complete_splits(given: dict[str, list[tuple[str, str]]], source: str) -> dict[str, list[tuple[str, str]]]:
    """Fill in missing splits: none given -> 50/20/30; no val -> 20% of train."""
    rng = random.Random(SPLIT_SEED)
    if set(given) == {"all"}:
        train, val, test = split_fractions(given["all"], (0.5, 0.2), rng)
        return {"train": train, "val": val, "test": test}
    if "test" not in given:
        raise DatasetError(
            f"{source}: has a train split but no test split. Add test images (or give no splits)."
        )
    if "train" not in given:
        given["train"] = []
    if "val" not in given and given["train"]:
        val, train = split_fractions(given["train"], (0.2,), rng)
        given = {**given, "train": train, "val": val}
    return given


def build_items(splits: dict[str, list[tuple[str, str]]], base: Path, source: str) -> tuple[list[str], dict]:
    """Class names (sorted) and :class:`Datum` lists from (relative path, class name) pairs."""
    classnames = sorted({name for items in splits.values() for _, name in items})
    if not classnames:
        raise DatasetError(f"{source}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)}).")
    unseen = sorted({n for _, n in splits.get("test", [])} - {n for _, n in splits.get("train", [])})
    if splits.get("train") and unseen:
        raise DatasetError(
            f"{source}: test classes {unseen[:5]} have no train images; every class needs some."
        )
    label_of = {c: i for i, c in enumerate(classnames)}
    out = {s: [Datum(str(base / rel), label_of[n], n, rel) for rel, n in splits.get(s, [])] for s in SPLITS}
    return classnames, out


@register_dataset
class ImageFolder(DatasetSpec):
    """``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``; labels = sorted class names."""

    name = "imagefolder"
    aliases = ("folder",)
    layout = (
        "ROOT/\n|-- train/  (optional split folders: train/, val/, test/)\n"
        "|   |-- <class name>/\n|   |   |-- image.jpg ...\n"
        "or, without splits (split 50/20/30 per class):\nROOT/\n|-- <class name>/\n|   |-- image.jpg ..."
    )
    description = "your own images: one folder per class"

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        split_dirs = [s for s in SPLITS if (ddir / s).is_dir()]
        if split_dirs:
            given = {s: self._scan(ddir, s) for s in split_dirs}
        else:
            given = {"all": self._scan(ddir, "")}
        return build_items(complete_splits(given, f"Image folder '{ddir}'"), ddir, f"Image folder '{ddir}'")

    def _scan(self, ddir: Path, split: str) -> list[tuple[str, str]]:
        base = ddir / split if split else ddir
        items = []
        for cls in listdir_visible(base):
            if (base / cls).is_dir():
                prefix = f"{split}/{cls}" if split else cls
                items += [(f"{prefix}/{n}", cls) for n in listdir_visible(base / cls) if is_image_file(n)]
        return items


@register_dataset
class CSVDataset(DatasetSpec):
    """A CSV file with a header ``path,label`` and optionally ``split``; paths relative to the CSV."""

    name = "csv"
    layout = (
        "ROOT is the CSV file itself, e.g. data.csv:\n  path,label,split\n  images/cat1.jpg,cat,train\n"
        "  images/dog7.jpg,dog,test\n(label = class name; split optional: train/val/test)"
    )
    description = "your own images listed in a CSV file (path,label[,split])"

    def locate(self, root) -> Path:
        path = Path(root).expanduser()
        if not path.is_file():
            raise DatasetError(f"CSV file '{path}' not found. {self.expected()}")
        return path.resolve()

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        given = _group_rows(self._rows(ddir), ddir)
        return build_items(complete_splits(given, f"CSV '{ddir}'"), ddir.parent, f"CSV '{ddir}'")

    def _rows(self, path: Path) -> list[dict[str, str]]:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            if "path" not in header or "label" not in header:
                raise DatasetError(
                    f"CSV '{path}' needs a header with 'path' and 'label' columns, got {header}."
                )
            return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _group_rows(rows: Iterable[dict[str, str]], path: Path) -> dict[str, list[tuple[str, str]]]:
    given: dict[str, list[tuple[str, str]]] = {}
    for n, row in enumerate(rows, start=2):
        split = row.get("split") or "all"
        if split not in (*SPLITS, "all"):
            raise DatasetError(f"CSV '{path}' line {n}: split '{split}' is not one of {list(SPLITS)}.")
        if not row["path"] or not row["label"]:
            raise DatasetError(f"CSV '{path}' line {n}: empty path or label.")
        given.setdefault(split, []).append((row["path"], row["label"]))
    if "all" in given and len(given) > 1:
        raise DatasetError(
            f"CSV '{path}': some rows have a split and some do not; give every row a split or none."
        )
    return given
