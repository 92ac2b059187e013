"""``vlpeft demo``: the main job, offline, on the embedded model and world.

The demo is a bench grid (``vlpeft/bench/specs/demo.yaml``): the world datasets are generated
once into the cache, then zero-shot and every feature head run at 1, 4 and 16 shots (seed 1, CoOp
sampling, validation per ``--val-policy``) on each few-shot world dataset, and the report
(``report.md``, a self-contained ``report.html``, ``curves.png``, ``results.csv``) is written to
the output folder. One backbone and one feature cache serve every run, so each image view is
encoded once; a second ``make demo`` reuses every finished run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from vlpeft.bench import build_report, collect, parse_spec, run_grid

DEFAULT_SHOTS = (1, 4, 16)
ZERO_SHOT = "zero-shot"


@dataclass
class DemoConfig:
    out: str = "vlpeft-demo"
    shots: tuple[int, ...] = DEFAULT_SHOTS
    seed: int = 1
    datasets: tuple[str, ...] = ()  # default: every few-shot world dataset (the spec's)
    methods: tuple[str, ...] = ()  # default: the spec's (zero-shot and every feature head)
    val_policy: str = "fewshot"
    cache_dir: str | None = None
    model: str = "embedded"


def demo_spec(cfg: DemoConfig):
    """The packaged demo spec with the command line's choices applied, validated like any spec."""
    import yaml

    raw = yaml.safe_load((files("vlpeft.bench") / "specs" / "demo.yaml").read_text())
    if cfg.methods:
        raw["methods"] = list(dict.fromkeys([ZERO_SHOT, *cfg.methods]))
    if cfg.datasets:
        raw["datasets"] = list(cfg.datasets)
    raw.update(backbones=[cfg.model], shots=list(cfg.shots), seeds=[cfg.seed], val_policy=cfg.val_policy)
    raw["cache_dir"] = cfg.cache_dir
    return parse_spec(raw)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo grid and write its report; returns a summary (the tidy table and the gains)."""
    from vlpeft.world import world_set

    start = time.perf_counter()
    spec = demo_spec(cfg)
    grid = run_grid(spec, cfg.out, force=True)  # the demo's own folder: reuse finished runs of any setting
    paths = build_report(cfg.out)
    frame = collect(cfg.out)
    datasets = [d.name for d in spec.datasets]
    return {
        "grid": grid,
        "paths": paths,
        "frame": frame,
        "datasets": datasets,
        "chance": {d: 100 / len(world_set(d).classes) for d in datasets},
        "gains": gains(frame, datasets, max(cfg.shots)),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }


def gains(frame, datasets: list[str], shots: int) -> dict[str, float]:
    """Average accuracy (over ``datasets``) minus zero-shot's at ``shots`` shots, per method name, read from
    the report's own few-shot table."""
    from vlpeft.bench.report import AVERAGE, few_shot_tables

    names = list(dict.fromkeys(frame["name"]))
    table = few_shot_tables(frame, datasets, names).get(shots)
    column = AVERAGE if len(datasets) > 1 else datasets[0]
    if table is None or ZERO_SHOT not in table.mean.index or column not in table.mean:
        return {}
    averages = table.mean[column].dropna()
    return {str(k): round(float(v - averages[ZERO_SHOT]), 2) for k, v in averages.items() if k != ZERO_SHOT}
