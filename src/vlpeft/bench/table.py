"""The tidy results table of a bench directory: one row per (run, evaluated split).

Columns: backbone, method, name (display), dataset (evaluated), source (trained on), protocol,
split (test | base | new | source | target), shots, seed, accuracy, mean_per_class_accuracy,
fit_time_s, trainable_parameters, peak_memory_mb, image_encoder_forwards, run_dir. Written as
``results.csv`` and ``results.parquet``; read with ``pandas.read_parquet``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from vlpeft.io import write_bytes_atomic, write_text_atomic
from vlpeft.runs import RESULT_FILE

# The layout of a bench directory (see vlpeft.bench.grid).
BENCH_FILE = "bench.json"
RUN_FILE = "bench_run.json"
RUNS, FAILED, LOCKS, EVALS = "runs", "failed", "locks", "evals"
COLUMNS = [
    "backbone",
    "method",
    "name",
    "dataset",
    "source",
    "protocol",
    "split",
    "shots",
    "seed",
    "accuracy",
    "mean_per_class_accuracy",
    "fit_time_s",
    "trainable_parameters",
    "peak_memory_mb",
    "image_encoder_forwards",
    "run_dir",
]
OWN_SPLIT = {
    "few-shot": "test",
    "base-to-new": "base",
    "cross-dataset": "source",
    "domain-generalisation": "source",
}


def run_rows(directory: Path) -> list[dict[str, Any]]:
    """The rows of one finished run directory (its own test split, then each evaluation)."""
    run = json.loads((directory / RUN_FILE).read_text())
    result = json.loads((directory / RESULT_FILE).read_text())
    memory = result.get("peak_memory", {})
    common = {
        "backbone": run["backbone"],
        "method": run["method"]["method"],
        "name": run["method"]["name"],
        "source": run["dataset"]["name"],
        "protocol": run["protocol"],
        "shots": run["shots"],
        "seed": run["seed"],
        "fit_time_s": result.get("fit_time_s"),
        "trainable_parameters": result.get("trainable_parameters"),
        "peak_memory_mb": memory.get("cuda_allocated_mb", memory.get("cpu_rss_mb")),
        "image_encoder_forwards": result.get("image_encoder_forwards"),
        "run_dir": str(directory),
    }
    rows = [
        {**common, "dataset": run["dataset"]["name"], "split": OWN_SPLIT[run["protocol"]], **_metrics(result)}
    ]
    for ev in run["evals"]:
        evaluated = json.loads((directory / EVALS / ev["label"] / RESULT_FILE).read_text())
        split = "new" if run["protocol"] == "base-to-new" else "target"
        rows.append({**common, "dataset": ev["dataset"], "split": split, **_metrics(evaluated)})
    return rows


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    metrics = result["metrics"]
    return {
        "accuracy": metrics["accuracy"],
        "mean_per_class_accuracy": metrics.get("mean_per_class_accuracy"),
    }


def collect(out: str | Path) -> pd.DataFrame:
    """Every finished run of a bench directory as one tidy frame (columns: :data:`COLUMNS`)."""
    rows = [
        row
        for d in sorted((Path(out) / RUNS).glob("*"))
        if not d.name.startswith(".") and (d / RUN_FILE).is_file()
        for row in run_rows(d)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def write_results(out: str | Path) -> pd.DataFrame:
    """``results.csv`` and ``results.parquet`` of ``out``, written atomically."""
    out = Path(out)
    frame = collect(out)
    write_text_atomic(out / "results.csv", frame.to_csv(index=False))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(out / "results.parquet", buffer.getvalue())
    return frame
