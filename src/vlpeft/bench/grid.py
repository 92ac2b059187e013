"""Running a bench grid: one run = ``run_train`` then its evaluations (``evaluate_run``), in a
private temporary directory renamed into place when everything is written.

Layout of the output directory::

    DIR/bench.json                   the validated spec (a DIR belongs to one spec)
    DIR/runs/<key>/                  a finished run: config.json, result.json, adapter.*, log.txt,
                                     bench_run.json, evals/<target>/result.json
    DIR/failed/<key>.json            the error of a run that failed (removed when it later succeeds)
    DIR/locks/<key>.lock             per-run claims (flock): two runners on one DIR never run the
                                     same run, and a killed runner's claim dies with it
    DIR/results.csv, results.parquet the tidy table of every finished run

A run whose directory exists is skipped, so a grid killed at any point resumes where it
stopped; a half-finished run leaves only a ``.tmp-*`` directory, removed by the next claim.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpeft.bench.spec import WORLD_ROOT, BenchSpec, Run
from vlpeft.bench.table import BENCH_FILE, EVALS, FAILED, LOCKS, RUN_FILE, RUNS, write_results
from vlpeft.errors import ConfigError
from vlpeft.io import file_lock, write_json_atomic
from vlpeft.runs import RESULT_FILE

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Settings:
    """What every run of a grid shares (picklable: it travels to worker processes and Ray tasks)."""

    out: str
    val_policy: str
    device: str
    dtype: str | None
    batch_size: int
    cache_dir: str | None
    world_root: str | None = None

    @classmethod
    def of(cls, spec: BenchSpec, out: Path, world_root: str | None) -> Settings:
        return cls(
            str(out), spec.val_policy, spec.device, spec.dtype, spec.batch_size, spec.cache_dir, world_root
        )

    def root(self, root: str) -> str:
        return self.world_root if root == WORLD_ROOT and self.world_root else root


@dataclass
class GridReport:
    runs: int
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    image_encoder_forwards: int = 0


# ---- the output directory ----------------------------------------------------------------------


def run_dir(out: Path, run: Run) -> Path:
    return out / RUNS / run.key


def is_done(out: Path, run: Run) -> bool:
    final = run_dir(out, run)
    return (final / RESULT_FILE).is_file() and all(
        (final / EVALS / e.label / RESULT_FILE).is_file() for e in run.evals
    )


def check_out(spec: BenchSpec, out: Path, force: bool) -> None:
    """Refuse a DIR that holds another spec's results (unless ``force``) or that is not a directory."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' exists and is not a directory.")
    saved = out / BENCH_FILE
    if not saved.is_file():
        if out.is_dir() and any(out.iterdir()) and not force:
            raise ConfigError(f"'{out}' is not empty and holds no bench results; choose another --out.")
        return
    try:
        previous = json.loads(saved.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        previous = None
    if previous != spec.fingerprint() and not force:
        raise ConfigError(
            f"'{out}' holds the results of another spec ({saved}). Choose another --out, or pass --force "
            "to run this spec there (finished runs with identical settings are reused)."
        )


def write_spec(spec: BenchSpec, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / BENCH_FILE, {"fingerprint": spec.fingerprint(), "spec": spec.to_dict()})


def saved_spec(out: Path) -> dict[str, Any]:
    path = out / BENCH_FILE
    if not path.is_file():
        raise ConfigError(
            f"'{out}' holds no bench results (no {BENCH_FILE}); pass the --out of `vlpeft bench`."
        )
    return json.loads(path.read_text())["spec"]


def claim(out: Path, key: str):
    """An exclusive, non-blocking claim on one run (yields whether it is ours); it dies with its process."""
    (out / LOCKS).mkdir(parents=True, exist_ok=True)
    return file_lock(out / LOCKS / f"{key}.lock", wait=False)


# ---- one run -----------------------------------------------------------------------------------

_PROCESS: dict[tuple, Any] = {}  # backbones and feature stores, loaded once per process


def _backbone_and_store(spec: str, settings: Settings):
    from vlpeft.backbones import load_backbone
    from vlpeft.features import FeatureStore
    from vlpeft.training.distributed import local_device
    from vlpeft.utils import resolve_device

    key = (spec, settings.device, settings.dtype, settings.cache_dir, settings.batch_size)
    if key not in _PROCESS:
        backbone = load_backbone(
            spec, device=local_device(resolve_device(settings.device)), dtype=settings.dtype
        )
        _PROCESS[key] = (backbone, FeatureStore(backbone, settings.cache_dir, settings.batch_size))
    return _PROCESS[key]


def train_config(run: Run, settings: Settings):
    """The ``vlpeft train`` settings of a run (a bench run and a hand-typed train are the same run)."""
    from vlpeft.engine.runner import TrainConfig

    return TrainConfig(
        method=run.method.method,
        model=run.backbone,
        dataset=run.dataset.name,
        root=settings.root(run.dataset.root),
        shots=run.shots or None,
        seed=run.seed,
        val_policy=settings.val_policy,
        subsample=run.subsample,
        overrides=dict(run.method.overrides),
        cache_dir=settings.cache_dir,
        batch_size=settings.batch_size,
        device=settings.device,
        dtype=settings.dtype,
    )


def execute(run: Run, settings: Settings) -> dict[str, Any]:
    """Train and evaluate one run into ``runs/<key>``; never raises (a failure is recorded)."""
    out = Path(settings.out)
    start = time.perf_counter()
    with claim(out, run.key) as mine:
        if not mine:
            return {"key": run.key, "status": "busy"}
        if is_done(out, run):
            return {"key": run.key, "status": "skipped"}
        for stale in (out / RUNS).glob(f".tmp-{run.key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out / RUNS / f".tmp-{run.key}-{uuid.uuid4().hex[:8]}"
        try:
            forwards = _train_and_evaluate(run, settings, tmp)
            final = run_dir(out, run)
            if final.exists():  # an incomplete earlier result (an evaluation was added): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
            (out / FAILED / f"{run.key}.json").unlink(missing_ok=True)
            return {
                "key": run.key,
                "status": "done",
                "seconds": time.perf_counter() - start,
                "forwards": forwards,
            }
        except Exception as err:  # one run's failure must not stop the grid
            shutil.rmtree(tmp, ignore_errors=True)
            message = f"{type(err).__name__}: {err}"
            with contextlib.suppress(OSError):
                write_json_atomic(
                    out / FAILED / f"{run.key}.json",
                    {"run": run.describe(), "error": message, "traceback": traceback.format_exc()},
                )
            return {"key": run.key, "status": "failed", "error": message}


def _train_and_evaluate(run: Run, settings: Settings, tmp: Path) -> int:
    from vlpeft.engine.runner import evaluate_run, run_train

    backbone, store = _backbone_and_store(run.backbone, settings)
    before = backbone.image_forwards  # the store's extractions and prompt learners' forwards
    result = run_train(train_config(run, settings), tmp, backbone=backbone, store=store)
    own_copy = result["config"]["method_family"] == "module-adapter"  # encodes with a private copy
    for ev in run.evals:
        evaluate_run(
            tmp,
            dataset=ev.dataset,
            root=settings.root(ev.root),
            subsample=ev.subsample,
            out=tmp / EVALS / ev.label,
            cache_dir=settings.cache_dir,
            device=settings.device,
            classes=ev.classes,
            backbone=backbone,
            store=store,
        )
    write_json_atomic(tmp / RUN_FILE, run.describe())
    return backbone.image_forwards - before + (result["image_encoder_forwards"] if own_copy else 0)


# ---- executors ---------------------------------------------------------------------------------


def prepare_world(spec: BenchSpec) -> str | None:
    """Generate the embedded world once (in the cache) if the spec uses it; its root."""
    if not spec.uses_world:
        return None
    from vlpeft.world import generate_world
    from vlpeft.world.datasets import world_root

    names = [d.name for d in spec.all_datasets]
    return str(generate_world(world_root(spec.cache_dir, 0), 0, names))


def run_grid(
    spec: BenchSpec,
    out: str | Path,
    executor: str = "local",
    jobs: int = 1,
    address: str | None = None,
    force: bool = False,
) -> GridReport:
    """Run every unfinished run of ``spec`` into ``out``; failures are recorded, the grid goes on."""
    out = Path(out)
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {list(EXECUTORS)}, got {executor!r}.")
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}.")
    check_out(spec, out, force)
    runs = spec.runs()
    ray = _start_ray(address, spec) if executor == "ray" else None
    write_spec(spec, out)
    settings = Settings.of(spec, out, prepare_world(spec))
    report = GridReport(len(runs))
    todo = [r for r in runs if not is_done(out, r)]
    report.skipped = [r.key for r in runs if r not in todo]
    start = time.perf_counter()
    with _progress(len(runs), len(report.skipped)) as advance, _quiet_console():
        if ray is not None:
            results = _ray_results(ray, todo, settings, spec)
        elif jobs > 1:
            results = _pool_results(todo, settings, jobs)
        else:
            results = (execute(r, settings) for r in todo)
        for result in results:
            _record(report, result)
            advance(result["status"])
    report.wall_time_s = round(time.perf_counter() - start, 2)
    write_results(out)
    return report


def _record(report: GridReport, result: dict[str, Any]) -> None:
    status, key = result["status"], result["key"]
    if status == "failed":
        report.failed[key] = result["error"]
        logger.warning("run %s failed: %s", key, result["error"])
    elif status == "busy":
        report.busy.append(key)
    elif status == "skipped":
        report.skipped.append(key)
    else:
        report.done.append(key)
        report.image_encoder_forwards += int(result.get("forwards", 0))


@contextlib.contextmanager
def _progress(total: int, skipped: int):
    """A bar over the grid (done / failed / skipped, ETA) on a terminal; a log line per run otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vlpeft.utils import progress_enabled

    counts = {"done": 0, "failed": 0, "skipped": skipped, "busy": 0}

    def text() -> str:
        return f"bench  done {counts['done']}  failed {counts['failed']}  skipped {counts['skipped']}"

    if not progress_enabled():

        def log(status: str) -> None:
            counts[status] += 1
            logger.info("%s (%d/%d)", text(), sum(counts.values()), total)

        yield log
        return
    from vlpeft.utils import _PROGRESS, set_progress

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    previous = _PROGRESS["enabled"]
    set_progress(False)  # one live display at a time: the runs' own bars stay off under the grid's
    try:
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(text(), total=total, completed=skipped)

            def advance(status: str) -> None:
                counts[status] += 1
                bar.update(task, advance=1, description=text())

            yield advance
    finally:
        set_progress(previous)


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """During a grid the console shows the bar and warnings; each run's log.txt keeps every line."""

    def keep(record: logging.LogRecord) -> bool:
        chatty = record.name.startswith(("vlpeft.engine", "vlpeft.training", "vlpeft.features"))
        return record.levelno >= logging.WARNING or not chatty

    handlers = logging.getLogger().handlers
    for handler in handlers:
        handler.addFilter(keep)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(keep)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("VLPEFT_NO_PROGRESS", "1")


def _pool_results(todo: list[Run], settings: Settings, jobs: int) -> Iterator[dict[str, Any]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(execute, run, settings): run for run in todo}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as err:  # the worker itself died (killed, out of memory): record, go on
                yield {"key": futures[future].key, "status": "failed", "error": f"worker died: {err!r}"}


def _start_ray(address: str | None, spec: BenchSpec):
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'vlpeft[ray]'.") from None
    if address and address != "auto":
        _check_reachable(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except Exception as err:  # Ray raises ConnectionError, RuntimeError or its own types here
            where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
            raise ConfigError(f"Cannot start or reach {where}: {type(err).__name__}: {err}") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message (Ray itself retries a dead address for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be auto or HOST:PORT (or ray://HOST:PORT), got {address!r}.")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as err:
        raise ConfigError(
            f"Cannot reach the Ray cluster at {address!r} ({err}). Start it with `ray start --head` or pass "
            "the address `ray status` shows; leave --address out for a local instance."
        ) from None


def _ray_results(ray, todo: list[Run], settings: Settings, spec: BenchSpec) -> Iterator[dict[str, Any]]:
    remote = ray.remote(execute).options(
        num_cpus=spec.resources["num_cpus"], num_gpus=spec.resources["num_gpus"], max_retries=0
    )
    keys = {remote.remote(run, settings): run.key for run in todo}
    pending = list(keys)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            yield ray.get(ready[0])
        except Exception as err:  # the task's worker died (node lost, out of memory): record, go on
            yield {
                "key": keys[ready[0]],
                "status": "failed",
                "error": f"Ray task died: {type(err).__name__}: {err}",
            }
