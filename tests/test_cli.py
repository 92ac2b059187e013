"""The command line: each command as documented, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from vlpeft import __version__
from vlpeft.cli import app, main

from test_fewshot import dassl_reference

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the real entry point (with its error handling) in-process."""
    monkeypatch.setattr(sys, "argv", ["vlpeft", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_version():
    assert __version__ in invoke("--version").stdout


def test_datasets_list_json():
    names = {row["name"] for row in json.loads(invoke("datasets", "list", "--json").stdout)}
    assert {"OxfordPets", "ImageNetR", "imagefolder"} <= names


def test_datasets_check(coop_root, tmp_path):
    ok = invoke("datasets", "check", "OxfordPets", "--root", coop_root)
    assert ok.exit_code == 0 and "OK" in ok.stdout and "37 classes" in ok.stdout
    bad = invoke("datasets", "check", "OxfordPets", "--root", tmp_path)
    assert (
        bad.exit_code == 1 and "Expected layout" in bad.stdout and "split_zhou_OxfordPets.json" in bad.stdout
    )


def test_datasets_fewshot_prints_coop_sample(coop_root):
    out = invoke("datasets", "fewshot", "OxfordFlowers", "--root", coop_root, "--shots", 2, "--seed", 3)
    raw = json.loads((coop_root / "oxford_flowers" / "split_zhou_OxfordFlowers.json").read_text())
    train, val = dassl_reference(raw, 2, 3)
    assert json.loads(out.stdout) == {"train": train, "val": val}
    base = json.loads(
        invoke(
            "datasets",
            "fewshot",
            "OxfordFlowers",
            "--root",
            coop_root,
            "--shots",
            2,
            "--seed",
            3,
            "--subsample",
            "base",
        ).stdout
    )
    label_of = {rel: label for rel, label, _ in raw["train"]}
    assert base["train"] == [rel for rel in train if label_of[rel] < 51]  # base = first ceil(102 / 2) labels


def test_models_init_tiny_and_info(tmp_path):
    target = tmp_path / "tiny-siglip"
    assert invoke("models", "init-tiny", target, "--family", "siglip").exit_code == 0
    info = json.loads(invoke("models", "info", f"local:{target}").stdout)
    assert info["family"] == "siglip" and info["preprocess"]["size"] == [32, 32]


def test_eval_command(tiny_clip, shapes_folder, tmp_path):
    out = invoke(
        "eval",
        "--model",
        tiny_clip,
        "--dataset",
        "imagefolder",
        "--root",
        shapes_folder,
        "--out",
        tmp_path / "run",
        "--templates",
        "ensemble",
    )
    assert out.exit_code == 0 and "accuracy" in out.stdout
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert len(result["config"]["templates_used"]) == 8  # 7 selected ImageNet templates + the dataset's own


def test_errors_are_one_clear_line_with_status_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(
        monkeypatch, capsys, "datasets", "fewshot", "OxfordPet", "--root", tmp_path, "--shots", 1
    )
    assert code == 2 and "error:" in err and "Did you mean 'OxfordPets'" in err and "Traceback" not in err
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        "--model",
        tmp_path / "none",
        "--dataset",
        "dtd",
        "--root",
        tmp_path,
        "--out",
        tmp_path / "o",
    )
    assert code == 2 and "No 'dtd/' folder" in err
    assert not (tmp_path / "o" / "result.json").exists()


def test_demo_on_the_embedded_model(tmp_path):
    args = [
        "demo",
        "--out",
        tmp_path / "demo",
        "--cache-dir",
        tmp_path / "cache",
        "--datasets",
        "WorldTextures",
    ]
    args += ["--methods", "linear-probe,tip-adapter", "--shots", "1,4"]
    out = invoke(*args)
    assert out.exit_code == 0, out.stdout
    assert "| zero-shot |" in out.stdout and "tip-adapter" in out.stdout and "chance (%)" in out.stdout
    for name in ("results.csv", "results.parquet", "report.md", "curves.png", "report.html"):
        assert (tmp_path / "demo" / name).is_file(), name
    frame = pd.read_csv(tmp_path / "demo" / "results.csv")
    assert set(frame["method"]) == {"zero-shot", "linear-probe", "tip-adapter"}
    assert len(frame) == 1 + 2 * 2 and set(frame["dataset"]) == {"WorldTextures"}
    again = invoke(*args)
    assert again.exit_code == 0 and "0 runs done now, 5 reused" in again.stdout  # nothing re-run
    assert pd.read_csv(tmp_path / "demo" / "results.csv").equals(frame)


def test_base_to_new_from_the_command_line(tiny_clip, shapes_folder, tmp_path):
    common = [
        "--model",
        str(tiny_clip),
        "--dataset",
        "imagefolder",
        "--root",
        str(shapes_folder),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]
    trained = invoke(
        "train",
        "--method",
        "coop-ctxv1",
        "--shots",
        "2",
        "--subsample",
        "base",
        "--set",
        "epochs=1",
        "--out",
        tmp_path / "run",
        *common,
    )
    assert trained.exit_code == 0
    new = invoke(
        "eval",
        "--run",
        tmp_path / "run",
        "--subsample",
        "new",
        "--out",
        tmp_path / "new",
        "--cache-dir",
        tmp_path / "cache",
        "--device",
        "cpu",
    )
    assert new.exit_code == 0 and "harmonic_mean" in new.stdout
    result = json.loads((tmp_path / "new" / "result.json").read_text())
    assert result["subsample"] == "new" and set(result["per_class_accuracy"]) == {"red circle", "yellow ring"}


def test_prompt_presets_follow_the_official_scripts():
    from vlpeft.methods import get_method

    assert get_method("coop").preset("OxfordPets", 1) == {"epochs": 50}
    assert get_method("coop").preset("OxfordPets", 4) == {"epochs": 100}
    assert get_method("coop").preset("OxfordPets", 16) == {}
    assert get_method("plot-patches").preset("ImageNet", 16) == {
        "epochs": 50
    }  # no global logits: the code returns OT alone
    assert get_method("kgcoop").config_class().weight == 8.0


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_file(monkeypatch, capsys, tmp_path):
    import vlpeft.backbones

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(vlpeft.backbones, "init_tiny", broken)
    monkeypatch.setenv("VLPEFT_CACHE_DIR", str(tmp_path / "cache"))
    code, _, err = run_main(monkeypatch, capsys, "models", "init-tiny", tmp_path / "m")
    text = " ".join(err.split())
    assert code == 1 and "unexpected RuntimeError: simulated bug" in text and "Traceback" not in err
    logs = list((tmp_path / "cache" / "logs").glob("error-*.txt"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and str(logs[0]) in text.replace(" ", "")
    code, _, err = run_main(monkeypatch, capsys, "--debug", "models", "init-tiny", tmp_path / "m")
    assert code == 1 and "Traceback" in err and "simulated bug" in err


def test_mps_without_metal_is_a_clear_error(monkeypatch):
    import torch

    from vlpeft.errors import ConfigError
    from vlpeft.utils import resolve_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="mps was requested"):
        resolve_device("mps")


def test_atomic_writes_honour_the_umask(tmp_path):
    import os

    from vlpeft.io import atomic_directory, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.json", "{}")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_an_unknown_setting_suggests_the_key_that_contains_it():
    from vlpeft.errors import ConfigError
    from vlpeft.methods import get_method

    cls = get_method("lora")
    with pytest.raises(ConfigError, match="Did you mean 'iters_per_shot'"):
        cls.config_class().with_overrides({"iters": "3"})
    with pytest.raises(ConfigError, match="Did you mean 'dropout'"):
        cls.config_class().with_overrides({"dropuot": "0.1"})


@pytest.mark.parametrize("name", ["lora", "ape", "plot++", "zero-shot"])
def test_methods_show_lists_every_setting_with_its_default_range_and_source(name):
    from vlpeft.methods import get_method

    out = invoke("methods", "show", name, "--json")
    info = json.loads(out.stdout)
    assert out.exit_code == 0 and info["name"] == get_method(name).name
    assert [s["name"] for s in info["settings"]] == get_method(name).config_class.field_names()
    assert info["defaults_from"] and info["needs"] and info["trainable_parameters"]["count"] >= 0
    if name == "lora":
        scale = next(s for s in info["settings"] if s["name"] == "logit_scale")
        assert scale["default"] == "checkpoint"
        assert next(s for s in info["settings"] if s["name"] == "dropout")["range"] == "in [0, 1)"
    if name == "ape":
        assert info["dataset_presets"]["EuroSAT"]["gamma_steps"] == 20
