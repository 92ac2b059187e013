"""Zero-shot class weights, metrics (hand-computed) and the eval run record."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import load_backbone
from vlpeft.data import load_dataset
from vlpeft.engine.evaluate import EvalConfig, extract_image_features, run_zero_shot_eval, zero_shot_logits
from vlpeft.engine.metrics import classification_metrics, confusion_matrix
from vlpeft.errors import ConfigError, DatasetError
from vlpeft.text import class_embeddings


def test_class_embeddings_single_and_ensemble(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    names = ["cat", "sea_lion"]
    single = class_embeddings(backbone, names, ["a photo of a {}."])
    expected = F.normalize(
        backbone.encode_text(backbone.tokenize(["a photo of a cat.", "a photo of a sea lion."])), dim=-1
    )
    torch.testing.assert_close(single, expected)
    templates = ["a photo of a {}.", "art of the {}."]
    ensemble = class_embeddings(backbone, names, templates)
    second = F.normalize(
        backbone.encode_text(backbone.tokenize(["art of the cat.", "art of the sea lion."])), dim=-1
    )
    torch.testing.assert_close(ensemble, F.normalize(expected + second, dim=-1))


def test_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 0, 2])
    logits = F.one_hot(preds, 3).float()
    out = classification_metrics(logits, labels, ["a", "b", "c"])
    assert out["metrics"]["accuracy"] == pytest.approx(4 / 6 * 100)
    assert out["metrics"]["mean_per_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3 * 100)
    assert out["per_class_accuracy"] == {"a": pytest.approx(66.6667, abs=1e-3), "b": 50.0, "c": 100.0}
    assert out["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert "top5_accuracy" not in out["metrics"]


def test_metrics_top5_and_absent_classes():
    logits = torch.arange(8.0).repeat(2, 1)  # both rank class 7 first, then 6, 5, 4, 3
    out = classification_metrics(logits, torch.tensor([3, 2]), list("abcdefgh"))
    assert out["metrics"]["top5_accuracy"] == 50.0 and out["metrics"]["accuracy"] == 0.0
    assert out["per_class_accuracy"]["a"] is None  # no samples: excluded from the mean
    assert confusion_matrix(torch.tensor([1]), torch.tensor([0]), 2).tolist() == [[0, 1], [0, 0]]


def test_eval_run_writes_a_complete_record(tiny_clip, shapes_folder, tmp_path):
    cfg = EvalConfig(model=str(tiny_clip), dataset="imagefolder", root=str(shapes_folder), batch_size=5)
    result = run_zero_shot_eval(cfg, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert on_disk["metrics"] == result["metrics"] and on_disk["counts"]["samples"] == 12
    assert config["backbone"]["fingerprint"] == load_backbone(str(tiny_clip)).fingerprint()
    assert config["templates_used"] == ["a photo of a {}."] and "torch" in config["environment"]
    assert (tmp_path / "run" / "log.txt").exists()
    # recompute the accuracy independently
    backbone = load_backbone(str(tiny_clip))
    ds = load_dataset("imagefolder", shapes_folder)
    feats, labels = extract_image_features(backbone, ds.test)
    weights = class_embeddings(backbone, ds.classnames, ["a photo of a {}."])
    acc = (zero_shot_logits(feats, weights, backbone).argmax(1) == labels).float().mean() * 100
    assert result["metrics"]["accuracy"] == pytest.approx(float(acc))
    with pytest.raises(ConfigError, match="already exists"):
        run_zero_shot_eval(cfg, tmp_path / "run")


def test_corrupt_image_fails_cleanly_without_result(tiny_clip, shapes_folder, tmp_path):
    ds = load_dataset("imagefolder", shapes_folder)
    victim = ds.test[3].impath
    with open(victim, "wb") as f:
        f.write(b"not a png")
    cfg = EvalConfig(model=str(tiny_clip), dataset="imagefolder", root=str(shapes_folder))
    with pytest.raises(DatasetError, match=f"Could not decode image '{victim}'"):
        run_zero_shot_eval(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize(
    "field,value,message",
    [("split", "dev", "--split must be one of"), ("templates", "all", "--templates must be one of"),
     ("batch_size", 0, "--batch-size must be at least 1")],
)  # fmt: skip
def test_eval_config_validation(field, value, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**{"model": "m", "dataset": "d", "root": "r", field: value})
