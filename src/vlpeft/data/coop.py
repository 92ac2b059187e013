"""The 11 standard few-shot datasets and the ImageNet family, in CoOp's exact layouts.

Folder names, image sub-folders, split files and templates follow KaiyangZhou/CoOp
``datasets/*.py``, ``DATASETS.md`` and ``trainers/zsclip.py`` (CUSTOM_TEMPLATES), so a data
folder prepared for any CoOp-derived code base works unchanged. Deviation: CoOp lists
ImageNet's image files with ``os.listdir`` (file-system order, so its few-shot samples
differ between machines); we sort them, which makes sampling reproducible everywhere.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar

from vlpeft.data.base import DatasetSpec, Datum, classnames_from_items, register_dataset, warn_duplicate_names
from vlpeft.data.templates import IMAGENET_TEMPLATES_SELECT
from vlpeft.errors import DatasetError
from vlpeft.io import write_json_atomic

COOP_DATASETS_DOC = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


def listdir_visible(path: Path) -> list[str]:
    """Sorted names in ``path`` that do not start with a dot."""
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def read_split_file(path: Path, image_dir: Path) -> dict[str, list[Datum]]:
    """Read a CoOp ``split_zhou_*.json``: ``{"train"|"val"|"test": [[relpath, label, classname], ...]}``."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(f"Split file '{path}' is not valid JSON ({err}). Re-download it.") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(s), list) for s in ("train", "val", "test")):
        raise DatasetError(
            f"Split file '{path}' must be a JSON object with 'train', 'val' and 'test' lists of "
            "[image path, label, class name] entries, as CoOp publishes them. Re-download it."
        )
    return {
        split: [_split_entry(path, split, i, e, image_dir) for i, e in enumerate(raw[split])] for split in raw
    }


def _split_entry(path: Path, split: str, index: int, entry: object, image_dir: Path) -> Datum:
    ok = (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[2], str)
    )
    if not ok or isinstance(entry[1], bool) or not isinstance(entry[1], int):
        raise DatasetError(
            f"Split file '{path}', {split}[{index}] is {entry!r}; "
            "expected [image path, integer label, class name]."
        )
    rel, label, name = entry
    return Datum(impath=str(image_dir / rel), label=label, classname=name, relpath=rel)


class SplitFileDataset(DatasetSpec):
    """A dataset described by a CoOp split file whose paths are relative to ``image_subdir``."""

    image_subdir: ClassVar[str] = "images"
    split_file: ClassVar[str] = ""
    # For datasets CoOp can split from raw class folders (DTD.read_and_split_data): the folders
    # CoOp ignores and the class names it rewrites.
    folder_split: ClassVar[bool] = False
    ignored_folders: ClassVar[tuple[str, ...]] = ()
    renamed_classes: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        path = ddir / self.split_file
        if not path.is_file():
            raise DatasetError(self._missing_split_message(path))
        splits = read_split_file(path, ddir / self.image_subdir)
        return classnames_from_items(f"Split file '{path}'", splits), splits

    def _missing_split_message(self, path: Path) -> str:
        text = (
            f"Split file '{path}' not found. Download {self.split_file} (links in {COOP_DATASETS_DOC}) "
            f"into '{path.parent}' to get the published train/val/test split used by CoOp-derived papers."
        )
        if self.folder_split:
            text += (
                f" Or create a new split from the class folders with `vlpeft datasets make-split {self.name} "
                "--root ...` (numbers will not be comparable with published ones)."
            )
        return f"{text}\n{self.expected()}"

    def make_split(self, root: str | os.PathLike, seed: int = 1, overwrite: bool = False) -> Path:
        """Split the raw class folders 50/20/30 per class as CoOp's ``read_and_split_data`` does.

        Categories sorted, ``ignored_folders`` dropped, ``renamed_classes`` applied; images are
        sorted before the per-class shuffle (CoOp shuffles ``os.listdir`` order, which is not
        reproducible). Writes the split file atomically.
        """
        if not self.folder_split:
            raise DatasetError(
                f"{self.name} cannot be split from raw folders here; download {self.split_file} "
                f"(links in {COOP_DATASETS_DOC})."
            )
        ddir = self.locate(root)
        path = ddir / self.split_file
        if path.exists() and not overwrite:
            raise DatasetError(f"'{path}' already exists; pass --overwrite to replace it.")
        write_json_atomic(path, self._folder_split(ddir / self.image_subdir, random.Random(seed)))
        return path

    def _folder_split(self, image_dir: Path, rng: random.Random) -> dict[str, list[list]]:
        if not image_dir.is_dir():
            raise DatasetError(f"Image folder '{image_dir}' not found.\n{self.expected()}")
        categories = [c for c in listdir_visible(image_dir) if c not in self.ignored_folders]
        out: dict[str, list[list]] = {"train": [], "val": [], "test": []}
        for label, category in enumerate(categories):
            images = [f"{category}/{n}" for n in listdir_visible(image_dir / category)]
            rng.shuffle(images)
            n_train, n_val = round(len(images) * 0.5), round(len(images) * 0.2)
            name = self.renamed_classes.get(category, category)
            parts = {"train": images[:n_train], "val": images[n_train : n_train + n_val]}
            parts["test"] = images[n_train + n_val :]
            for split, items in parts.items():
                out[split].extend([rel, label, name] for rel in items)
        return out


