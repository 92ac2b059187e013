"""The ``vlpeft`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlpeft import __version__
from vlpeft.errors import VlpeftError

app = typer.Typer(
    name="vlpeft",
    help="Parameter-efficient adaptation of vision-language models (CLIP, SigLIP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(help="List, check and sample datasets.", no_args_is_help=True)
models_app = typer.Typer(help="Create and inspect backbone checkpoints.", no_args_is_help=True)
methods_app = typer.Typer(help="List the adaptation methods; show one's settings.", no_args_is_help=True)
world_app = typer.Typer(
    help="vlpeft's generated world: datasets for offline demos and tests.", no_args_is_help=True
)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(methods_app, name="methods")
app.add_typer(world_app, name="world")

# soft_wrap: long lines (markdown tables, messages) are never broken at the terminal's width (80 when
# the output is not a terminal), so piped or logged output stays machine-readable.
out_console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class Family(str, Enum):
    clip = "clip"
    siglip = "siglip"


class Subsample(str, Enum):
    all = "all"
    base = "base"
    new = "new"


class Templates(str, Enum):
    single = "single"
    ensemble = "ensemble"
    imagenet80 = "imagenet80"


class ValPolicy(str, Enum):
    none = "none"
    fewshot = "fewshot"
    full = "full"


class Split(str, Enum):
    train = "train"
    val = "val"
    test = "test"


# Options shared by several commands.
ModelOpt = Annotated[str, typer.Option("--model", help="Backbone spec: hf:<id>, local:<dir> or a directory.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", help="Dataset name (see `vlpeft datasets list`).")]
RootOpt = Annotated[Path, typer.Option("--root", help="Data root (the folder holding the dataset folder).")]
SubsampleOpt = Annotated[Subsample, typer.Option("--subsample", help="Classes to keep: all, base or new.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Data-loading processes.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOpt = Annotated[str | None, typer.Option("--dtype", help="Weights dtype: float32, float16, bfloat16.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing result.json.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _version(value: bool) -> None:
    if value:
        out_console.print(f"vlpeft {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the traceback of an unexpected error on the terminal.")
    ] = False,
) -> None:
    """Set up logging for every command."""
    _STATE["debug"] = debug
    from rich.logging import RichHandler

    from vlpeft.utils import set_progress

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=err_console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("vlpeft").setLevel(level)
    if quiet:
        set_progress(False)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a core dependency
        pass


# ---- datasets ---------------------------------------------------------------------------


@datasets_app.command("list")
def datasets_list(as_json: JsonOpt = False) -> None:
    """List the registered datasets."""
    from vlpeft.data import DATASETS

    rows = [
        {"name": n, "folder": s.dataset_dir, "test_only": s.test_only, "description": s.description}
        for n, s in ((n, DATASETS.get(n)) for n in DATASETS.names())
    ]
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    table = Table("name", "folder under --root", "splits", "description")
    for r in rows:
        table.add_row(
            r["name"],
            r["folder"] or "(--root itself)",
            "test" if r["test_only"] else "train/val/test",
            r["description"],
        )
    out_console.print(table)


@datasets_app.command("check")
def datasets_check(
    name: Annotated[str, typer.Argument(help="Dataset name (see `vlpeft datasets list`).")],
    root: RootOpt,
    as_json: JsonOpt = False,
    verify_images: Annotated[
        bool,
        typer.Option("--verify-images", help="Decode every listed image (finds truncated/non-image files)."),
    ] = False,
) -> None:
    """Report what is missing from a dataset folder and the layout expected."""
    from dataclasses import asdict

    from vlpeft.data import get_dataset_spec

    report = get_dataset_spec(name).check(root, verify_images=verify_images)
    if as_json:
        out_console.print_json(json.dumps({**asdict(report), "ok": report.ok}))
    else:
        _print_check(report)
    if not report.ok:
        raise typer.Exit(1)


def _print_check(report) -> None:
    status = "[green]OK[/green]" if report.ok else "[red]PROBLEMS[/red]"
    out_console.print(f"{report.dataset} at {report.dataset_dir or report.root}: {status}")
    if report.num_classes is not None:
        sizes = ", ".join(f"{k} {v}" for k, v in report.sizes.items())
        out_console.print(f"  {report.num_classes} classes; {sizes} images")
    for split, missing in report.missing.items():
        if missing:
            out_console.print(f"  [red]{len(missing)} {split} images missing[/red], e.g. {missing[0]}")
    for split, corrupt in report.corrupt.items():
        if corrupt:
            shown = ", ".join(corrupt[:5])
            out_console.print(f"  [red]{len(corrupt)} {split} images do not decode[/red]: {shown}")
    for problem in report.problems:
        out_console.print(f"  [red]{problem}[/red]")
    if not report.ok:
        out_console.print(f"Expected layout:\n{report.layout}", markup=False)


@datasets_app.command("fewshot")
def datasets_fewshot(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    root: RootOpt,
    shots: Annotated[int, typer.Option("--shots", help="Images per class (K).", min=1)],
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (CoOp's cfg.SEED).")] = 1,
    subsample: SubsampleOpt = Subsample.all,
) -> None:
    """Print the K-shot train and val images (paths as in the split file, in sampling order) as JSON."""
    from vlpeft.data import load_dataset

    ds = load_dataset(name, root, shots=shots, seed=seed, subsample=subsample.value)
    sys.stdout.write(
        json.dumps({"train": [d.relpath for d in ds.train], "val": [d.relpath for d in ds.val]}) + "\n"
    )


@datasets_app.command("make-split")
def datasets_make_split(
    name: Annotated[
        str, typer.Argument(help="Dataset name (Caltech101, DescribableTextures, EuroSAT, Food101).")
    ],
    root: RootOpt,
    seed: Annotated[int, typer.Option("--seed", help="Shuffling seed.")] = 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing split file.")] = False,
) -> None:
    """Create a train/val/test split file from raw class folders (CoOp's 50/20/30 rule)."""
    from vlpeft.data import get_dataset_spec

    spec = get_dataset_spec(name)
    if not hasattr(spec, "make_split"):
        raise VlpeftError(f"{spec.name} is not described by a split file; nothing to create.")
    path = spec.make_split(root, seed=seed, overwrite=overwrite)
    out_console.print(f"Wrote {path}")


# ---- models -----------------------------------------------------------------------------


@models_app.command("init-tiny")
def models_init_tiny(
    directory: Annotated[Path, typer.Argument(help="Output directory (must not exist or be empty).")],
    family: Annotated[Family, typer.Option("--family", help="Model family.")] = Family.clip,
    seed: Annotated[int, typer.Option("--seed", help="Weight initialisation seed.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing directory.")] = False,
) -> None:
    """Write a tiny randomly initialised checkpoint (weights, tokenizer, processor config)."""
    from vlpeft.backbones import init_tiny

    path = init_tiny(directory, family=family.value, seed=seed, overwrite=overwrite)
    out_console.print(f"Wrote a tiny {family.value} checkpoint to {path}; load it with 'local:{path}'.")


@models_app.command("info")
def models_info(
    spec: Annotated[str, typer.Argument(help="Backbone spec: hf:<id>, local:<dir> or a directory.")],
) -> None:
    """Load a backbone and print what vlpeft sees (family, sizes, transform, fingerprint)."""
    from vlpeft.backbones import load_backbone

    backbone = load_backbone(spec)
    out_console.print_json(json.dumps({**backbone.describe(), "preprocess": backbone.preprocess.to_dict()}))


# ---- methods ----------------------------------------------------------------------------


@methods_app.command("list")
def methods_list(
    as_json: JsonOpt = False,
    embed_dim: Annotated[int, typer.Option("--dim", help="Feature size D for the parameter count.")] = 512,
    classes: Annotated[int, typer.Option("--classes", help="Classes C for the parameter count.")] = 100,
    shots: Annotated[int, typer.Option("--shots", help="Shots K for the parameter count.")] = 16,
    text_width: Annotated[int, typer.Option("--text-width", help="Text width W for prompt learners.")] = 512,
    vision_width: Annotated[
        int, typer.Option("--vision-width", help="Vision width for visual prompts.")
    ] = 768,
) -> None:
    """List methods: name, family, paper, and trainable parameters for a D-dim, C-class, K-shot problem."""
    from vlpeft.methods import METHODS
    from vlpeft.methods.params import trainable_parameter_count

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        count = trainable_parameter_count(cls, embed_dim, classes, shots, text_width, vision_width)
        rows.append({"name": name, "family": cls.family, "paper": cls.paper, "trainable_parameters": count})
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    table = Table("name", "family", f"trainable params (D={embed_dim}, C={classes}, K={shots})", "paper")
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['trainable_parameters']:,}", r["paper"])
    out_console.print(table)


