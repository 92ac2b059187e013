"""Few-shot sampling and base/new class splits, exactly as CoOp/Dassl do them.

Dassl's ``DatasetBase.generate_fewshot_dataset`` (KaiyangZhou/Dassl.pytorch,
``dassl/data/datasets/base_dataset.py``): group the items by label in order of first
appearance, then ``random.sample(items, K)`` per class (all items when fewer than K). CoOp's
dataset classes (KaiyangZhou/CoOp ``datasets/*.py``) call it on train with K shots, then on
val with ``min(K, 4)``, right after ``set_random_seed(seed)`` — one random stream, train
first. ``random.Random(seed)`` gives the same stream as ``random.seed(seed)`` without
touching global state. Base/new: ``OxfordPets.subsample_classes`` — sorted labels, the first
``ceil(n/2)`` are base, the rest new, relabelled from 0.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import replace

from vlpeft.data.datum import Datum
from vlpeft.errors import ConfigError

logger = logging.getLogger(__name__)

SUBSAMPLE_CHOICES = ("all", "base", "new")


def split_by_label(items: Sequence[Datum]) -> dict[int, list[Datum]]:
    """Items grouped by label, labels in order of first appearance (a Dassl ``defaultdict``)."""
    groups: dict[int, list[Datum]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    return groups


def sample_per_class(items: Sequence[Datum], shots: int, rng: random.Random) -> list[Datum]:
    """``shots`` items per class drawn with ``rng.sample`` (all of a class when it has fewer)."""
    out: list[Datum] = []
    for group in split_by_label(items).values():
        out.extend(rng.sample(group, shots) if len(group) >= shots else group)
    return out


def _warn_short_classes(train: Sequence[Datum], shots: int) -> None:
    """CoOp's sampler takes every image of a class that has fewer than K: keep that, but say so."""
    short = {g[0].classname: len(g) for g in split_by_label(train).values() if len(g) < shots}
    if short:
        listed = ", ".join(f"{name} ({n})" for name, n in list(short.items())[:10])
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        logger.warning(
            "%d-shot sampling: %d classes have fewer training images, all of which are used: %s%s",
            shots, len(short), listed, more,
        )  # fmt: skip


def fewshot_train_val(
    train: Sequence[Datum], val: Sequence[Datum], shots: int, seed: int
) -> tuple[list[Datum], list[Datum]]:
    """CoOp's K-shot train and min(K, 4)-shot val, one random stream seeded with ``seed``.

    A dataset without a val split (ImageNet, whose CoOp "val" is its test set) draws its val
    shots from the train images that were not sampled, continuing the same stream, so that
    validation never touches test images. The train shots are the same as CoOp's either way.
    """
    if shots < 1:
        raise ConfigError(f"shots must be a positive integer, got {shots}.")
    rng = random.Random(seed)
    fs_train = sample_per_class(train, shots, rng)
    _warn_short_classes(train, shots)
    if not val:
        chosen = {id(item) for item in fs_train}
        val = [item for item in train if id(item) not in chosen]
    fs_val = sample_per_class(val, min(shots, 4), rng)
    return fs_train, fs_val


def subsample_labels(num_classes: int, which: str) -> list[int]:
    """The labels kept by ``which`` (all/base/new): base = first ceil(n/2) of the sorted labels."""
    if which not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"subsample must be one of {list(SUBSAMPLE_CHOICES)}, got '{which}'.")
    labels = list(range(num_classes))
    m = math.ceil(num_classes / 2)
    return {"all": labels, "base": labels[:m], "new": labels[m:]}[which]


def relabel(items: Sequence[Datum], selected: Sequence[int]) -> list[Datum]:
    """Keep items whose label is in ``selected`` and renumber labels by their position there."""
    mapping = {old: new for new, old in enumerate(selected)}
    return [replace(item, label=mapping[item.label]) for item in items if item.label in mapping]
