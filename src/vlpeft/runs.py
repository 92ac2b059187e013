"""Run directories: ``config.json`` + ``result.json`` written atomically, plus a log."""

from __future__ import annotations

import contextlib
import logging
import resource
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from vlpeft.errors import ConfigError
from vlpeft.io import writable_dir, write_json_atomic

RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"
LOG_FILE = "log.txt"


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse to replace an existing result unless ``overwrite`` (so no result is lost by accident)."""
    out = Path(out)
    if (out / RESULT_FILE).exists() and not overwrite:
        raise ConfigError(f"'{out / RESULT_FILE}' already exists. Choose another --out or pass --overwrite.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' exists and is not a directory.")
    if not writable_dir(out):
        raise ConfigError(
            f"Cannot write the run directory '{out}': it (or its parent) is read-only or not creatable. "
            "Choose a writable --out."
        )
    return out


def write_run(out: str | Path, config: dict, result: dict) -> Path:
    """Write the resolved config, then the result (the result's presence marks a finished run)."""
    out = Path(out)
    write_json_atomic(out / CONFIG_FILE, config)
    write_json_atomic(out / RESULT_FILE, result)
    return out / RESULT_FILE


@contextlib.contextmanager
def run_log(out: str | Path | None, overwrite: bool = False) -> Iterator[None]:
    """Copy vlpeft's log records into ``out/log.txt`` for the duration of a run.

    ``overwrite`` starts a fresh log (a replaced result keeps no old lines). A run that fails before
    writing anything but its log leaves no directory behind if it created it (the terminal says what
    went wrong; an unexpected error's traceback goes to the cache's logs/ folder).
    """
    if out is None:
        yield
        return
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / LOG_FILE, mode="w" if overwrite else "a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("vlpeft")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(previous or logging.INFO, logging.INFO))
    try:
        yield
    except BaseException:  # the run's log keeps the traceback (the terminal shows one line)
        import traceback

        handler.stream.write(traceback.format_exc())
        handler.flush()
        if created and {p.name for p in out.iterdir()} <= {LOG_FILE}:
            handler.close()
            shutil.rmtree(out, ignore_errors=True)  # nothing but a log: leave no empty run behind
        raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()


def peak_memory_mb(device: str) -> dict:
    """Peak process RSS (CPU) and peak allocated accelerator memory, in MiB."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"cpu_rss_mb": round(rss_kb / (1024 if sys.platform != "darwin" else 1024 * 1024), 1)}
    if device.startswith("cuda"):
        import torch

        out["cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
