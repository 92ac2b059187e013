"""``vlpeft train`` and ``vlpeft predict``: a method run from data to a shippable run directory."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlpeft.backbones import Backbone, load_backbone
from vlpeft.data import Dataset, get_dataset_spec
from vlpeft.data.base import Datum
from vlpeft.data.fewshot import SUBSAMPLE_CHOICES
from vlpeft.data.images import load_image
from vlpeft.engine.metrics import classification_metrics
from vlpeft.errors import ConfigError
from vlpeft.features import FeatureSet, FeatureStore
from vlpeft.methods import ClassText, FeatureHead, HeadData, Method, get_method
from vlpeft.methods.feature_head import VAL_POLICIES, TrainViews
from vlpeft.runs import CONFIG_FILE, check_out_dir, peak_memory_mb, run_log, write_run
from vlpeft.utils import environment, resolve_device

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one training run (``vlpeft train``)."""

    method: str
    model: str
    dataset: str
    root: str
    shots: int | None = 16  # None: the whole train split
    seed: int = 1
    val_policy: str = (
        "fewshot"  # none: fixed recipe | fewshot: the K-shot val split | full: the whole val split
    )
    subsample: str = "all"
    overrides: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    batch_size: int = 64  # images per encoder batch
    workers: int = 0
    device: str = "auto"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.val_policy not in VAL_POLICIES:
            raise ConfigError(f"--val-policy must be one of {list(VAL_POLICIES)}, got '{self.val_policy}'.")
        if self.subsample not in SUBSAMPLE_CHOICES:
            raise ConfigError(
                f"--subsample must be one of {list(SUBSAMPLE_CHOICES)}, got '{self.subsample}'."
            )
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"--shots must be at least 1, got {self.shots}.")


def load_run_dataset(cfg: TrainConfig) -> tuple[Dataset, tuple[Datum, ...]]:
    """The (few-shot, subsampled) dataset and the validation items the policy allows."""
    full = get_dataset_spec(cfg.dataset).load(cfg.root)
    data = full.fewshot(cfg.shots, cfg.seed) if cfg.shots else full
    data = data.subsample_classes(cfg.subsample)
    if cfg.val_policy == "none":
        return data, ()
    if cfg.val_policy == "full":
        val = full.subsample_classes(cfg.subsample).val
        if not val:
            raise ConfigError(
                f"{full.name} has no val split; use --val-policy fewshot (val shots come from train)."
            )
        return data, val
    return data, data.val


def build_method(cfg: TrainConfig, dataset: Dataset) -> FeatureHead:
    """The method with official defaults, then its per-dataset preset, then the user's --set values."""
    method_cls = get_method(cfg.method)
    if not issubclass(method_cls, FeatureHead):
        raise ConfigError(
            f"'{cfg.method}' is a {method_cls.family} method; `vlpeft train` runs feature heads so far."
        )
    config = method_cls.config_class().with_overrides(method_cls.preset(dataset.name, cfg.shots))
    return method_cls(config.with_overrides(cfg.overrides))


def cache_name(dataset: Dataset) -> str:
    """Dataset identity in the feature cache: its name and (a hash of) its location."""
    return f"{dataset.name}-{hashlib.sha1(dataset.root.encode()).hexdigest()[:8]}"


def train_features(store: FeatureStore, name: str, items, views: TrainViews) -> FeatureSet:
    """(V, N, D) train features: the eval view first (if asked), then the augmented views."""
    parts = []
    if views.include_eval:
        parts.append(store.image_features(name, items)[None])
    if views.augment is not None and views.num_views:
        parts.append(store.views(name, items, views.augment, views.num_views))
    labels = torch.tensor([item.label for item in items], dtype=torch.long)
    return FeatureSet(torch.cat(parts), labels, [item.relpath for item in items])


def head_data(cfg: TrainConfig, head: FeatureHead, dataset: Dataset, val, store: FeatureStore) -> HeadData:
    name, backbone = cache_name(dataset), store.backbone
    empty = FeatureSet(torch.empty(1, 0, backbone.embed_dim), torch.empty(0, dtype=torch.long))
    train = (
        train_features(store, name, dataset.split("train"), head.train_views()) if head.needs_train else empty
    )
    text = ClassText(dataset.classnames, dataset.templates, store.text_embeddings, dataset.template)
    return HeadData(
        train=train,
        val=store.feature_set(name, val) if val and head.needs_train else None,
        text=text,
        num_classes=dataset.num_classes,
        logit_scale=float(backbone.logit_scale),
        logit_bias=float(backbone.logit_bias),
        seed=cfg.seed,
        dataset=dataset.name,
        shots=cfg.shots,
    )


