"""`vlpeft train` / `predict`: run directories, the warm fast path, validation policies, no test peeking."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from vlpeft.cli import app
from vlpeft.engine import runner
from vlpeft.engine.runner import TrainConfig, predict, run_train
from vlpeft.errors import ConfigError
from vlpeft.features import FeatureStore


def config(tiny_clip, shapes_folder, tmp_path, method="tip-adapter", **kw) -> TrainConfig:
    base = dict(shots=4, cache_dir=str(tmp_path / "cache"), device="cpu")
    return TrainConfig(method, str(tiny_clip), "imagefolder", str(shapes_folder), **{**base, **kw})


def test_run_directory_is_complete_and_second_run_encodes_nothing(tiny_clip, shapes_folder, tmp_path):
    first = run_train(config(tiny_clip, shapes_folder, tmp_path), tmp_path / "a")
    for name in ("config.json", "result.json", "adapter.safetensors", "adapter_config.json", "log.txt"):
        assert (tmp_path / "a" / name).is_file(), name
    assert first["image_encoder_forwards"] > 0
    second = run_train(config(tiny_clip, shapes_folder, tmp_path), tmp_path / "b")
    assert second["image_encoder_forwards"] == 0
    assert second["metrics"] == first["metrics"]
    saved = json.loads((tmp_path / "b" / "result.json").read_text())
    assert saved["config"]["val_policy"] == "fewshot" and saved["config"]["method_config"]["init_beta"] == 1.0
    assert saved["fit"]["searched"] is True


def test_test_split_is_untouched_until_the_method_is_fitted(tiny_clip, shapes_folder, tmp_path, monkeypatch):
    events = []
    original = FeatureStore.image_features

    def spy(self, dataset, items, view=None):
        events.append(("features", {item.impath for item in items}))
        return original(self, dataset, items) if view is None else original(self, dataset, items, view)

    monkeypatch.setattr(FeatureStore, "image_features", spy)
    real_head_data = runner.head_data

    def spy_head_data(cfg, head, dataset, val, store):
        test_paths = {item.impath for item in dataset.test}
        real_fit = head.fit
        head.fit = lambda data: (events.append(("fit", test_paths)), real_fit(data))[1]
        data = real_head_data(cfg, head, dataset, val, store)
        assert not set(data.train.keys) & {item.relpath for item in dataset.test}
        return data

    monkeypatch.setattr(runner, "head_data", spy_head_data)
    run_train(
        config(tiny_clip, shapes_folder, tmp_path, "tip-adapter-f", val_policy="full"), tmp_path / "run"
    )
    fit_at = next(i for i, (kind, _) in enumerate(events) if kind == "fit")
    test_paths = events[fit_at][1]
    assert all(not (paths & test_paths) for kind, paths in events[:fit_at] if kind == "features")
    assert any(paths == test_paths for kind, paths in events[fit_at:] if kind == "features")


class LabelSpy:
    """A test item that records when its label is read."""

    def __init__(self, item, events):
        self._item, self._events = item, events
        self.impath, self.relpath, self.classname = item.impath, item.relpath, item.classname
        self.domain = item.domain

    @property
    def label(self) -> int:
        self._events.append("label")
        return self._item.label


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("tip-adapter-f", {"epochs": "2"}), ("coop", {"epochs": "2"}), ("lora", {"iters_per_shot": "1"})],
)
def test_test_labels_are_read_only_after_fitting(
    tiny_clip, shapes_folder, tmp_path, monkeypatch, method, overrides
):
    import dataclasses

    events: list[str] = []
    real_load, real_build = runner.load_run_dataset, runner.build_method

    def spy_load(cfg):
        data, val = real_load(cfg)
        return dataclasses.replace(data, test=tuple(LabelSpy(d, events) for d in data.test)), val

    def spy_build(cfg, dataset):
        head = real_build(cfg, dataset)
        real_fit = head.fit
        head.fit = lambda data: (real_fit(data), events.append("fitted"))[0]
        return head

    monkeypatch.setattr(runner, "load_run_dataset", spy_load)
    monkeypatch.setattr(runner, "build_method", spy_build)
    run_train(config(tiny_clip, shapes_folder, tmp_path, method, overrides=overrides, val_policy="full"))
    assert "fitted" in events and "label" not in events[: events.index("fitted")]
    assert "label" in events[events.index("fitted") :]


@pytest.mark.parametrize("policy,val_size", [("none", None), ("fewshot", 4), ("full", 8)])
def test_validation_policies(tiny_clip, shapes_folder, tmp_path, monkeypatch, policy, val_size):
    seen = {}
    real = runner.head_data

    def record(cfg, head, dataset, val, store):
        data = real(cfg, head, dataset, val, store)
        seen["val"] = None if data.val is None else len(data.val.labels)
        return data

    monkeypatch.setattr(runner, "head_data", record)
    result = run_train(
        config(tiny_clip, shapes_folder, tmp_path, val_policy=policy, shots=1)
    )  # 1 val shot/class
    assert seen["val"] == val_size and result["config"]["val_policy"] == policy
    assert result["fit"]["searched"] is (policy != "none")


def test_bad_settings_are_clear_errors(tiny_clip, shapes_folder, tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown setting\(s\) \['alfa'\].*Valid keys"):
        run_train(config(tiny_clip, shapes_folder, tmp_path, overrides={"alfa": "1"}))
    with pytest.raises(ConfigError, match="--val-policy must be one of"):
        config(tiny_clip, shapes_folder, tmp_path, val_policy="test")
    with pytest.raises(ConfigError, match="has no val split"):
        run_train(
            TrainConfig(
                "tip-adapter",
                str(tiny_clip),
                "ImageNet",
                str(_imagenet(tmp_path)),
                shots=1,
                val_policy="full",
                cache_dir=str(tmp_path / "c"),
            )
        )


def _imagenet(tmp_path):
    from conftest import write_placeholders

    root = tmp_path / "in"
    (root / "imagenet").mkdir(parents=True)
    (root / "imagenet" / "classnames.txt").write_text("n1 cat\nn2 dog\n")
    write_placeholders(
        (root / "imagenet" / "images" / s / f / f"{k}.jpg", i)
        for s in ("train", "val")
        for i, f in enumerate(("n1", "n2"))
        for k in range(3)
    )
    return root


def test_predict_needs_only_the_backbone_and_the_adapter(tiny_clip, shapes_folder, tmp_path):
    result = run_train(
        config(tiny_clip, shapes_folder, tmp_path, "clip-adapter", overrides={"epochs": "3"}),
        tmp_path / "run",
    )
    image = tmp_path / "query.png"
    shutil.copy(next(shapes_folder.glob("red circle/*.png")), image)
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(shapes_folder)
    out = predict(tmp_path / "run", [image], top_k=4)
    assert len(out[0]["top"]) == 4 and abs(sum(e["probability"] for e in out[0]["top"]) - 1) < 1e-4
    assert out[0]["top"][0]["class"] in result["per_class_accuracy"]


def test_cli_methods_train_predict(tiny_clip, shapes_folder, tmp_path):
    cli = CliRunner()
    listing = json.loads(cli.invoke(app, ["methods", "list", "--json"], catch_exceptions=False).stdout)
    assert {"tip-adapter", "lp++", "clap", "zero-shot"} <= {row["name"] for row in listing}
    assert next(r for r in listing if r["name"] == "taskres")["trainable_parameters"] == 512 * 100
    args = [
        "train",
        "--method",
        "taskres",
        "--model",
        str(tiny_clip),
        "--dataset",
        "imagefolder",
        "--root",
        str(shapes_folder),
        "--shots",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        "epochs=2",
        "--device",
        "cpu",
    ]
    trained = cli.invoke(app, args, catch_exceptions=False)
    assert trained.exit_code == 0 and "accuracy" in trained.stdout
    image = next(shapes_folder.glob("blue square/*.png"))
    predicted = cli.invoke(
        app,
        ["predict", "--run", str(tmp_path / "run"), str(image), "--json", "--top-k", "1", "--device", "cpu"],
        catch_exceptions=False,
    )
    assert json.loads(predicted.stdout)[0]["top"][0]["class"] in {
        "blue square",
        "green triangle",
        "red circle",
        "yellow ring",
    }


def test_logits_of_saved_run_match_the_reported_accuracy(tiny_clip, shapes_folder, tmp_path):
    result = run_train(config(tiny_clip, shapes_folder, tmp_path, "lp++"), tmp_path / "run")
    from vlpeft.data import load_dataset
    from vlpeft.engine.runner import load_run

    backbone, head, _ = load_run(tmp_path / "run")
    test = load_dataset("imagefolder", shapes_folder).test
    pixels = torch.stack([backbone.preprocess(__import__("PIL.Image").Image.open(d.impath)) for d in test])
    with torch.no_grad():
        preds = head.logits(backbone.encode_image(pixels)).argmax(1)
    acc = float((preds == torch.tensor([d.label for d in test])).float().mean()) * 100
    assert acc == pytest.approx(result["metrics"]["accuracy"])


def test_multi_term_losses_are_logged_per_epoch(tiny_clip, shapes_folder, tmp_path):
    cfg = config(tiny_clip, shapes_folder, tmp_path, "kgcoop", overrides={"epochs": "3", "batch_size": "4"})
    result = run_train(cfg, tmp_path / "run")
    fit = result["fit"]
    assert set(fit["loss_terms"]) == {"ce", "knowledge"} and len(fit["epoch_losses"]) == 3
    for epoch in range(3):  # the terms add up to the loss the loop minimised
        total = fit["loss_terms"]["ce"][epoch] + fit["loss_terms"]["knowledge"][epoch]
        assert total == pytest.approx(fit["epoch_losses"][epoch], rel=1e-4)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "epoch 3/3: loss" in log and "knowledge" in log


def test_an_early_error_leaves_no_run_directory_and_overwrite_starts_a_fresh_log(
    tiny_clip, shapes_folder, tmp_path
):
    from vlpeft.errors import VlpeftError

    with pytest.raises(VlpeftError):
        run_train(config(tiny_clip, tmp_path / "missing", tmp_path), tmp_path / "early")
    assert not (tmp_path / "early").exists()
    cfg = config(tiny_clip, shapes_folder, tmp_path, "zero-shot")
    run_train(cfg, tmp_path / "run")
    first = (tmp_path / "run" / "log.txt").read_text()
    run_train(cfg, tmp_path / "run", overwrite=True)
    assert (tmp_path / "run" / "log.txt").read_text().count("zero-shot test accuracy") == 1 and first


def test_shots_beyond_a_class_are_warned_and_the_real_counts_recorded(
    tiny_clip, shapes_folder, tmp_path, caplog
):
    import logging

    caplog.set_level(logging.WARNING, logger="vlpeft")
    result = run_train(config(tiny_clip, shapes_folder, tmp_path, "zero-shot", shots=50))
    counts = result["train_images_per_class"]
    assert set(counts) == {"red circle", "blue square", "green triangle", "yellow ring"}
    assert all(0 < n < 50 for n in counts.values())  # every image of each class, fewer than 50
    assert "50-shot sampling: 4 classes have fewer training images" in caplog.text


def test_predict_reports_an_unreadable_image_and_predicts_the_others(
    tiny_clip, shapes_folder, tmp_path, monkeypatch, capsys
):
    from test_cli import run_main

    run_train(config(tiny_clip, shapes_folder, tmp_path, "zero-shot"), tmp_path / "run")
    good = next(shapes_folder.glob("red circle/*.png"))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    code, out, err = run_main(
        monkeypatch, capsys, "predict", "--run", tmp_path / "run", good, bad, tmp_path / "gone.jpg"
    )
    text = " ".join(err.split())
    assert code == 2 and str(good) in out and "Traceback" not in err
    assert "2 of 3 images could not be read" in text and "broken.png" in text and "gone.jpg" in text
    assert "dataset" not in text  # the message is about the file


def test_a_full_disk_keeps_the_result_and_names_the_file(tiny_clip, shapes_folder, tmp_path, monkeypatch):
    import errno

    import vlpeft.methods.base as base
    from vlpeft.errors import ConfigError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(base, "save_file", full)
    with pytest.raises(ConfigError, match=r"result.json \(test accuracy .*No space left on device"):
        run_train(config(tiny_clip, shapes_folder, tmp_path, "tip-adapter"), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "result.json").read_text())["metrics"]["accuracy"] >= 0
    assert not list((tmp_path / "run").glob(".*.tmp"))  # no half-written file


def test_an_unwritable_out_is_refused_before_any_work(tiny_clip, shapes_folder, tmp_path, monkeypatch):
    import vlpeft.runs
    from vlpeft.errors import ConfigError

    monkeypatch.setattr(
        vlpeft.runs, "writable_dir", lambda path: False
    )  # a read-only mount (root writes anywhere)
    with pytest.raises(ConfigError, match="Cannot write the run directory"):
        run_train(config(tiny_clip, shapes_folder, tmp_path, "tip-adapter"), tmp_path / "ro")
    assert not (tmp_path / "ro").exists() and not (tmp_path / "cache").exists()
