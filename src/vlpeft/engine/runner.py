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
from safetensors import SafetensorError

from vlpeft.backbones import Backbone, load_backbone
from vlpeft.data import Dataset, get_dataset_spec
from vlpeft.data.base import Datum
from vlpeft.data.fewshot import SUBSAMPLE_CHOICES
from vlpeft.data.images import load_image
from vlpeft.engine.metrics import classification_metrics
from vlpeft.errors import ConfigError, DatasetError
from vlpeft.features import FeatureSet, FeatureStore, ViewSpec
from vlpeft.methods import ClassText, FeatureHead, HeadData, Method, get_method
from vlpeft.methods.adapters.base import ModuleAdapter
from vlpeft.methods.inputs import VAL_POLICIES, PixelData, TrainViews
from vlpeft.methods.prompts.deep import PixelPromptLearner
from vlpeft.runs import CONFIG_FILE, check_out_dir, peak_memory_mb, run_log, write_run
from vlpeft.training.distributed import init_from_env, is_main_process, local_device, rank_and_size
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


def build_method(cfg: TrainConfig, dataset: Dataset) -> FeatureHead | PixelPromptLearner | ModuleAdapter:
    """The method with official defaults, then its per-dataset preset, then the user's --set values."""
    method_cls = get_method(cfg.method)
    if not issubclass(method_cls, FeatureHead | PixelPromptLearner | ModuleAdapter):
        raise ConfigError(
            f"'{cfg.method}' is a {method_cls.family} method, which `vlpeft train` cannot run yet."
        )
    config = method_cls.config_class().with_overrides(method_cls.preset(dataset.name, cfg.shots))
    return method_cls(config.with_overrides(cfg.overrides))


def cache_name(dataset: Dataset) -> str:
    """Dataset identity in the feature cache: its name and (a hash of) its location."""
    return f"{dataset.name}-{hashlib.sha1(dataset.root.encode()).hexdigest()[:8]}"


def train_features(store: FeatureStore, name: str, items, views: TrainViews) -> FeatureSet:
    """(V, N, ...) train features: the eval view first (if asked), then the augmented views."""
    parts = []
    if views.include_eval:
        parts.append(store.image_features(name, items, ViewSpec(tokens=views.tokens))[None])
    if views.augment is not None and views.num_views:
        parts.append(store.views(name, items, views.augment, views.num_views, views.tokens))
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
        val=store.feature_set(name, val, tokens=head.uses_tokens) if val and head.needs_train else None,
        text=text,
        num_classes=dataset.num_classes,
        logit_scale=float(backbone.logit_scale),
        logit_bias=float(backbone.logit_bias),
        seed=cfg.seed,
        dataset=dataset.name,
        shots=cfg.shots,
    )


