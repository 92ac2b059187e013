"""Feature-head speed: fit time of every head, and cold vs warm end-to-end runs.

1. From a warm cache: a synthetic 100-class, 16-shot, 10-view, 512-d problem with a 4-shot
   validation split (the ``fewshot`` policy), so every head runs its full official recipe,
   searches included. Prints the fit time of each head.
2. End to end with a tiny backbone: the same ``vlpeft train`` run twice on one cache
   directory; the second run must do zero image-encoder forwards.

Usage: ``python benchmarks/feature_heads.py [--heads tip-adapter,lp++] [--threads 2]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vlpeft.backbones import init_tiny
from vlpeft.engine.runner import TrainConfig, run_train
from vlpeft.features import FeatureSet
from vlpeft.methods import FeatureHead, get_method, list_methods
from vlpeft.methods.params import synthetic_head_data
from vlpeft.world.datasets import world_set, write_world_set


def problem(dim: int = 512, classes: int = 100, shots: int = 16, views: int = 10, signal: float = 0.12):
    """Class centers shared by image features and (noisier) text embeddings: a task zero-shot half solves."""
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(classes, dim, generator=g)
    text_table = centers + 1.5 * torch.randn(classes, dim, generator=g)
    data = synthetic_head_data(dim, classes, shots, views=views, seed=0)
    data.text._encode = lambda prompts: text_table[[int(p.split()[-1].rstrip(".")) for p in prompts]]
    data.train.features += signal * centers[data.train.labels]
    val_labels = torch.arange(classes).repeat_interleave(4)
    val = torch.randn(1, len(val_labels), dim, generator=g) + signal * centers[val_labels]
    data.val = FeatureSet(val, val_labels)
    return data


def fit_times(names: list[str]) -> list[tuple[str, float, float]]:
    rows = []
    for name in names:
        data = problem()
        cls = get_method(name)
        head = cls()
        views = head.train_views().num_views or 1
        data.train.features = data.train.features[:views]
        torch.manual_seed(0)
        start = time.perf_counter()
        head.fit(data)
        elapsed = time.perf_counter() - start
        with torch.no_grad():
            acc = float((head.logits(data.val.view(0)).argmax(1) == data.val.labels).float().mean()) * 100
        rows.append((name, elapsed, acc))
        print(f"  {name:16s} fit {elapsed:8.2f} s   (val acc {acc:5.1f}%, {views} views)", flush=True)
    return rows


def cold_vs_warm(method: str = "tip-adapter") -> tuple[float, float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = init_tiny(tmp / "model")
        data = tmp / "data"
        ws = world_set("WorldShapes")
        write_world_set(ws, data / ws.folder, 0, per_class=(20, 4, 10))
        cfg = TrainConfig(
            method, str(model), "WorldShapes", str(data), shots=16, cache_dir=str(tmp / "cache"), device="cpu"
        )
        start = time.perf_counter()
        cold = run_train(cfg)
        cold_time = time.perf_counter() - start
        start = time.perf_counter()
        warm = run_train(cfg)
        warm_time = time.perf_counter() - start
    return cold_time, warm_time, cold["image_encoder_forwards"], warm["image_encoder_forwards"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--heads", default="", help="comma-separated method names (default: all feature heads)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = (
        args.heads.split(",")
        if args.heads
        else [
            n
            for n in list_methods()
            if issubclass(get_method(n), FeatureHead) and not get_method(n).needs_backbone
        ]
    )
    print(f"Fit time from a warm cache: C=100, K=16, V=10, D=512, 4-shot val; {args.threads} threads")
    rows = fit_times(names)
    print("\n| head | fit time (s) | val acc (%) |\n|---|---:|---:|")
    for name, elapsed, acc in rows:
        print(f"| {name} | {elapsed:.2f} | {acc:.1f} |")
    cold, warm, cold_fwd, warm_fwd = cold_vs_warm()
    print(
        "\nEnd to end, tiny CLIP, WorldShapes (12 classes x 20 train, 4 val, 10 test), tip-adapter 16-shot:"
    )
    print(f"  cold {cold:.2f} s ({cold_fwd} image-encoder forwards), warm {warm:.2f} s ({warm_fwd} forwards)")
    print(f"  warm/cold time ratio: {warm / cold:.3f}")


if __name__ == "__main__":
    main()
