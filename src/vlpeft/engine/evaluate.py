"""Evaluation: image features, zero-shot logits and the ``vlpeft eval`` run."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlpeft.backbones import Backbone, load_backbone
from vlpeft.data import Datum, load_dataset
from vlpeft.data.base import SPLITS
from vlpeft.data.fewshot import SUBSAMPLE_CHOICES
from vlpeft.data.loader import image_loader
from vlpeft.data.templates import TEMPLATE_SETS
from vlpeft.engine.metrics import classification_metrics
from vlpeft.errors import ConfigError
from vlpeft.runs import check_out_dir, peak_memory_mb, run_log, write_run
from vlpeft.text import class_embeddings
from vlpeft.utils import environment, resolve_device, track

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_image_features(
    backbone: Backbone, items: Sequence[Datum], batch_size: int = 64, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) L2-normalised float32 image features and (N,) labels, in item order."""
    loader = image_loader(items, backbone.preprocess, batch_size, workers)
    feats, labels = [], []
    for pixels, y in track(loader, "Encoding images", total=len(loader)):
        feats.append(
            F.normalize(backbone.encode_image(pixels.to(backbone.device, backbone.dtype)).float(), dim=-1)
        )
        labels.append(y)
    return torch.cat(feats).cpu(), torch.cat(labels)


def zero_shot_logits(features: torch.Tensor, weights: torch.Tensor, backbone: Backbone) -> torch.Tensor:
    """(N, D) image features x (C, D) class weights -> (N, C) logits: scale * cos + bias."""
    scale, bias = backbone.logit_scale.float().cpu(), backbone.logit_bias.float().cpu()
    return scale * features @ weights.t().cpu() + bias


@dataclass
class EvalConfig:
    """Settings of a zero-shot evaluation (``vlpeft eval``)."""

    model: str
    dataset: str
    root: str
    split: str = "test"
    templates: str = "single"
    subsample: str = "all"
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    dtype: str | None = None

    def __post_init__(self) -> None:
        _choice("--split", self.split, SPLITS)
        _choice("--templates", self.templates, TEMPLATE_SETS)
        _choice("--subsample", self.subsample, SUBSAMPLE_CHOICES)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {self.workers}.")


def _choice(flag: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {list(choices)}, got '{value}'.")


def run_zero_shot_eval(cfg: EvalConfig, out: str | Path | None = None, overwrite: bool = False) -> dict:
    """Zero-shot classification of one split; writes ``out/result.json`` (atomically) if ``out``."""
    if out is not None:
        check_out_dir(out, overwrite)
    with run_log(out, overwrite):
        start = time.perf_counter()
        dataset = load_dataset(cfg.dataset, cfg.root, subsample=cfg.subsample)
        items = dataset.split(cfg.split)
        device = resolve_device(cfg.device)
        backbone = load_backbone(cfg.model, device=device, dtype=cfg.dtype)
        templates = dataset.templates(cfg.templates)
        logger.info(
            "zero-shot %s on %s/%s: %d images, %d classes, %d templates",
            cfg.model,
            dataset.name,
            cfg.split,
            len(items),
            dataset.num_classes,
            len(templates),
        )
        weights = class_embeddings(backbone, dataset.classnames, templates)
        features, labels = extract_image_features(backbone, items, cfg.batch_size, cfg.workers)
        result = classification_metrics(
            zero_shot_logits(features, weights, backbone), labels, dataset.classnames
        )
        config = {
            "task": "eval",
            "method": "zero-shot",
            **asdict(cfg),
            "device": device,
            "templates_used": templates,
        }
        config |= {
            "backbone": backbone.describe(),
            "dataset": dataset.describe(),
            "environment": environment(),
        }
        result = {"task": "eval", "method": "zero-shot", "split": cfg.split, **result}
        result |= {
            "wall_time_s": round(time.perf_counter() - start, 3),
            "peak_memory": peak_memory_mb(device),
        }
        result["config"] = config
        logger.info("accuracy %.2f%%", result["metrics"]["accuracy"])
        if out is not None:
            write_run(out, config, result)
        return result