def _split_layout(dataset_dir: str, image_subdir: str, split_file: str, extra: str = "") -> str:
    images = (
        f"|-- {image_subdir}/\n" if image_subdir else "|-- (image folders, as listed in the split file)\n"
    )
    return f"{dataset_dir}/\n{images}{extra}|-- {split_file}"


@register_dataset
class OxfordPets(SplitFileDataset):
    name = "OxfordPets"
    aliases = ("pets",)
    dataset_dir = "oxford_pets"
    split_file = "split_zhou_OxfordPets.json"
    template = "a photo of a {}, a type of pet."
    layout = _split_layout("oxford_pets", "images", "split_zhou_OxfordPets.json", "|-- annotations/\n")
    source = "https://www.robots.ox.ac.uk/~vgg/data/pets/"
    description = "37 cat and dog breeds"


@register_dataset
class Caltech101(SplitFileDataset):
    name = "Caltech101"
    dataset_dir = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    folder_split = True
    ignored_folders = ("BACKGROUND_Google", "Faces_easy")
    renamed_classes = MappingProxyType(
        {
            "airplanes": "airplane",
            "Faces": "face",
            "Leopards": "leopard",
            "Motorbikes": "motorbike",
        }
    )
    layout = _split_layout("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json")
    source = "https://data.caltech.edu/records/mzrjq-6wc02"
    description = "100 object categories (background and Faces_easy removed)"


@register_dataset
class StanfordCars(SplitFileDataset):
    name = "StanfordCars"
    aliases = ("cars",)
    dataset_dir = "stanford_cars"
    image_subdir = ""
    split_file = "split_zhou_StanfordCars.json"
    layout = (
        "stanford_cars/\n|-- cars_train/\n|-- cars_test/\n|-- devkit/\n"
        "|-- cars_test_annos_withlabels.mat\n|-- split_zhou_StanfordCars.json"
    )
    source = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
    description = "196 car models"


@register_dataset
class OxfordFlowers(SplitFileDataset):
    name = "OxfordFlowers"
    aliases = ("flowers102", "flowers")
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    template = "a photo of a {}, a type of flower."
    layout = _split_layout(
        "oxford_flowers",
        "jpg",
        "split_zhou_OxfordFlowers.json",
        "|-- cat_to_name.json\n|-- imagelabels.mat\n",
    )
    source = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
    description = "102 flower species"


@register_dataset
class Food101(SplitFileDataset):
    name = "Food101"
    dataset_dir = "food-101"
    split_file = "split_zhou_Food101.json"
    folder_split = True
    template = "a photo of {}, a type of food."
    layout = _split_layout("food-101", "images", "split_zhou_Food101.json", "|-- meta/\n")
    source = "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/"
    description = "101 dishes"


@register_dataset
class SUN397(SplitFileDataset):
    name = "SUN397"
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    layout = _split_layout("sun397", "SUN397", "split_zhou_SUN397.json")
    source = "https://vision.princeton.edu/projects/2010/SUN/"
    description = "397 scene categories"


@register_dataset
class DescribableTextures(SplitFileDataset):
    name = "DescribableTextures"
    aliases = ("dtd",)
    dataset_dir = "dtd"
    split_file = "split_zhou_DescribableTextures.json"
    folder_split = True
    template = "{} texture."
    layout = _split_layout("dtd", "images", "split_zhou_DescribableTextures.json", "|-- imdb/\n|-- labels/\n")
    source = "https://www.robots.ox.ac.uk/~vgg/data/dtd/"
    description = "47 texture categories"


