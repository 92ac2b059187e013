"""`vlpeft report`: the tables' arithmetic against hand-computed values, the published rows, the
exports, and the HTML page checked in a real headless browser."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vlpeft.bench.report import build_report
from vlpeft.bench.table import BENCH_FILE, EVALS, RUN_FILE, RUNS

VIT_B16 = "hf:openai/clip-vit-base-patch16"


def fake_bench(
    out: Path, protocol: str, datasets: list[str], methods: list[str], seeds: list[int], **spec
) -> None:
    """A bench directory as `vlpeft bench` leaves it, with made-up accuracies (no model runs)."""
    out.mkdir(parents=True)
    names = [{"method": m, "name": m, "overrides": {}} for m in methods]
    body = {
        "name": "fake", "protocol": protocol, "backbones": [VIT_B16], "methods": names,
        "datasets": [{"name": d, "root": "/data"} for d in datasets], "source": None, "targets": [],
        "shots": [1, 4], "seeds": seeds, "val_policy": "fewshot", **spec,
    }  # fmt: skip
    (out / BENCH_FILE).write_text(json.dumps({"fingerprint": "x", "spec": body}))


def fake_run(out: Path, protocol: str, method: str, dataset: str, shots: int, seed: int, accuracy: float,
             evals: dict[str, tuple[str, float]] | None = None) -> None:  # fmt: skip
    key = f"{protocol}__{method}__{dataset}__{shots}__{seed}"
    d = out / RUNS / key
    d.mkdir(parents=True)
    run = {
        "key": key, "protocol": protocol, "backbone": VIT_B16,
        "method": {"method": method, "name": method, "overrides": {}},
        "dataset": {"name": dataset, "root": "/data"}, "shots": shots, "seed": seed, "subsample": "all",
        "evals": [{"label": label, "dataset": ds} for label, (ds, _) in (evals or {}).items()],
    }  # fmt: skip
    (d / RUN_FILE).write_text(json.dumps(run))
    result = {
        "metrics": {"accuracy": accuracy, "mean_per_class_accuracy": accuracy},
        "fit_time_s": 1.5,
        "trainable_parameters": 100,
        "peak_memory": {"cpu_rss_mb": 10.0},
        "image_encoder_forwards": 5,
    }
    (d / "result.json").write_text(json.dumps(result))
    for label, (_, acc) in (evals or {}).items():
        (d / EVALS / label).mkdir(parents=True)
        (d / EVALS / label / "result.json").write_text(json.dumps({"metrics": {"accuracy": acc}}))


@pytest.fixture
def few_shot_dir(tmp_path) -> Path:
    out = tmp_path / "fs"
    fake_bench(out, "few-shot", ["A", "B"], ["zero-shot", "probe"], [1, 2])
    fake_run(out, "few-shot", "zero-shot", "A", 0, 1, 40.0)
    fake_run(out, "few-shot", "zero-shot", "B", 0, 1, 50.0)
    for seed, (a, b) in {1: (50.0, 70.0), 2: (60.0, 90.0)}.items():
        fake_run(out, "few-shot", "probe", "A", 4, seed, a)
        fake_run(out, "few-shot", "probe", "B", 4, seed, b)
        fake_run(out, "few-shot", "probe", "A", 1, seed, a - 20)
        fake_run(out, "few-shot", "probe", "B", 1, seed, b - 20)
    return out


def test_few_shot_table_means_stds_average_and_best(few_shot_dir):
    build_report(few_shot_dir)
    md = (few_shot_dir / "report.md").read_text()
    # A: 50, 60 -> 55.0 ± 7.1; B: 70, 90 -> 80.0 ± 14.1; average 67.5, per-seed averages 60, 75 -> ± 10.6
    assert "| probe | **55.0 ± 7.1** | **80.0 ± 14.1** | **67.5 ± 10.6** |" in md
    assert "| zero-shot | 40.0 | 50.0 | 45.0 |" in md  # zero-shot sits in every shots table
    table = pd.read_csv(
        few_shot_dir / "tables" / f"few-shot-{VIT_B16.replace(':', '-').replace('/', '-')}-4-shot.csv"
    )
    row = table.set_index(table.columns[0]).loc["probe"]
    assert row["Average"] == 67.5 and math.isclose(row["Average std"], math.sqrt(112.5))
    tex = next((few_shot_dir / "tables").glob("*4-shot.tex")).read_text()
    assert "\\textbf{67.5 $\\pm$ 10.6}" in tex and "\\begin{tabular}" in tex
    assert Image.open(few_shot_dir / "curves.png").size[0] > 600
    assert (few_shot_dir / "results.parquet").exists() is False  # the report reads the runs, writes no table


def test_base_to_new_harmonic_mean_of_the_averages_and_reported_rows(tmp_path):
    out = tmp_path / "b2n"
    fake_bench(out, "base-to-new", ["A", "B"], ["maple"], [1])
    fake_run(out, "base-to-new", "maple", "A", 16, 1, 90.0, {"new": ("A", 30.0)})
    fake_run(out, "base-to-new", "maple", "B", 16, 1, 50.0, {"new": ("B", 70.0)})
    build_report(out)
    md = (out / "report.md").read_text()
    # average base 70, new 50: HM 2*70*50/120 = 58.3 (the mean of the per-dataset HMs would be 51.7)
    assert "| maple | 70.0 | 50.0 | 58.3 |" in md and "| maple | 90.0 | 30.0 | 45.0 |" in md
    assert "| maple (reported) | 82.3 | 75.1 | 78.5 |" in md  # MaPLe README, ViT-B/16 average
    assert "coop (reported, muzairkhattak/multimodal-prompt-learning)" in md  # two published sets, both named


def test_transfer_tables_average_over_targets(tmp_path):
    out = tmp_path / "dg"
    fake_bench(out, "domain-generalisation", [], ["coop"], [1], source={"name": "S", "root": "/d"},
               targets=[{"name": "T1", "root": "/d"}, {"name": "T2", "root": "/d"}])  # fmt: skip
    fake_run(out, "domain-generalisation", "coop", "S", 16, 1, 70.0, {"T1": ("T1", 60.0), "T2": ("T2", 40.0)})
    build_report(out)
    assert "| coop | 70.0 | 60.0 | 40.0 | 50.0 |" in (out / "report.md").read_text()


def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def test_report_html_renders_in_a_headless_browser(few_shot_dir, tmp_path):
    exe = browser()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: .ci/run installs Debian's chromium for this check")
        pytest.skip("no Chromium here (apt-get install chromium)")
    build_report(few_shot_dir)
    page = few_shot_dir / "report.html"
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(
        [exe, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert dom.stdout.count("<table>") >= 3 and "67.5 ± 10.6" in dom.stdout
    images = re.findall(r"src=\"data:image/png;base64,([^\"]+)\"", dom.stdout)
    assert images and Image.open(io.BytesIO(base64.b64decode(images[0]))).size[0] > 600
    snap = subprocess.run([exe, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert snap.returncode == 0 and Image.open(shot).getextrema() != ((255, 255), (255, 255), (255, 255))
