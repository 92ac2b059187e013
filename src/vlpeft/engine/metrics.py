"""Classification metrics: top-1/top-5 accuracy, mean per-class accuracy, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts; row = true class, column = predicted class."""
    index = labels.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> dict:
    """Metrics in percent (as the papers report them) plus per-class accuracy and confusion matrix.

    Mean per-class accuracy averages over classes that have test samples.
    """
    num_classes = len(classnames)
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(predictions, labels, num_classes)
    support = confusion.sum(dim=1)
    correct = confusion.diagonal()
    present = support > 0
    per_class = torch.where(present, correct / support.clamp(min=1), torch.nan) * 100
    metrics = {
        "accuracy": float(correct.sum()) / max(len(labels), 1) * 100,
        "mean_per_class_accuracy": float(per_class[present].mean()) if bool(present.any()) else 0.0,
    }
    if num_classes > 5:
        top5 = logits.topk(5, dim=1).indices.eq(labels[:, None]).any(dim=1)
        metrics["top5_accuracy"] = float(top5.float().mean()) * 100
    return {
        "metrics": metrics,
        "counts": {"samples": len(labels), "classes": num_classes, "correct": int(correct.sum())},
        "per_class_accuracy": {
            name: (None if not bool(present[i]) else round(float(per_class[i]), 4))
            for i, name in enumerate(classnames)
        },
        "per_class_support": {name: int(support[i]) for i, name in enumerate(classnames)},
        "confusion_matrix": confusion.tolist(),
    }
