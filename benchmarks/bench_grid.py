"""A bench grid against the same runs as separate ``vlpeft train`` processes.

The grid (embedded model, two world datasets, zero-shot + three heads + CoOp, 1 and 4 shots, two
seeds) is run three ways, interleaved and repeated (min and median wall time):

- ``bench``: one ``vlpeft bench`` process, cold feature cache (one backbone load, one store);
- ``train, shared cache``: one ``vlpeft train`` process per run, all on one cold cache directory;
- ``train, own cache``: one process per run, each with its own cache (what code without a
  feature cache does: every run encodes its images again).

Prints image-encoder forwards and wall time of each, and the ratios against ``bench``.

Usage: ``python benchmarks/bench_grid.py [--repeats 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DATASETS = ["WorldTextures", "WorldCounting"]
METHODS = ["zero-shot", "linear-probe", "tip-adapter", "clip-adapter", "coop"]
SETTINGS = {"clip-adapter": {"epochs": "20"}, "coop": {"epochs": "10", "n_ctx": "4"}}
SHOTS, SEEDS = [1, 4], [1, 2]
ENV = {**os.environ, "VLPEFT_NO_PROGRESS": "1"}


def spec(root: str, cache: Path) -> dict:
    methods = [{"method": m, "set": SETTINGS[m]} if m in SETTINGS else m for m in METHODS]
    grid = {"name": "bench_grid", "backbones": ["embedded"], "root": root, "datasets": DATASETS}
    return {
        **grid,
        "methods": methods,
        "shots": SHOTS,
        "seeds": SEEDS,
        "device": "cpu",
        "cache_dir": str(cache),
    }


def run_bench(work: Path, root: str) -> tuple[float, int, int]:
    cache, out = work / "cache-bench", work / "bench-out"
    path = work / "spec.yaml"
    path.write_text(yaml.safe_dump(spec(root, cache)))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "vlpeft", "-q", "bench", str(path), "--out", str(out), "--no-report"]
    subprocess.run(cmd, env=ENV, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    results = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    return seconds, sum(r["image_encoder_forwards"] for r in results), len(results)


def run_trains(work: Path, root: str, shared: bool) -> tuple[float, int, int]:
    from vlpeft.bench import parse_spec

    runs = parse_spec(spec(root, work / "unused")).runs()
    start, forwards = time.perf_counter(), 0
    for i, run in enumerate(runs):
        cache = work / ("cache-shared" if shared else f"cache-{i}")
        out = work / f"train-{'shared' if shared else 'own'}-{i}"
        cmd = [sys.executable, "-m", "vlpeft", "-q", "train", "--method", run.method.method]
        cmd += ["--model", "embedded", "--dataset", run.dataset.name, "--root", root, "--seed", str(run.seed)]
        cmd += [
            "--device",
            "cpu",
            "--cache-dir",
            str(cache),
            "--out",
            str(out),
            "--shots",
            str(run.shots or 1),
        ]
        for key, value in run.method.overrides.items():
            cmd += ["--set", f"{key}={value}"]
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        forwards += json.loads((out / "result.json").read_text())["image_encoder_forwards"]
    return time.perf_counter() - start, forwards, len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from vlpeft.world import generate_world

    variants = {
        "bench": lambda w, r: run_bench(w, r),
        "train, shared cache": lambda w, r: run_trains(w, r, shared=True),
        "train, own cache": lambda w, r: run_trains(w, r, shared=False),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    forwards: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = str(generate_world(Path(tmp) / "world", 0, DATASETS))
        for rep in range(args.repeats):
            for name, fn in variants.items():  # interleaved: each repeat runs every variant once
                work = Path(tmp) / f"{rep}-{name.replace(' ', '').replace(',', '')}"
                work.mkdir()
                seconds, count, runs = fn(work, root)
                times[name].append(seconds)
                forwards[name] = count
                print(
                    f"repeat {rep + 1}: {name:22s} {runs} runs  {seconds:7.1f} s  {count:7,d} forwards",
                    flush=True,
                )
    base_t, base_f = min(times["bench"]), forwards["bench"]
    header = (
        f"{'min s':>8s} {'median s':>9s} {'forwards':>9s} {'time / bench':>13s} {'forwards / bench':>17s}"
    )
    print(f"\n{'variant':22s} {header}")
    for name in variants:
        t = times[name]
        print(f"{name:22s} {min(t):8.1f} {statistics.median(t):9.1f} {forwards[name]:9,d} "
              f"{min(t) / base_t:12.2f}x {forwards[name] / max(base_f, 1):16.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
