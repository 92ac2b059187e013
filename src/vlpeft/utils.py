"""Small shared helpers: devices, progress bars, environment versions."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from vlpeft.errors import ConfigError

T = TypeVar("T")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
_PROGRESS: dict[str, bool | None] = {"enabled": None}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda if available, else mps, else cpu; explicit choices are checked."""
    import torch

    name = device.split(":")[0]
    if name not in DEVICE_CHOICES:
        raise ConfigError(f"Unknown device '{device}'. Choose one of {list(DEVICE_CHOICES)} (or cuda:N).")
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available; use --device cpu or auto.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "--device mps was requested but Apple's Metal backend is not available on this machine; "
            "use --device cpu or auto."
        )
    return device


def set_progress(enabled: bool | None) -> None:
    """Force progress bars on/off (None: on when stderr is a terminal)."""
    _PROGRESS["enabled"] = enabled


def progress_enabled() -> bool:
    if os.environ.get("VLPEFT_NO_PROGRESS"):
        return False
    forced = _PROGRESS["enabled"]
    return sys.stderr.isatty() if forced is None else forced


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr when progress display is enabled."""
    if not progress_enabled():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(
        items, description=description, total=total, console=Console(stderr=True), transient=True
    )


def environment() -> dict:
    """Versions and hardware, recorded in every run."""
    import numpy
    import torch
    import transformers

    from vlpeft._version import __version__

    info = {
        "vlpeft": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