@register_dataset
class EuroSAT(SplitFileDataset):
    name = "EuroSAT"
    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    folder_split = True
    renamed_classes = MappingProxyType(
        {
            "AnnualCrop": "Annual Crop Land",
            "Forest": "Forest",
            "HerbaceousVegetation": "Herbaceous Vegetation Land",
            "Highway": "Highway or Road",
            "Industrial": "Industrial Buildings",
            "Pasture": "Pasture Land",
            "PermanentCrop": "Permanent Crop Land",
            "Residential": "Residential Buildings",
            "River": "River",
            "SeaLake": "Sea or Lake",
        }
    )
    template = "a centered satellite photo of {}."
    layout = _split_layout("eurosat", "2750", "split_zhou_EuroSAT.json")
    source = "https://github.com/phelber/EuroSAT"
    description = "10 land-use classes from Sentinel-2 satellite images"


@register_dataset
class UCF101(SplitFileDataset):
    name = "UCF101"
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    template = "a photo of a person doing {}."
    layout = _split_layout("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json")
    source = COOP_DATASETS_DOC + " (UCF-101-midframes.zip)"
    description = "101 human actions (middle video frames)"


@register_dataset
class FGVCAircraft(DatasetSpec):
    """FGVC-Aircraft variants, read from the dataset's own text files as CoOp does."""

    name = "FGVCAircraft"
    aliases = ("aircraft",)
    dataset_dir = "fgvc_aircraft"
    template = "a photo of a {}, a type of aircraft."
    layout = (
        "fgvc_aircraft/\n|-- images/\n|-- variants.txt\n"
        "|-- images_variant_train.txt\n|-- images_variant_val.txt\n|-- images_variant_test.txt"
    )
    source = "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (keep data/, rename it fgvc_aircraft/)"
    description = "100 aircraft variants"

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        classnames = [line.strip() for line in _read_lines(ddir / "variants.txt", self) if line.strip()]
        label_of = {c: i for i, c in enumerate(classnames)}
        splits = {s: self._read_variant_file(ddir, s, label_of) for s in ("train", "val", "test")}
        return classnames, splits

    def _read_variant_file(self, ddir: Path, split: str, label_of: dict[str, int]) -> list[Datum]:
        path = ddir / f"images_variant_{split}.txt"
        items = []
        for n, line in enumerate(_read_lines(path, self), start=1):
            if not line.strip():
                continue
            imname, _, classname = line.strip().partition(" ")
            if classname not in label_of:
                raise DatasetError(f"'{path}' line {n}: variant '{classname}' is not listed in variants.txt.")
            rel = f"{imname}.jpg"
            items.append(Datum(str(ddir / "images" / rel), label_of[classname], classname, rel))
        return items


def _read_lines(path: Path, spec: DatasetSpec) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"'{path}' not found.\n{spec.expected()}")
    return path.read_text(encoding="utf-8").splitlines()


def read_imagenet_classnames(path: Path, spec: DatasetSpec) -> dict[str, str]:
    """``classnames.txt``: one ``<wnid> <class name>`` per line, in label order."""
    names: dict[str, str] = {}
    for n, line in enumerate(_read_lines(path, spec), start=1):
        if not line.strip():
            continue
        folder, _, name = line.strip().partition(" ")
        if not name:
            raise DatasetError(f"'{path}' line {n}: expected '<folder> <class name>', got {line!r}.")
        names[folder] = name
    return names


def read_class_folders(
    split_dir: Path, folders: list[str], names: dict[str, str], spec: DatasetSpec
) -> list[Datum]:
    """Items of ``split_dir/<folder>/<image>``; the label is the folder's position in ``folders``."""
    items = []
    for label, folder in enumerate(folders):
        if folder not in names:
            raise DatasetError(
                f"Folder '{split_dir / folder}' has no entry in classnames.txt.\n{spec.expected()}"
            )
        for imname in listdir_visible(split_dir / folder):
            rel = f"{folder}/{imname}"
            items.append(Datum(str(split_dir / rel), label, names[folder], rel))
    return items


def _class_dirs(path: Path, spec: DatasetSpec, ignore: tuple[str, ...] = ()) -> list[str]:
    if not path.is_dir():
        raise DatasetError(f"Image folder '{path}' not found.\n{spec.expected()}")
    return [f for f in listdir_visible(path) if f not in ignore and (path / f).is_dir()]


