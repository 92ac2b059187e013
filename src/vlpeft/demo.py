"""``vlpeft demo``: the main job, offline, on the embedded model and world.

Generates the world datasets (once, into the cache), then runs zero-shot and every feature-head
method at 1, 4 and 16 shots (seed 1, CoOp sampling, validation per ``--val-policy``) on each
few-shot world dataset, and writes ``results.json``, ``results.md``, ``curves.png`` and a
self-contained ``report.html`` to the output folder. One backbone and one feature cache serve
every run, so each image view is encoded once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vlpeft.io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 4, 16)


@dataclass
class DemoConfig:
    out: str = "vlpeft-demo"
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seed: int = 1
    datasets: tuple[str, ...] = ()  # default: every few-shot world dataset
    methods: tuple[str, ...] = ()  # default: every feature head
    val_policy: str = "fewshot"
    cache_dir: str | None = None
    world_seed: int = 0
    model: str = "embedded"
    extra: dict = field(default_factory=dict)


def demo_methods(requested: tuple[str, ...]) -> list[str]:
    from vlpeft.methods import FeatureHead, get_method, list_methods
    from vlpeft.report import ZERO_SHOT

    heads = [n for n in list_methods() if issubclass(get_method(n), FeatureHead)]
    names = list(requested) or [n for n in heads if get_method(n).family == "feature-head"]
    names = [get_method(n).name for n in names]  # canonical spelling; unknown names raise here
    return [ZERO_SHOT, *(n for n in names if n != ZERO_SHOT)]


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo grid; returns the summary (also written to ``out/results.json``)."""
    from vlpeft.backbones import load_backbone
    from vlpeft.engine.runner import TrainConfig, run_train
    from vlpeft.features import FeatureStore
    from vlpeft.utils import environment, track
    from vlpeft.world import FEW_SHOT_SETS, generate_world, world_set

    start = time.perf_counter()
    datasets = list(cfg.datasets or FEW_SHOT_SETS)
    methods = demo_methods(cfg.methods)
    from vlpeft.world.datasets import world_root

    root = generate_world(world_root(cfg.cache_dir, cfg.world_seed), cfg.world_seed, datasets)
    backbone = load_backbone(cfg.model)
    store = FeatureStore(backbone, cfg.cache_dir)
    jobs = [(d, m, 0 if m == "zero-shot" else k) for d in datasets for m in methods for k in cfg.shots]
    jobs = list(dict.fromkeys(jobs))  # zero-shot once per dataset
    rows = []
    quiet = logging.getLogger("vlpeft.engine")
    level, quiet.level = quiet.level, logging.WARNING
    try:
        for dataset, method, shots in track(jobs, "Demo runs"):
            train_cfg = TrainConfig(
                method,
                cfg.model,
                dataset,
                str(root),
                shots=shots or 1,
                seed=cfg.seed,
                val_policy=cfg.val_policy,
                cache_dir=cfg.cache_dir,
                device="cpu",
            )
            result = run_train(train_cfg, backbone=backbone, store=store)
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "shots": shots,
                    "accuracy": result["metrics"]["accuracy"],
                    "fit_time_s": result["fit_time_s"],
                    "image_encoder_forwards": result["image_encoder_forwards"],
                }
            )
            logger.info(
                "%-18s %-15s %2s-shot %6.2f%%  (fit %.1f s)",
                dataset,
                method,
                shots or "0",
                rows[-1]["accuracy"],
                result["fit_time_s"],
            )
    finally:
        quiet.level = level
    chance = {d: 100 / len(world_set(d).classes) for d in datasets}
    summary = {
        "config": asdict(cfg),
        "datasets": datasets,
        "methods": methods,
        "chance": chance,
        "rows": rows,
        "backbone": backbone.describe(),
        "world_root": str(root),
        "environment": environment(),
        "image_encoder_forwards": store.image_encoder_forwards,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    summary["gains_16"] = gains(rows, datasets, max(cfg.shots))
    write_outputs(Path(cfg.out), summary, cfg)
    return summary


def gains(rows: list[dict], datasets: list[str], shots: int) -> dict[str, float]:
    """Average accuracy minus zero-shot's, at ``shots`` shots, per method."""
    from vlpeft.report import ZERO_SHOT, averaged, lookup, pivot

    table = pivot(averaged(rows, datasets))
    zero = lookup(table, ZERO_SHOT, "average", shots)
    methods = sorted({r["method"] for r in rows} - {ZERO_SHOT})
    return {
        m: round(lookup(table, m, "average", shots) - zero, 2)
        for m in methods
        if zero is not None and lookup(table, m, "average", shots) is not None
    }


def write_outputs(out: Path, summary: dict[str, Any], cfg: DemoConfig) -> None:
    from vlpeft.report import markdown, plot_curves, write_html

    out.mkdir(parents=True, exist_ok=True)
    rows, datasets, methods = summary["rows"], summary["datasets"], summary["methods"]
    write_json_atomic(out / "results.json", summary)
    tables = "\n\n".join(markdown(rows, datasets, methods, k) for k in cfg.shots)
    chance = " | ".join(f"{d} {v:.1f}" for d, v in summary["chance"].items())
    write_text_atomic(out / "results.md", f"# vlpeft demo\n\nChance (%): {chance}\n\n{tables}\n")
    title = f"vlpeft demo: embedded CLIP on the world datasets (seed {cfg.seed}, val policy {cfg.val_policy})"
    plot = plot_curves(rows, datasets, methods, list(cfg.shots), out / "curves.png", title)
    notes = [
        f"Backbone: {summary['backbone']['spec']} ({summary['backbone']['parameters']:,} parameters, "
        f"fingerprint {summary['backbone']['fingerprint'][:12]})",
        f"Few-shot samples: CoOp's sampler, seed {cfg.seed}; validation policy: {cfg.val_policy}; "
        "test labels read once, after fitting.",
        "Chance levels (%): " + chance,
        f"Image-encoder forwards this run: {summary['image_encoder_forwards']:,}; "
        f"wall time {summary['wall_time_s']} s.",
    ]
    write_html(out / "report.html", title, rows, datasets, methods, list(cfg.shots), plot, notes)