@methods_app.command("show")
def methods_show(
    name: Annotated[str, typer.Argument(help="Method name (see `vlpeft methods list`).")],
    as_json: JsonOpt = False,
) -> None:
    """Every setting of a method (type, default, valid range, note), its presets, sources and needs."""
    from vlpeft.methods.describe import describe_method

    info = describe_method(name)
    if as_json:
        out_console.print_json(json.dumps(info, default=str))
        return
    out_console.print(f"[bold]{info['name']}[/bold] ({info['family']}) {info['paper']}")
    out_console.print(info["summary"], markup=False)
    table = Table("setting", "type", "default", "valid", "note")
    for s in info["settings"]:
        table.add_row(s["name"], s["type"], repr(s["default"]), s["range"], s["note"])
    out_console.print(table)
    for source in info["defaults_from"]:
        out_console.print(f"defaults from {source}", markup=False)
    for dataset, preset in info["dataset_presets"].items():
        out_console.print(f"preset {dataset}: {preset}", markup=False)
    params = info["trainable_parameters"]
    out_console.print(
        f"trainable parameters (D={params['D']}, C={params['C']}, K={params['K']}): {params['count']:,}"
    )
    for need in info["needs"]:
        out_console.print(f"needs {need}", markup=False)
    out_console.print("change a setting with --set NAME=VALUE (`vlpeft train`) or 'set:' in a bench spec")