def run_train(cfg: TrainConfig, out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fit ``cfg.method`` and evaluate it once on the test split; write the run directory if ``out``."""
    if out is not None:
        check_out_dir(out, overwrite)
    with run_log(out):
        start = time.perf_counter()
        dataset, val = load_run_dataset(cfg)
        head = build_method(cfg, dataset)
        device = resolve_device(cfg.device)
        backbone = load_backbone(cfg.model, device=device, dtype=cfg.dtype)
        store = FeatureStore(backbone, cfg.cache_dir, cfg.batch_size, cfg.workers)
        data = head_data(cfg, head, dataset, val, store)
        logger.info(
            "%s on %s: %d train images, %d val, %d classes",
            head.name,
            dataset.name,
            data.train.features.shape[1],
            0 if data.val is None else len(data.val.labels),
            dataset.num_classes,
        )
        torch.manual_seed(cfg.seed)
        fit_start = time.perf_counter()
        report = head.fit(data)
        fit_time = time.perf_counter() - fit_start
        # Only now is the test split touched: its features, then its labels, once.
        result = evaluate_head(head, store, dataset)
        config = run_config(cfg, head, backbone, dataset, device)
        result |= {"fit": _jsonable(report), "fit_time_s": round(fit_time, 3)}
        result |= {
            "wall_time_s": round(time.perf_counter() - start, 3),
            "peak_memory": peak_memory_mb(device),
        }
        result |= {"image_encoder_forwards": store.image_encoder_forwards, "config": config}
        logger.info("%s test accuracy %.2f%%", head.name, result["metrics"]["accuracy"])
        if out is not None:
            extra = {
                "num_classes": dataset.num_classes,
                "embed_dim": backbone.embed_dim,
                "classnames": list(dataset.classnames),
                "backbone": backbone.spec,
            }
            head.save_adapter(out, extra)
            write_run(out, config, result)
        return result


@torch.no_grad()
def evaluate_head(head: FeatureHead, store: FeatureStore, dataset: Dataset) -> dict[str, Any]:
    test = store.feature_set(cache_name(dataset), dataset.split("test"))
    head.eval()
    metrics = classification_metrics(head.logits(test.view(0)), test.labels, dataset.classnames)
    return {"task": "train", "method": head.name, "split": "test", **metrics}


def run_config(
    cfg: TrainConfig, head: Method, backbone: Backbone, dataset: Dataset, device: str
) -> dict[str, Any]:
    """The fully resolved configuration: enough to reproduce the run from this file alone."""
    return {
        "task": "train",
        **asdict(cfg),
        "device": device,
        "method_config": head.config.to_dict(),
        "method_family": head.family,
        "paper": head.paper,
        "trainable_parameters": head.num_trainable_parameters(),
        "backbone": backbone.describe(),
        "dataset": dataset.describe(),
        "environment": environment(),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


# ---- prediction -----------------------------------------------------------------------------


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Backbone, FeatureHead, list[str]]:
    """The backbone and the fitted head of a run directory, and its class names."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(
            f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); pass the --out of `vlpeft train`."
        )
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    head = Method.from_saved(run_dir)
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    backbone = load_backbone(config["model"], device=device, dtype=config.get("dtype"))
    if backbone.fingerprint() != config["backbone"]["fingerprint"]:
        logger.warning("The weights of '%s' changed since this run was trained.", config["model"])
    return backbone, head, list(meta["classnames"])


@torch.no_grad()
def predict(run_dir: str | Path, images: list[str | Path], top_k: int = 5, device: str = "cpu") -> list[dict]:
    """Top-k classes with probabilities for each image, from the saved run alone."""
    backbone, head, classnames = load_run(run_dir, device)
    out = []
    for path in images:
        pixels = backbone.preprocess(load_image(path))[None].to(backbone.device, backbone.dtype)
        probs = head.logits(backbone.encode_image(pixels).float().cpu()).softmax(dim=-1)[0]
        values, indices = probs.topk(min(top_k, len(classnames)))
        out.append(
            {
                "image": str(path),
                "top": [
                    {"class": classnames[int(i)], "probability": float(p)}
                    for p, i in zip(values, indices, strict=True)
                ],
            }
        )
    return out