def run_train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    backbone: Backbone | None = None,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Fit ``cfg.method`` and evaluate it once on the test split; write the run directory if ``out``.

    ``backbone``/``store`` let a caller running many experiments load the model once. Under
    ``torchrun``/``accelerate launch`` every process trains on its share of each batch and only the
    first writes the run directory.
    """
    init_from_env(resolve_device(cfg.device))
    if not is_main_process():
        out = None
    if out is not None:
        check_out_dir(out, overwrite)
    with run_log(out, overwrite):
        start = time.perf_counter()
        dataset, val = load_run_dataset(cfg)
        head = build_method(cfg, dataset)
        device = local_device(resolve_device(cfg.device))
        backbone = backbone or load_backbone(cfg.model, device=device, dtype=cfg.dtype)
        store = store or FeatureStore(backbone, cfg.cache_dir, cfg.batch_size, cfg.workers)
        forwards_before = store.image_encoder_forwards, backbone.image_forwards
        head.bind(backbone)
        pixels = needs_pixels(head)
        data = pixel_data(cfg, dataset, val, store) if pixels else head_data(cfg, head, dataset, val, store)
        logger.info("%s on %s: %d classes", head.name, dataset.name, dataset.num_classes)
        torch.manual_seed(cfg.seed)
        fit_start = time.perf_counter()
        report = head.fit(data)
        fit_time = time.perf_counter() - fit_start
        # Only now is the test split touched: its images or features, then its labels, once.
        if pixels:
            metrics = evaluate_pixels(
                head, dataset.split("test"), dataset.classnames, cfg.batch_size, cfg.workers
            )
            result = {"task": "train", "method": head.name, "split": "test", **metrics}
        else:
            result = evaluate_head(head, store, dataset)
        config = run_config(cfg, head, backbone, dataset, device)
        result |= {"fit": _jsonable(report), "fit_time_s": round(fit_time, 3)}
        result |= {
            "wall_time_s": round(time.perf_counter() - start, 3),
            "peak_memory": peak_memory_mb(device),
            "trainable_parameters": head.num_trainable_parameters(),
            "processes": rank_and_size()[1],
        }
        result |= {
            "image_encoder_forwards": _forwards(head, store, backbone, forwards_before),
            "train_images_per_class": images_per_class(
                dataset
            ),  # the real shots (fewer where a class is short)
            "config": config,
        }
        logger.info("%s test accuracy %.2f%%", head.name, result["metrics"]["accuracy"])
        if out is not None:
            extra = {
                "num_classes": dataset.num_classes,
                "embed_dim": backbone.embed_dim,
                "text_width": backbone.text_width,
                "vision_width": backbone.vision_width,
                "classnames": list(dataset.classnames),
                "backbone": backbone.spec,
            }
            save_run(out, head, extra, config, result)
        return result


def save_run(out: str | Path, head: Method, extra: dict, config: dict, result: dict) -> None:
    """The result first (small, and what matters most), then the learned state; a failed write names the
    file and the reason and keeps the accuracy in the message."""
    accuracy = result["metrics"]["accuracy"]
    try:
        write_run(out, config, result)
    except OSError as err:
        raise ConfigError(
            f"Could not write the result to '{out}' ({err.strerror or err}); the test accuracy was "
            f"{accuracy:.2f}%. Free space or choose another --out and run again."
        ) from None
    try:
        head.save_adapter(out, extra)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
        reason = getattr(err, "strerror", None) or err
        raise ConfigError(
            f"Wrote {Path(out) / 'result.json'} (test accuracy {accuracy:.2f}%) but could not write the "
            f"learned state to '{out}' ({reason}), so the run cannot predict or export. Free "
            "space and run again with --overwrite."
        ) from None


def images_per_class(dataset: Dataset) -> dict[str, int]:
    """Training images of each class in the (few-shot) train split."""
    counts = dict.fromkeys(dataset.classnames, 0)
    for item in dataset.train:
        counts[dataset.classnames[item.label]] += 1
    return counts


def _forwards(head: Method, store: FeatureStore, backbone: Backbone, before: tuple[int, int]) -> int:
    """Images through an image encoder during the run: the store's (features) or the method's (pixels).

    Module adapters encode with their own copy of the backbone, whose count starts at zero.
    """
    if not needs_pixels(head):
        return store.image_encoder_forwards - before[0]
    used = head.backbone
    return used.image_forwards - (before[1] if used is backbone else 0)


def needs_pixels(method: Method) -> bool:
    return bool(getattr(method, "needs_pixels", False))


def pixel_data(cfg: TrainConfig, dataset: Dataset, val, store: FeatureStore) -> PixelData:
    """Images (not features) for methods that change the image encoder."""
    text = ClassText(dataset.classnames, dataset.templates, store.text_embeddings, dataset.template)
    scale = float(store.backbone.logit_scale)
    return PixelData(
        dataset.split("train"),
        tuple(val),
        text,
        dataset.num_classes,
        scale,
        cfg.seed,
        dataset.name,
        cfg.shots,
    )


@torch.no_grad()
def evaluate_pixels(
    method, items, classnames, batch_size: int = 64, workers: int = 0, columns: list[int] | None = None
) -> dict[str, Any]:
    """Metrics of a method that runs the (prompted) image encoder on every test image.

    ``columns``: score only these classes of the method's classifier (in this order).
    """
    from vlpeft.data.loader import image_loader

    method.eval()
    backbone = method.backbone
    logits, labels = [], []
    for pixels, y in image_loader(items, backbone.preprocess, batch_size, workers):
        scores = method.logits(pixels.to(backbone.device, backbone.dtype)).float().cpu()
        logits.append(scores[:, columns] if columns is not None else scores)
        labels.append(y)
    return classification_metrics(torch.cat(logits), torch.cat(labels), classnames)


@torch.no_grad()
def evaluate_head(head: FeatureHead, store: FeatureStore, dataset: Dataset) -> dict[str, Any]:
    test = store.feature_set(cache_name(dataset), dataset.split("test"), tokens=head.uses_tokens)
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


def load_run(
    run_dir: str | Path, device: str = "cpu", backbone: Backbone | None = None
) -> tuple[Backbone, FeatureHead, list[str]]:
    """The backbone and the fitted head of a run directory, and its class names.

    ``backbone``: an already loaded backbone to use if it is the run's (same spec and weights).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise ConfigError(
            f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); pass the --out of `vlpeft train`."
        )
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    head = Method.from_saved(run_dir)
    meta = json.loads((run_dir / "adapter_config.json").read_text())
    if backbone is None or backbone.fingerprint() != config["backbone"]["fingerprint"]:
        backbone = load_backbone(config["model"], device=device, dtype=config.get("dtype"))
    if backbone.fingerprint() != config["backbone"]["fingerprint"]:
        logger.warning("The weights of '%s' changed since this run was trained.", config["model"])
    head.attach(backbone, meta["classnames"])
    return backbone, head, list(meta["classnames"])