# ---- training and prediction ---------------------------------------------------------------------


@app.command("train")
def train_command(
    method: Annotated[str, typer.Option("--method", help="Method name (see `vlpeft methods list`).")],
    model: ModelOpt,
    dataset: DatasetOpt,
    root: RootOpt,
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")],
    shots: Annotated[
        int, typer.Option("--shots", help="Images per class (CoOp sampling); 0 = all.", min=0)
    ] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Few-shot sampling and training seed.")] = 1,
    val_policy: Annotated[
        ValPolicy, typer.Option("--val-policy", help="What searches may look at: none | fewshot | full.")
    ] = ValPolicy.fewshot,
    subsample: SubsampleOpt = Subsample.all,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="Method setting key=value (repeatable).")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Feature cache (default: $VLPEFT_CACHE_DIR or ~/.cache/vlpeft)."),
    ] = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Adapt a backbone with METHOD on a few-shot split, evaluate on test, write a shippable run directory."""
    from vlpeft.engine.runner import TrainConfig, run_train
    from vlpeft.methods.base import parse_overrides

    cfg = TrainConfig(
        method,
        model,
        dataset,
        str(root),
        shots or None,
        seed,
        val_policy.value,
        subsample.value,
        parse_overrides(settings or []),
        str(cache_dir) if cache_dir else None,
        batch_size,
        workers,
        device,
        dtype,
    )
    result = run_train(cfg, out, overwrite=overwrite)
    from vlpeft.training.distributed import is_main_process

    if not is_main_process():  # under torchrun/accelerate only the first process reports
        return
    label = f"{shots}-shot" if shots else "all training images"
    _print_metrics(f"{method} on {dataset} ({label}, seed {seed})", result)
    out_console.print(f"image-encoder forwards: {result['image_encoder_forwards']}; wrote {out}")


@app.command("predict")
def predict_command(
    run: Annotated[Path, typer.Option("--run", help="A run directory written by `vlpeft train`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per image.", min=1)] = 5,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Classify images with a trained run (loads only the backbone and the saved adapter)."""
    from vlpeft.engine.runner import predict
    from vlpeft.utils import resolve_device

    results = predict(run, list(images), top_k=top_k, device=resolve_device(device))
    failed = [r for r in results if "error" in r]
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        for item in results:
            if "error" in item:
                continue
            out_console.print(item["image"])
            for entry in item["top"]:
                out_console.print(f"  {entry['probability']:7.2%}  {entry['class']}")
    if failed:
        lines = "\n".join(f"  {r['error']}" for r in failed)
        raise VlpeftError(f"{len(failed)} of {len(results)} images could not be read:\n{lines}")


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Option("--run", help="A run directory written by `vlpeft train`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the transformers checkpoint.")],
    merge: Annotated[
        bool, typer.Option("--merge", help="Fold LoRA/DoRA/SSF updates into the weights.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out.")] = False,
) -> None:
    """Write a run as a standard transformers checkpoint plus its class head (loads without vlpeft)."""
    from vlpeft.export import export_run

    written = export_run(run, out, merge=merge, overwrite=overwrite)
    out_console.print(
        f"wrote {written['out']}: {written['method']}, {written['classes']} classes"
        f"{' (merged)' if written['merged'] else ''}"
    )


