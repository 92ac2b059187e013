"""``vlpeft bench --plan``: the expanded grid, what is done, and the image-encoder forwards it needs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vlpeft.bench.grid import Settings, is_done, prepare_world, train_config
from vlpeft.bench.spec import BenchSpec, Run
from vlpeft.training.loop import iterations_per_epoch


def estimate_forwards(spec: BenchSpec, runs: list[Run], settings: Settings) -> dict[str, int]:
    """Image-encoder forwards the runs need from a cold cache: cached (image, view) pairs counted once
    per backbone, plus what methods that see pixels encode during training and evaluation (an estimate:
    their steps x batch size)."""
    from vlpeft.data import get_dataset_spec
    from vlpeft.engine.runner import build_method, load_run_dataset, needs_pixels

    cached: set[tuple] = set()
    pixels = 0
    loaded: dict[tuple[str, str], object] = {}

    def dataset(name: str, root: str):
        if (name, root) not in loaded:
            loaded[(name, root)] = get_dataset_spec(name).load(root)
        return loaded[(name, root)]

    for run in runs:
        cfg = train_config(run, settings)
        data, val = load_run_dataset(cfg)
        method = build_method(cfg, data)
        test = data.split("test")
        if needs_pixels(method):
            cfg_m = method.config
            per_shot = getattr(cfg_m, "iters_per_shot", 0)  # module adapters: CLIP-LoRA's n_iters x shots
            epoch_steps = iterations_per_epoch(len(data.train), cfg_m.batch_size, cfg_m.batches_per_epoch)
            steps = per_shot * run.shots if per_shot and run.shots else cfg_m.epochs * epoch_steps
            pixels += steps * cfg_m.batch_size + len(test)
        else:
            views = method.train_views()
            keys = [(-1, None)] if views.include_eval else []
            keys += [(v, views.augment) for v in range(views.num_views if views.augment else 0)]
            if getattr(method, "needs_train", True):
                cached |= {(run.backbone, i.impath, k, views.tokens) for i in data.train for k in keys}
                cached |= {(run.backbone, i.impath, (-1, None), views.tokens) for i in val}
            cached |= {(run.backbone, i.impath, (-1, None), views.tokens) for i in test}
        for ev in run.evals:
            target = dataset(ev.dataset, settings.root(ev.root)).subsample_classes(ev.subsample)
            if needs_pixels(method):
                pixels += len(target.test)
            else:
                cached |= {(run.backbone, i.impath, (-1, None), False) for i in target.test}
    return {"feature cache": len(cached), "pixel methods (estimate)": pixels}


def print_plan(spec: BenchSpec, out: Path, console) -> None:
    runs = spec.runs()
    settings = Settings.of(spec, Path(out), prepare_world(spec))
    done = [r for r in runs if is_done(Path(out), r)]
    todo = len(runs) - len(done)
    console.print(
        f"[bold]{spec.name}[/bold]: {spec.protocol}, {len(runs)} runs ({len(done)} done, {todo} to run)"
    )
    per_method = Counter(r.method.name for r in runs)
    console.print("  per method: " + ", ".join(f"{m} {n}" for m, n in per_method.items()))
    console.print(
        f"  backbones {len(spec.backbones)} x datasets {len(spec.datasets) or 1} x shots {spec.shots} "
        f"x seeds {spec.seeds}" + (f"; targets {[t.name for t in spec.targets]}" if spec.targets else "")
    )
    forwards = estimate_forwards(spec, [r for r in runs if r not in done], settings)
    console.print(
        "  image-encoder forwards still needed: "
        + ", ".join(f"{k} {v:,}" for k, v in forwards.items())
        + " (the feature cache may hold some already)"
    )
    for run in runs[:50]:
        console.print(f"  {'done' if run in done else 'todo'}  {run.key}", markup=False)
    if len(runs) > 50:
        console.print(f"  ... and {len(runs) - 50} more")