@torch.no_grad()
def predict(run_dir: str | Path, images: list[str | Path], top_k: int = 5, device: str = "cpu") -> list[dict]:
    """Top-k classes with probabilities for each image, from the saved run alone; an unreadable image
    gets ``{"image", "error"}`` instead and the others are still predicted."""
    backbone, head, classnames = load_run(run_dir, device)
    out = []
    for path in images:
        try:
            image = load_image(path)
        except DatasetError as err:  # one bad file: say so, predict the others
            out.append({"image": str(path), "error": str(err).split(". ")[0] + "."})
            continue
        pixels = backbone.preprocess(image)[None].to(backbone.device, backbone.dtype)
        if needs_pixels(head):
            features = pixels
        elif getattr(head, "uses_tokens", False):
            features = backbone.encode_image_tokens(pixels).float().cpu()
        else:
            features = backbone.encode_image(pixels).float().cpu()
        probs = head.logits(features).float().cpu().softmax(dim=-1)[0]
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


# ---- evaluating a trained run (e.g. on new classes) ------------------------------------------


def evaluate_run(
    run_dir: str | Path,
    dataset: str | None = None,
    root: str | None = None,
    subsample: str | None = None,
    split: str = "test",
    out: str | Path | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    classes: str = "rebuild",
    backbone: Backbone | None = None,
    store: FeatureStore | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on ``split`` of a dataset (default: the one it was trained on).

    ``classes="rebuild"``: class names may differ from training (``--subsample new``,
    cross-dataset transfer) only for methods that transfer to new classes (zero-shot, prompt
    learners); their class-dependent parts are rebuilt from the new names. ``classes="subset"``
    (domain generalisation): every class of the target is one of the run's, and the prediction is
    the argmax over those columns of the run's own classifier, as CoOp's code evaluates ImageNet-A
    and -R (200 of ImageNet's classes). Base-to-new runs report base, new and harmonic mean.
    ``backbone``/``store`` let a caller evaluating many runs load the model once.
    """
    if classes not in CLASS_MODES:
        raise ConfigError(f"classes must be one of {list(CLASS_MODES)}, got {classes!r}.")
    if out is not None:
        check_out_dir(out, overwrite)
    run_dir = Path(run_dir)
    trained = json.loads((run_dir / CONFIG_FILE).read_text()) if (run_dir / CONFIG_FILE).is_file() else None
    if trained is None:
        raise ConfigError(
            f"'{run_dir}' is not a run directory (no {CONFIG_FILE}); pass the --out of `vlpeft train`."
        )
    name, data_root = dataset or trained["dataset"]["name"], root or trained["root"]
    which = subsample or trained["subsample"]
    data = get_dataset_spec(name).load(data_root).subsample_classes(which)
    backbone, head, classnames = load_run(run_dir, resolve_device(device), backbone)
    columns = None
    if classes == "subset":
        columns = subset_columns(classnames, data.classnames, name)
    elif list(data.classnames) != classnames and not head.transfers_to_new_classes:
        raise ConfigError(
            f"{head.name} learned weights for its training classes only; it cannot be evaluated on "
            f"other classes. Use a method that transfers (zero-shot, coop, cocoop, ...)."
        )
    store = store if store is not None and store.backbone is backbone else FeatureStore(backbone, cache_dir)
    if columns is None and isinstance(head, FeatureHead):
        head.retarget(
            backbone, ClassText(data.classnames, data.templates, store.text_embeddings, data.template)
        )
    elif columns is None:
        head.attach(backbone, data.classnames)
    if needs_pixels(head):
        result = evaluate_pixels(head, data.split(split), data.classnames, columns=columns)
    else:
        feats = store.feature_set(cache_name(data), data.split(split), tokens=head.uses_tokens)
        with torch.no_grad():
            logits = head.logits(feats.view(0))
            logits = logits[:, columns] if columns is not None else logits
            result = classification_metrics(logits, feats.labels, data.classnames)
    result = {
        "task": "eval-run",
        "run": str(run_dir),
        "method": head.name,
        "dataset": name,
        "subsample": which,
        "split": split,
        "classes": classes,
        **result,
    }
    _add_base_to_new(result, run_dir, trained, which)
    if out is not None:
        write_run(
            out, {"task": "eval-run", "run": str(run_dir), "dataset": data.describe(), "split": split}, result
        )
    return result


CLASS_MODES = ("rebuild", "subset")


def subset_columns(trained: list[str], target: list[str] | tuple[str, ...], dataset: str) -> list[int]:
    """Index in the run's classes of each target class (domain generalisation); all must be there."""
    index = {name: i for i, name in enumerate(trained)}
    missing = [c for c in target if c not in index]
    if missing:
        raise ConfigError(
            f"{dataset} has {len(missing)} classes the run was not trained on (e.g. {missing[:3]}); "
            "domain generalisation needs the target's classes to be a subset of the source's."
        )
    return [index[c] for c in target]


def _add_base_to_new(result: dict[str, Any], run_dir: Path, trained: dict[str, Any], which: str) -> None:
    """Base accuracy (the run's own test result), new accuracy and their harmonic mean."""
    from vlpeft.runs import RESULT_FILE

    if trained["subsample"] != "base" or which != "new" or not (run_dir / RESULT_FILE).is_file():
        return
    base = json.loads((run_dir / RESULT_FILE).read_text())["metrics"]["accuracy"]
    new = result["metrics"]["accuracy"]
    result["base_to_new"] = {
        "base": base,
        "new": new,
        "harmonic_mean": 2 * base * new / max(base + new, 1e-9),
    }