# ---- evaluation ---------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for result.json.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Backbone spec, for zero-shot evaluation.")
    ] = None,
    run: Annotated[Path | None, typer.Option("--run", help="A trained run directory to evaluate.")] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset name (default with --run: its own).")
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="Data root (default with --run: its own).")
    ] = None,
    split: Annotated[Split, typer.Option("--split", help="Split to evaluate.")] = Split.test,
    templates: Annotated[
        Templates, typer.Option("--templates", help="Prompt templates (zero-shot).")
    ] = Templates.single,
    subsample: Annotated[
        Subsample | None,
        typer.Option("--subsample", help="Classes: all, base or new (default with --run: its own)."),
    ] = None,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Feature cache.")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Zero-shot evaluation of --model, or of a trained --run (e.g. on new classes); writes result.json."""
    if (model is None) == (run is None):
        raise VlpeftError("Give exactly one of --model (zero-shot evaluation) or --run (a trained run).")
    if run is not None:
        from vlpeft.engine.runner import evaluate_run

        result = evaluate_run(
            run,
            dataset,
            str(root) if root else None,
            subsample.value if subsample else None,
            split.value,
            out,
            str(cache_dir) if cache_dir else None,
            device,
            overwrite,
        )
        _print_run_eval(result)
        out_console.print(f"Wrote {out / 'result.json'}")
        return
    if dataset is None or root is None:
        raise VlpeftError("Zero-shot evaluation needs --dataset and --root.")
    from vlpeft.engine.evaluate import EvalConfig, run_zero_shot_eval

    cfg = EvalConfig(
        model,
        dataset,
        str(root),
        split.value,
        templates.value,
        (subsample or Subsample.all).value,
        batch_size,
        workers,
        device,
        dtype,
    )
    result = run_zero_shot_eval(cfg, out, overwrite=overwrite)
    _print_metrics(f"zero-shot {dataset} ({split.value})", result)
    out_console.print(f"Wrote {out / 'result.json'}")


