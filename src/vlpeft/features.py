"""FeatureStore: image features and text embeddings, computed once and cached on disk.

The cache is *per image*: a feature is stored under a key made of the image's path (as the
dataset lists it), size and modification time, inside a directory whose name hashes
everything else that changes the numbers — the backbone's weight fingerprint, the dataset,
the eval transform or augmentation spec, the view index, tokens vs pooled features and the
dtype. So the same image is encoded once however many few-shot subsets, seeds, shot counts
or methods use it, and a second run of any experiment performs zero image-encoder forwards
(:attr:`FeatureStore.image_encoder_forwards` counts them; runs record the count).

Entries are safetensors shards of at most ``chunk_size`` images, each written atomically
with a SHA-256 of its tensor in the header. An interrupted extraction keeps the finished
shards and resumes with the rest; a shard that fails to load or to verify is deleted with a
warning and its images are encoded again.

Layout: ``<cache>/features/<fingerprint[:16]>/<dataset>/<eval|aug>-v<view>-<spec hash>/shard-*.safetensors``
and ``<cache>/text/<fingerprint[:16]>/<prompts hash>.safetensors``. The cache directory is
``--cache-dir``, else ``$VLPEFT_CACHE_DIR``, else ``~/.cache/vlpeft``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from vlpeft.backbones.base import Backbone
from vlpeft.data.base import Datum
from vlpeft.data.images import load_image
from vlpeft.data.transforms import AugmentedView, AugmentSpec
from vlpeft.io import atomic_path, file_lock, writable_dir, write_json_atomic
from vlpeft.utils import track

logger = logging.getLogger(__name__)

FORMAT = "vlpeft-features/1"


def default_cache_dir() -> Path:
    env = os.environ.get("VLPEFT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlpeft"


def image_key(item: Datum) -> str:
    """Path as listed, size and mtime: a changed file gets a new key (and is encoded again)."""
    st = os.stat(item.impath)
    return f"{item.relpath or item.impath}|{st.st_size}|{st.st_mtime_ns}"


def view_key(item: Datum) -> str:
    """What seeds an image's augmented views: the path as listed, never its mtime, so the same
    image gets the same crops in every run and on every machine (``image_key`` adds size and
    mtime for the cache, so a changed file is encoded again)."""
    return item.relpath or item.impath


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "dataset"


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class ViewSpec:
    """Which pixels an image becomes: the eval transform, or augmented view ``view`` of ``augment``."""

    augment: AugmentSpec | None = None
    view: int = 0
    tokens: bool = False  # per-token features (B, T, D) instead of pooled (B, D)

    @property
    def label(self) -> str:
        kind = "aug" if self.augment is not None else "eval"
        return f"{kind}{'-tokens' if self.tokens else ''}-v{self.view}"


@dataclass
class FeatureSet:
    """Features of one split: (V, N, D) for V views of N images (V = 1 for eval features)."""

    features: torch.Tensor
    labels: torch.Tensor
    keys: list[str] = field(default_factory=list)

    @property
    def num_views(self) -> int:
        return self.features.shape[0]

    def view(self, v: int = 0) -> torch.Tensor:
        return self.features[v]


class _Pixels(TorchDataset):
    def __init__(self, items: Sequence[Datum], transform: Callable):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.items[i].impath), view_key(self.items[i]))


class FeatureStore:
    """Extracts and caches features of one backbone."""

    def __init__(
        self,
        backbone: Backbone,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        workers: int = 0,
        chunk_size: int = 1024,
    ):
        self.backbone = backbone
        self.root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.batch_size, self.workers, self.chunk_size = batch_size, workers, chunk_size
        self.image_encoder_forwards = 0  # images passed through the image encoder by this store
        self.text_encoder_prompts = 0
        self.readonly = not writable_dir(self.root)
        self._memory: dict[Path, tuple[torch.Tensor, list[str]]] = {}  # shards of a read-only cache
        if self.readonly:
            logger.warning(
                "The feature cache '%s' is not writable: features are computed without caching (existing "
                "entries are still read). Pass a writable --cache-dir or set VLPEFT_CACHE_DIR to keep them.",
                self.root,
            )

    # ---- images -----------------------------------------------------------------------------
    def image_features(
        self, dataset: str, items: Sequence[Datum], view: ViewSpec = ViewSpec()
    ) -> torch.Tensor:
        """(N, D) pooled (or (N, T, D) token) float32 features of ``items``, not normalised."""
        keys = [image_key(item) for item in items]
        directory = self._entry_dir(dataset, view)
        for _attempt in range(3):
            index = self._index(directory)
            if any(k not in index for k in keys):
                # One extracting process per cache entry (a bench grid's processes, Ray tasks on one
                # disk): the others wait, then read its shards. A read-only cache goes on unlocked.
                with file_lock(directory / ".lock"):
                    index = self._index(directory)
                    todo = {k: item for k, item in zip(keys, items, strict=True) if k not in index}
                    if todo:
                        self._extract(directory, list(todo.values()), list(todo), view)
                    index = self._index(directory)
            gathered = self._gather(index, keys)
            if gathered is not None:
                return gathered
        raise RuntimeError(f"Feature cache '{directory}' keeps failing to verify; delete it and retry.")

    def views(
        self, dataset: str, items: Sequence[Datum], augment: AugmentSpec, num_views: int, tokens: bool = False
    ) -> torch.Tensor:
        """(V, N, D) features (or (V, N, T, D) tokens) of ``num_views`` augmented views of each item."""
        return torch.stack(
            [self.image_features(dataset, items, ViewSpec(augment, v, tokens)) for v in range(num_views)]
        )

    def feature_set(
        self,
        dataset: str,
        items: Sequence[Datum],
        augment: AugmentSpec | None = None,
        num_views: int = 1,
        tokens: bool = False,
    ) -> FeatureSet:
        """A :class:`FeatureSet`: augmented views if ``augment`` is given, else the eval view."""
        if augment is None:
            feats = self.image_features(dataset, items, ViewSpec(tokens=tokens))[None]
        else:
            feats = self.views(dataset, items, augment, num_views, tokens)
        labels = torch.tensor([item.label for item in items], dtype=torch.long)
        return FeatureSet(feats, labels, [item.relpath for item in items])

    def _entry_dir(self, dataset: str, view: ViewSpec) -> Path:
        spec = {
            "format": FORMAT,
            "backbone": self.backbone.fingerprint(),
            "dataset": dataset,
            "transform": self.backbone.preprocess.to_dict(),
            "augment": view.augment.to_dict() if view.augment else None,
            "view": view.view,
            "tokens": view.tokens,
            "dtype": str(self.backbone.dtype),
        }
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        directory = self.root / "features" / spec["backbone"][:16] / _slug(dataset) / f"{view.label}-{digest}"
        if not self.readonly and not (directory / "spec.json").exists():
            write_json_atomic(directory / "spec.json", spec)
        return directory

    def _index(self, directory: Path) -> dict[str, tuple[Path, int]]:
        index: dict[str, tuple[Path, int]] = {}
        for shard in sorted(directory.glob("shard-*.safetensors")):
            try:
                with safe_open(shard, "pt") as f:
                    keys = json.loads(f.metadata()["keys"])
            except (SafetensorError, OSError, KeyError, ValueError, TypeError) as err:
                self._drop(shard, err)
                continue
            for row, key in enumerate(keys):
                index.setdefault(key, (shard, row))
        for shard, (_, keys) in self._memory.items():
            if shard.parent == directory:
                for row, key in enumerate(keys):
                    index.setdefault(key, (shard, row))
        return index

    def _gather(self, index: dict[str, tuple[Path, int]], keys: list[str]) -> torch.Tensor | None:
        """Rows of ``keys`` from their shards, or None if a shard failed verification (it is dropped)."""
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            shard, row = index[key]
            by_shard.setdefault(shard, []).append((pos, row))
        out: torch.Tensor | None = None
        for shard, pairs in by_shard.items():
            tensor = self._load_verified(shard)
            if tensor is None:
                return None
            if out is None:
                out = torch.empty((len(keys), *tensor.shape[1:]), dtype=torch.float32)
            positions, rows = zip(*pairs, strict=True)
            out[list(positions)] = tensor[list(rows)].float()
        return out if out is not None else torch.empty(0)

    def _load_verified(self, shard: Path) -> torch.Tensor | None:
        if shard in self._memory:
            return self._memory[shard][0]
        try:
            with safe_open(shard, "pt") as f:
                tensor, expected = f.get_tensor("features"), f.metadata()["sha256"]
        except (SafetensorError, OSError, KeyError) as err:
            self._drop(shard, err)
            return None
        if _digest(tensor) != expected:
            self._drop(shard, "checksum mismatch")
            return None
        return tensor

    def _drop(self, shard: Path, reason: object) -> None:
        logger.warning(
            "Feature cache shard '%s' is corrupt (%s); deleting it and re-encoding its images.", shard, reason
        )
        shard.unlink(missing_ok=True)

    def _extract(self, directory: Path, items: list[Datum], keys: list[str], view: ViewSpec) -> None:
        transform = self._pixel_transform(view)
        encode = self.backbone.encode_image_tokens if view.tokens else self.backbone.encode_image
        chunks = [
            range(i, min(i + self.chunk_size, len(items))) for i in range(0, len(items), self.chunk_size)
        ]
        desc = f"Encoding {len(items)} images ({view.label})"
        for chunk in track(chunks, desc):
            loader = DataLoader(
                _Pixels([items[i] for i in chunk], transform),
                batch_size=self.batch_size,
                num_workers=self.workers,
            )
            feats = torch.cat([self._encode(encode, pixels) for pixels in loader])
            self._write_shard(directory, feats, [keys[i] for i in chunk])

    @torch.no_grad()
    def _encode(self, encode: Callable, pixels: torch.Tensor) -> torch.Tensor:
        self.image_encoder_forwards += len(pixels)
        return encode(pixels.to(self.backbone.device, self.backbone.dtype)).float().cpu()

    def _pixel_transform(self, view: ViewSpec) -> Callable:
        if view.augment is None:
            base = self.backbone.preprocess
            return lambda img, key: base(img)
        return AugmentedView(self.backbone.preprocess, view.augment, view.view)

    def _write_shard(self, directory: Path, feats: torch.Tensor, keys: list[str]) -> None:
        feats = feats.contiguous()
        if self.readonly:  # kept for this process only
            self._memory[directory / f"memory-{uuid.uuid4().hex}.safetensors"] = (feats, list(keys))
            return
        metadata = {"format": FORMAT, "keys": json.dumps(keys), "sha256": _digest(feats)}
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / f"shard-{uuid.uuid4().hex}.safetensors") as tmp:
            save_file({"features": feats}, str(tmp), metadata=metadata)

    # ---- text -------------------------------------------------------------------------------
    def text_embeddings(self, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """(N, D) float32 text embeddings of ``prompts`` (not normalised), cached."""
        fingerprint = self.backbone.fingerprint()
        digest = hashlib.sha256(json.dumps([FORMAT, list(prompts)]).encode()).hexdigest()[:32]
        path = self.root / "text" / fingerprint[:16] / f"{digest}.safetensors"
        if path.exists():
            cached = self._load_verified(path)
            if cached is not None and cached.shape[0] == len(prompts):
                return cached.float()
        if path in self._memory:
            return self._memory[path][0]
        feats = self._encode_texts(prompts, batch_size)
        self.text_encoder_prompts += len(prompts)
        if self.readonly:
            self._memory[path] = (feats, [])
            return feats
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file({"features": feats}, str(tmp), metadata={"format": FORMAT, "sha256": _digest(feats)})
        return feats

    @torch.no_grad()
    def _encode_texts(self, prompts: Sequence[str], batch_size: int) -> torch.Tensor:
        batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
        out = [
            self.backbone.encode_text(self.backbone.tokenize(list(b))).float().cpu()
            for b in track(batches, f"Encoding {len(prompts)} prompts")
        ]
        return torch.cat(out).contiguous() if out else torch.empty(0)
