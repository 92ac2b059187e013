"""Dataset specs read CoOp's layouts; bad input gets errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlpeft.data import get_dataset_spec, list_datasets, load_dataset
from vlpeft.errors import DatasetError, UnknownNameError

from conftest import SPLIT_FILES, make_coop_tree, write_placeholders

EXPECTED_CLASSES = {
    "OxfordPets": 37,
    "Caltech101": 100,
    "StanfordCars": 196,
    "OxfordFlowers": 102,
    "DescribableTextures": 47,
    "EuroSAT": 10,
    "UCF101": 101,
}
STANDARD = [
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101", "FGVCAircraft",
    "SUN397", "DescribableTextures", "EuroSAT", "UCF101", "ImageNetV2", "ImageNetSketch", "ImageNetA",
    "ImageNetR",
]  # fmt: skip


def test_all_standard_datasets_are_registered():
    assert set(STANDARD) | {"imagefolder", "csv"} <= set(list_datasets())


@pytest.mark.parametrize(
    "alias,name",
    [
        ("dtd", "DescribableTextures"),
        ("flowers102", "OxfordFlowers"),
        ("oxford_pets", "OxfordPets"),
        ("imagenet-sketch", "ImageNetSketch"),
    ],
)
def test_aliases_and_spellings(alias, name):
    assert get_dataset_spec(alias).name == name


def test_unknown_dataset_suggests_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'OxfordPets'"):
        get_dataset_spec("OxfordPet")


@pytest.mark.parametrize("name", sorted(SPLIT_FILES))
def test_published_split_loads(name, coop_root):
    ds = load_dataset(name, coop_root)
    raw = json.loads((Path(ds.root) / get_dataset_spec(name).split_file).read_text())
    assert ds.num_classes == EXPECTED_CLASSES[name]
    assert {s: len(getattr(ds, s)) for s in ("train", "val", "test")} == {s: len(raw[s]) for s in raw}
    first = ds.train[0]
    assert first.relpath == raw["train"][0][0] and first.label == raw["train"][0][1]
    assert Path(first.impath).is_file()


def test_coop_class_names_and_paths(coop_root):
    caltech = load_dataset("Caltech101", coop_root)
    assert {"face", "leopard", "motorbike", "airplane"} <= set(caltech.classnames)
    assert "BACKGROUND_Google" not in caltech.classnames and "Faces_easy" not in caltech.classnames
    assert caltech.train[0].impath.endswith("caltech-101/101_ObjectCategories/" + caltech.train[0].relpath)
    eurosat = load_dataset("EuroSAT", coop_root)
    assert "Annual Crop Land" in eurosat.classnames and "Sea or Lake" in eurosat.classnames
    cars = load_dataset("StanfordCars", coop_root)
    assert cars.train[0].impath.endswith("stanford_cars/" + cars.train[0].relpath)  # no image sub-folder


def test_templates_follow_coop():
    pets = get_dataset_spec("OxfordPets")
    assert pets.template == "a photo of a {}, a type of pet."
    assert get_dataset_spec("DescribableTextures").template == "{} texture."
    assert get_dataset_spec("EuroSAT").template == "a centered satellite photo of {}."


def test_root_may_be_the_dataset_folder_itself(coop_root):
    assert load_dataset("EuroSAT", coop_root / "eurosat").num_classes == 10


def test_fewshot_then_subsample_base_new(coop_root):
    root = coop_root
    full = load_dataset("OxfordPets", root, shots=4, seed=2)
    base = load_dataset("OxfordPets", root, shots=4, seed=2, subsample="base")
    new = load_dataset("OxfordPets", root, shots=4, seed=2, subsample="new")
    assert base.num_classes == 19 and new.num_classes == 18
    assert base.classnames == full.classnames[:19] and new.classnames == full.classnames[19:]
    assert {d.label for d in new.test} == set(range(18))
    new_paths = {d.relpath for d in full.train if d.label >= 19}
    assert {d.relpath for d in new.train} == new_paths  # the same images, relabelled
    assert all(new.classnames[d.label] == d.classname for d in new.train)


# ---- FGVCAircraft and the ImageNet family ----------------------------------------------------


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_fgvc_aircraft_text_files(tmp_path):
    ddir = tmp_path / "fgvc_aircraft"
    _write_lines(ddir / "variants.txt", ["707-320", "A300B4", "Cessna 172"])
    rows = {"train": ["0001 707-320", "0002 A300B4", "0003 Cessna 172"], "val": ["0004 A300B4"],
            "test": ["0005 Cessna 172", "0006 707-320"]}  # fmt: skip
    for split, lines in rows.items():
        _write_lines(ddir / f"images_variant_{split}.txt", lines)
    write_placeholders((ddir / "images" / f"{line.split()[0]}.jpg", 0) for v in rows.values() for line in v)
    ds = load_dataset("FGVCAircraft", tmp_path)
    assert ds.classnames == ("707-320", "A300B4", "Cessna 172")
    assert [d.label for d in ds.test] == [2, 0] and ds.test[0].relpath == "0005.jpg"


def _imagenet_tree(root: Path, folders: list[str], per_class: int = 6) -> None:
    names = {f: f"class {i}" for i, f in enumerate(folders)}
    _write_lines(root / "imagenet" / "classnames.txt", [f"{f} {n}" for f, n in names.items()])
    for split in ("train", "val"):
        write_placeholders(
            (root / "imagenet" / "images" / split / f / f"{split}_{k}.JPEG", i)
            for i, f in enumerate(folders)
            for k in range(per_class)
        )


def test_imagenet_val_is_test_and_fewshot_val_is_disjoint(tmp_path):
    _imagenet_tree(tmp_path, ["n02", "n01", "n03"])
    ds = load_dataset("ImageNet", tmp_path)
    assert ds.classnames == ("class 1", "class 0", "class 2")  # folders sorted: n01, n02, n03
    assert len(ds.test) == 18 and ds.val == ()
    fs = ds.fewshot(2, seed=1)
    assert len(fs.train) == 6 and len(fs.val) == 6
    assert not {d.impath for d in fs.train} & {d.impath for d in fs.val}
    assert not {d.impath for d in fs.val} & {d.impath for d in ds.test}
    assert ds.templates("ensemble")[0] == "itap of a {}." and len(ds.templates("ensemble")) == 7


def test_imagenet_test_only_variants(tmp_path):
    names = ["n01 tench", "n02 goldfish", "n03 shark"]
    _write_lines(tmp_path / "imagenet-adversarial" / "classnames.txt", names)
    (tmp_path / "imagenet-adversarial" / "imagenet-a").mkdir(parents=True)
    (tmp_path / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("x")
    write_placeholders(
        (tmp_path / "imagenet-adversarial" / "imagenet-a" / f / "a.jpg", 0) for f in ("n03", "n01")
    )
    ds = load_dataset("ImageNetA", tmp_path)
    assert ds.classnames == ("tench", "shark") and len(ds.test) == 2
    with pytest.raises(DatasetError, match="test-only"):
        ds.split("train")
    with pytest.raises(DatasetError, match="test-only"):
        ds.fewshot(1, 1)
    _write_lines(tmp_path / "imagenetv2" / "classnames.txt", names)
    write_placeholders(
        (tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(i) / "x.jpeg", i)
        for i in range(3)
    )
    v2 = load_dataset("ImageNetV2", tmp_path)
    assert v2.classnames == ("tench", "goldfish", "shark") and [d.label for d in v2.test] == [0, 1, 2]


# ---- custom datasets --------------------------------------------------------------------------


def test_imagefolder_without_splits_is_split_50_20_30(shapes_folder):
    ds = load_dataset("imagefolder", shapes_folder)
    assert ds.classnames == ("blue square", "green triangle", "red circle", "yellow ring")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 8, 12)
    again = load_dataset("imagefolder", shapes_folder)
    assert ds.test == again.test  # deterministic


def test_imagefolder_with_split_folders(tmp_path):
    for split, n in (("train", 10), ("test", 3)):
        write_placeholders(
            (tmp_path / split / c / f"{k}.png", i) for i, c in enumerate(("b", "a")) for k in range(n)
        )
    ds = load_dataset("folder", tmp_path)
    assert ds.classnames == ("a", "b")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (16, 4, 6)  # val = 20% of train per class


def test_csv_dataset(tmp_path):
    write_placeholders((tmp_path / "img" / f"{k}.png", k % 2) for k in range(6))
    rows = ["path,label,split"] + [f"img/{k}.png,{'cat' if k % 2 else 'dog'},{'test' if k > 3 else 'train'}"
                                   for k in range(6)]  # fmt: skip
    _write_lines(tmp_path / "data.csv", rows)
    ds = load_dataset("csv", tmp_path / "data.csv")
    assert ds.classnames == ("cat", "dog") and len(ds.test) == 2 and len(ds.train) + len(ds.val) == 4


@pytest.mark.parametrize(
    "rows,message",
    [
        (["file,class", "a.png,x"], "needs a header with 'path' and 'label'"),
        (["path,label,split", "a.png,x,training"], "split 'training' is not one of"),
        (["path,label,split", "a.png,x,train", "b.png,y,"], "some rows have a split and some do not"),
    ],
)
def test_csv_errors(tmp_path, rows, message):
    _write_lines(tmp_path / "d.csv", rows)
    with pytest.raises(DatasetError, match=message):
        load_dataset("csv", tmp_path / "d.csv")


# ---- bad input ---------------------------------------------------------------------------------


def test_missing_root_and_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("OxfordPets", tmp_path / "nope")
    with pytest.raises(DatasetError, match=r"(?s)No 'oxford_pets/' folder.*oxford_pets/\n\|-- images/"):
        load_dataset("OxfordPets", tmp_path)


def test_missing_split_file_explains_both_fixes(tmp_path):
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"split_zhou_DescribableTextures.json' not found.*make-split"):
        load_dataset("dtd", tmp_path)


def test_missing_images_are_counted(tmp_path):
    root = make_coop_tree(tmp_path, "DescribableTextures")
    ds = load_dataset("dtd", root)
    for item in ds.test[:3]:
        Path(item.impath).unlink()
    with pytest.raises(DatasetError, match=r"3 of 5640 image files of DescribableTextures are missing"):
        load_dataset("dtd", root)
    report = get_dataset_spec("dtd").check(root)
    assert not report.ok and len(report.missing["test"]) == 3


def _tiny_split(**overrides) -> dict:
    split = {"train": [["a/1.jpg", 0, "a"], ["b/1.jpg", 1, "b"]], "val": [["a/2.jpg", 0, "a"]],
             "test": [["b/2.jpg", 1, "b"]]}  # fmt: skip
    return {**split, **overrides}


@pytest.mark.parametrize(
    "split,message",
    [
        (_tiny_split(test=[["b/2.jpg", 1, "bee"]]), r"label 1 is named both 'b' .* and 'bee'"),
        (_tiny_split(test=[["b/2.jpg", 3, "d"]]), r"labels must be 0..2 with none missing; labels \[2\]"),
        (_tiny_split(val=[["a/2.jpg", "0", "a"]]), r"val\[0\] is .*expected \[image path, integer label"),
        ({"train": []}, "must be a JSON object with 'train', 'val' and 'test'"),
    ],
)
def test_malformed_split_files(tmp_path, split, message):
    make_coop_tree(tmp_path, "DescribableTextures", split=split) if "test" in split else None
    if "test" not in split:
        (tmp_path / "dtd").mkdir()
        (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    with pytest.raises(DatasetError, match=message):
        load_dataset("DescribableTextures", tmp_path)


def test_split_file_that_is_not_json(tmp_path):
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{not json")
    with pytest.raises(DatasetError, match="is not valid JSON"):
        load_dataset("DescribableTextures", tmp_path)


def test_make_split_applies_coop_class_rules(tmp_path):
    image_dir = tmp_path / "caltech-101" / "101_ObjectCategories"
    folders = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "accordion"]
    write_placeholders(
        (image_dir / f / f"image_{k:04d}.jpg", i) for i, f in enumerate(folders) for k in range(10)
    )
    path = get_dataset_spec("Caltech101").make_split(tmp_path, seed=1)
    ds = load_dataset("Caltech101", tmp_path)
    assert ds.classnames == ("face", "leopard", "accordion")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 6, 9)
    with pytest.raises(DatasetError, match="already exists"):
        get_dataset_spec("Caltech101").make_split(tmp_path)
    assert json.loads(path.read_text())["train"][0][2] == "face"
    with pytest.raises(DatasetError, match="cannot be split from raw folders"):
        get_dataset_spec("OxfordPets").make_split(tmp_path)


def test_check_with_verify_images_lists_truncated_and_non_image_files(shapes_folder, monkeypatch, capsys):
    import shutil

    from test_cli import run_main

    files = sorted(shapes_folder.glob("red circle/*.png"))
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated
    files[1].write_text("not an image")
    code, out, _ = run_main(monkeypatch, capsys, "datasets", "check", "imagefolder", "--root", shapes_folder)
    assert code == 0 and "OK" in out  # without decoding, the files look fine
    code, out, _ = run_main(
        monkeypatch, capsys, "datasets", "check", "imagefolder", "--root", shapes_folder, "--verify-images"
    )
    text = " ".join(out.split())
    assert code == 1 and "do not decode" in text and files[0].name in text and files[1].name in text
    shutil.rmtree(shapes_folder)