def _print_run_eval(result: dict) -> None:
    table = Table(
        "metric", "value", title=f"{result['method']} on {result['dataset']} ({result['subsample']} classes)"
    )
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.2f}")
    for key, value in result.get("base_to_new", {}).items():
        table.add_row(f"base-to-new {key}", f"{value:.2f}")
    out_console.print(table)


def _print_metrics(title: str, result: dict) -> None:
    table = Table("metric", "value", title=title)
    for key, value in result["metrics"].items():
        table.add_row(key, f"{value:.2f}")
    table.add_row("images", str(result["counts"]["samples"]))
    table.add_row("wall time (s)", f"{result['wall_time_s']:.1f}")
    out_console.print(table)


@world_app.command("generate")
def world_generate(
    root: RootOpt,
    seed: Annotated[int, typer.Option("--seed", help="World seed (the same seed gives the same bytes).")] = 0,
    only: Annotated[list[str] | None, typer.Option("--only", help="Generate only these datasets.")] = None,
) -> None:
    """Write the world datasets (CoOp layout, split files included) under ROOT."""
    from vlpeft.world import WORLD_SETS, generate_world

    names = [n for n in (only or []) if n]
    unknown = sorted(set(names) - {w.name for w in WORLD_SETS})
    if unknown:
        raise VlpeftError(f"Unknown world dataset(s) {unknown}. Available: {[w.name for w in WORLD_SETS]}")
    generate_world(root, seed, names or None)
    for ws in WORLD_SETS:
        if not names or ws.name in names:
            out_console.print(
                f"{ws.name:20s} {root / ws.folder}  ({len(ws.classes)} classes; echoes {ws.echoes})"
            )


class Executor(str, Enum):
    local = "local"
    ray = "ray"


