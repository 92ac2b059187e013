"""torch data loading over lists of :class:`Datum`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from vlpeft.data.base import Datum
from vlpeft.data.images import load_image


class ImageDataset(TorchDataset):
    """(transformed image, label) pairs read lazily from disk."""

    def __init__(self, items: Sequence[Datum], transform: Callable):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return self.transform(load_image(item.impath)), item.label


def image_loader(
    items: Sequence[Datum], transform: Callable, batch_size: int = 64, workers: int = 0, shuffle: bool = False
) -> DataLoader:
    """Batches of (B, 3, H, W) pixels and (B,) labels, in item order unless ``shuffle``."""
    return DataLoader(
        ImageDataset(items, transform),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=False,
    )
