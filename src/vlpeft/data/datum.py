"""One labelled image: the item every split, sampler and loader passes around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Datum:
    """One labelled image. ``relpath`` is the path as the split file (or folder listing) gives it."""

    impath: str
    label: int
    classname: str
    relpath: str = ""
    domain: int = 0