@app.command("bench")
def bench_command(
    spec: Annotated[
        Path, typer.Argument(help="The grid: a YAML spec (see vlpeft/bench/specs/ for examples).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Results directory (resumable; one spec per directory).")
    ],
    plan: Annotated[
        bool, typer.Option("--plan", help="Print the expanded grid and exit; nothing is run.")
    ] = False,
    executor: Annotated[
        Executor, typer.Option("--executor", help="local (processes here) or ray.")
    ] = Executor.local,
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes of the local executor.")] = 1,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster to join (e.g. auto); default: a local instance."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run in a directory that holds another spec's results.")
    ] = False,
    report: Annotated[
        bool, typer.Option("--report/--no-report", help="Write the report when the grid ends.")
    ] = True,
) -> None:
    """Run a grid of methods x datasets x shots x seeds under one protocol; skip what is done."""
    from vlpeft.bench import build_report, load_spec, run_grid
    from vlpeft.bench.plan import print_plan

    grid = load_spec(spec)
    if plan:
        print_plan(grid, out, out_console)
        return
    result = run_grid(grid, out, executor.value, jobs, address, force)
    out_console.print(
        f"{result.runs} runs: {len(result.done)} done now, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed, {len(result.busy)} taken by another runner "
        f"({result.wall_time_s:.0f} s, {result.image_encoder_forwards:,} image-encoder forwards)"
    )
    if report:
        paths = build_report(out)
        out_console.print(f"Wrote {paths['report.html']}, {paths['report.md']}, {out / 'results.csv'}")
    if result.failed:
        lines = "\n".join(f"  {k}: {e}" for k, e in result.failed.items())
        raise VlpeftError(f"{len(result.failed)} runs failed (details in {out / 'failed'}):\n{lines}")


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Argument(help="A directory written by `vlpeft bench`.")],
) -> None:
    """Tables (mean ± std over seeds), curves and costs of a bench directory: report.md/.html, tables/."""
    from vlpeft.bench import build_report

    paths = build_report(out)
    out_console.print((out / "report.md").read_text(), markup=False)
    out_console.print(f"Wrote {', '.join(str(p) for p in paths.values())}")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Output folder for the tables, plot and report.")] = Path(
        "vlpeft-demo"
    ),
    shots: Annotated[str, typer.Option("--shots", help="Comma-separated shot counts.")] = "1,4,16",
    seed: Annotated[int, typer.Option("--seed", help="Few-shot sampling seed.")] = 1,
    datasets: Annotated[
        str, typer.Option("--datasets", help="Comma-separated world datasets (default: all).")
    ] = "",
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated methods (default: all heads).")
    ] = "",
    val_policy: Annotated[
        ValPolicy, typer.Option("--val-policy", help="none | fewshot | full.")
    ] = ValPolicy.fewshot,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Feature and world cache.")] = None,
) -> None:
    """Adapt the embedded CLIP with every feature head on the world datasets; tables, curves, HTML report."""
    from vlpeft.demo import ZERO_SHOT, DemoConfig, run_demo

    def _split(text: str) -> tuple[str, ...]:
        return tuple(t.strip() for t in text.split(",") if t.strip())

    try:
        shot_list = tuple(int(k) for k in _split(shots))
    except ValueError:
        raise VlpeftError(f"--shots must be comma-separated integers, got {shots!r}.") from None
    cfg = DemoConfig(
        str(out),
        shot_list,
        seed,
        _split(datasets),
        _split(methods),
        val_policy.value,
        str(cache_dir) if cache_dir else None,
    )
    summary = run_demo(cfg)
    out_console.print(summary["paths"]["report.md"].read_text(), markup=False)
    chance = ", ".join(f"{d} {v:.1f}" for d, v in summary["chance"].items())
    out_console.print(f"chance (%): {chance}")
    if summary["gains"]:
        best = sorted(summary["gains"].items(), key=lambda kv: -kv[1])
        text = ", ".join(f"{m} {g:+.1f}" for m, g in best if m != ZERO_SHOT)
        out_console.print(
            f"{max(shot_list)}-shot gain over {ZERO_SHOT} (points, averaged over datasets): {text}"
        )
    grid = summary["grid"]
    out_console.print(f"{len(grid.done)} runs done now, {len(grid.skipped)} reused from {out}")
    if grid.failed:
        raise VlpeftError(f"{len(grid.failed)} demo runs failed (details in {out / 'failed'}).")
    out_console.print(
        f"Wrote {out / 'report.html'}, {out / 'curves.png'}, {out / 'report.md'} "
        f"in {summary['wall_time_s']:.0f} s"
    )


_STATE = {"debug": False}


def main() -> None:
    """Entry point: user errors print one clear message and exit with status 2; anything unexpected
    prints one line naming where its traceback was written (``--debug`` shows it) and exits with 1."""
    try:
        app()
    except VlpeftError as err:
        err_console.print(f"[bold red]error:[/bold red] {err}", markup=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # the safety net: no traceback on the terminal unless --debug
        import traceback

        text = traceback.format_exc()
        where = _write_crash_log(text)
        if _STATE["debug"]:
            err_console.print(text, markup=False, highlight=False)
        hint = f"the traceback is in {where}" if where else "rerun with --debug for the traceback"
        err_console.print(
            f"[bold red]error:[/bold red] unexpected {type(err).__name__}: {err} ({hint}; "
            "--debug shows it here). If this looks like a bug in vlpeft, please report it with that file.",
            markup=True,
            highlight=False,
        )
        sys.exit(1)


def _write_crash_log(text: str) -> str | None:
    """The traceback of an unexpected error, in the cache's logs/ folder; None if it cannot be written."""
    import time

    from vlpeft.features import default_cache_dir
    from vlpeft.io import write_text_atomic

    path = default_cache_dir() / "logs" / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        write_text_atomic(path, " ".join(sys.argv) + "\n\n" + text)
    except OSError:
        return None
    return str(path)


if __name__ == "__main__":
    main()