@register_dataset
class ImageNet(DatasetSpec):
    """ImageNet-1k; as in CoOp the official val set is the test set (there is no separate val)."""

    name = "ImageNet"
    dataset_dir = "imagenet"
    ensemble = IMAGENET_TEMPLATES_SELECT
    default_templates = "ensemble"
    layout = (
        "imagenet/\n|-- images/\n|   |-- train/   (1,000 folders n01440764, ...)\n|   |-- val/\n"
        "|-- classnames.txt"
    )
    source = "https://image-net.org/ (classnames.txt: see " + COOP_DATASETS_DOC + ")"
    description = "1,000 object categories"

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        names = read_imagenet_classnames(ddir / "classnames.txt", self)
        folders = _class_dirs(ddir / "images" / "train", self)
        splits = {
            s: read_class_folders(ddir / "images" / d, folders, names, self)
            for s, d in [("train", "train"), ("test", "val")]
        }
        classnames = [names[f] for f in folders]
        warn_duplicate_names(str(ddir / "classnames.txt"), classnames)
        return classnames, splits


class ImageNetTestSet(DatasetSpec):
    """A test-only ImageNet variant: class folders named by wnid, names from classnames.txt."""

    test_only = True
    image_subdir: ClassVar[str] = ""
    ignored: ClassVar[tuple[str, ...]] = ()

    def read(self, ddir: Path) -> tuple[list[str], dict[str, list[Datum]]]:
        names = read_imagenet_classnames(ddir / "classnames.txt", self)
        folders = self.folders(ddir / self.image_subdir, names)
        items = read_class_folders(ddir / self.image_subdir, folders, self.folder_names(folders, names), self)
        return [self.folder_names(folders, names)[f] for f in folders], {"test": items}

    def folders(self, image_dir: Path, names: dict[str, str]) -> list[str]:
        return _class_dirs(image_dir, self, self.ignored)

    def folder_names(self, folders: list[str], names: dict[str, str]) -> dict[str, str]:
        return names


@register_dataset
class ImageNetV2(ImageNetTestSet):
    name = "ImageNetV2"
    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"
    layout = (
        "imagenetv2/\n|-- imagenetv2-matched-frequency-format-val/   (folders 0 ... 999)\n|-- classnames.txt"
    )
    source = "https://github.com/modestyachts/ImageNetV2 (matched-frequency); copy imagenet/classnames.txt"
    description = "ImageNet-V2 matched-frequency test set (1,000 classes)"

    def folders(self, image_dir: Path, names: dict[str, str]) -> list[str]:
        if not image_dir.is_dir():
            raise DatasetError(f"Image folder '{image_dir}' not found.\n{self.expected()}")
        return [str(i) for i in range(len(names))]  # folder i holds label i of classnames.txt

    def folder_names(self, folders: list[str], names: dict[str, str]) -> dict[str, str]:
        return dict(zip(folders, names.values(), strict=True))


@register_dataset
class ImageNetSketch(ImageNetTestSet):
    name = "ImageNetSketch"
    dataset_dir = "imagenet-sketch"
    image_subdir = "images"
    layout = "imagenet-sketch/\n|-- images/   (1,000 folders n01440764, ...)\n|-- classnames.txt"
    source = "https://github.com/HaohanWang/ImageNet-Sketch; copy imagenet/classnames.txt"
    description = "ImageNet-Sketch (1,000 classes, sketches)"


@register_dataset
class ImageNetA(ImageNetTestSet):
    name = "ImageNetA"
    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    ignored = ("README.txt",)
    layout = "imagenet-adversarial/\n|-- imagenet-a/   (200 folders n01498041, ...)\n|-- classnames.txt"
    source = "https://github.com/hendrycks/natural-adv-examples; copy imagenet/classnames.txt"
    description = "ImageNet-A natural adversarial examples (200 classes)"


@register_dataset
class ImageNetR(ImageNetTestSet):
    name = "ImageNetR"
    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    ignored = ("README.txt",)
    layout = "imagenet-rendition/\n|-- imagenet-r/   (200 folders n01443537, ...)\n|-- classnames.txt"
    source = "https://github.com/hendrycks/imagenet-r; copy imagenet/classnames.txt"
    description = "ImageNet-R renditions (200 classes)"
