"""The method interface, method configs and the method registry.

Every method is an ``nn.Module`` with a typed dataclass config (defaults from its official
code, the source file named in a comment), a docstring with the paper link, and a state that
saves to ``adapter.safetensors`` + ``adapter_config.json`` holding only what was learned (or
cached). The families share this base, each in its own folder with its own base class:
``heads/`` (feature heads), ``prompts/`` (prompt learners) and ``adapters/`` (module adapters).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlpeft.errors import ConfigError
from vlpeft.io import atomic_path, write_json_atomic
from vlpeft.registry import Registry, unknown_name_message


@dataclasses.dataclass(frozen=True)
class Range:
    """A valid interval for a numeric setting, checked by every config that has the field."""

    low: float = float("-inf")
    high: float = float("inf")
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == float("inf"):
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (
            f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        )


POSITIVE, AT_LEAST_1, NON_NEGATIVE = Range(0, low_open=True), Range(1), Range(0)
FRACTION, PROBABILITY = Range(0, 1), Range(0, 1, high_open=True)
# Settings that share a meaning across methods (a method's own ones are checked in its config).
RANGES: dict[str, Range] = {
    **dict.fromkeys(
        ("lr", "eps", "temperature", "clip_scale", "c", "logit_scale", "gpa_std", "thresh"), POSITIVE
    ),
    **dict.fromkeys(("alpha_init_scale",), POSITIVE),
    **dict.fromkeys(
        (
            "epochs",
            "batch_size",
            "views",
            "accumulate",
            "iterations",
            "alpha_every",
            "max_iter",
            "search_steps",
            "eval_chunk",
            "eval_every",
            "feat_num",
            "gamma_steps",
            "r",
            "reduction",
            "bottleneck",
            "n_prompts",
            "n_vision_prompts",
        ),
        AT_LEAST_1,
    ),
    **dict.fromkeys(
        (
            "depth_text",
            "depth_vision",
            "n_ctx_text",
            "n_ctx_vision",
            "warmup_epochs",
            "warmup_iterations",
            "iters_per_shot",
            "weight_decay",
            "min_lr",
            "warmup_lr",
            "grad_clip",
            "weight",
            "text_loss_weight",
            "image_loss_weight",
            "projection_weight",
            "init_alpha",
            "init_beta",
            "init_gamma",
            "residual_scale",
            "scale",
            "gpa_mean",
        ),
        NON_NEGATIVE,
    ),
    **dict.fromkeys(("momentum", "dropout"), PROBABILITY),
    **dict.fromkeys(("ratio", "text_batch_ratio"), FRACTION),
}

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Methods renamed since runs were saved under the old name: saved runs still load.
RENAMED = {"plot": "plot-patches"}


@dataclasses.dataclass
class MethodConfig:
    """Base of method configs: typed fields, ``--set key=value`` overrides, JSON round trip."""

    def __post_init__(self) -> None:
        """Check every numeric field of :data:`RANGES` the config has; subclasses validate the rest
        here (and call ``super().__post_init__()`` first)."""
        for name, rule in RANGES.items():
            value = getattr(self, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not rule.holds(value):
                raise ConfigError(f"{name} must be {rule}, got {value} ({type(self).__name__}).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MethodConfig:
        cls._refuse_unknown(values)
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})

    def with_overrides(self, overrides: Mapping[str, Any]) -> MethodConfig:
        """A copy with ``overrides`` applied; string values are parsed by the field's type."""
        self._refuse_unknown(overrides)
        hints = typing.get_type_hints(type(self))
        return dataclasses.replace(self, **{k: _coerce(k, v, hints[k]) for k, v in overrides.items()})

    @classmethod
    def _refuse_unknown(cls, values: Mapping[str, Any]) -> None:
        unknown = [k for k in values if k not in cls.field_names()]
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {unknown} for {cls.__name__}. Valid keys: {cls.field_names()}"
                f"{_did_you_mean(unknown[0], cls.field_names())}"
            )


def _did_you_mean(name: str, choices: list[str]) -> str:
    """The closest key: one that starts with or contains ``name`` (``iters`` -> ``iters_per_shot``), else
    the most similar spelling."""
    within = sorted((c for c in choices if c.startswith(name) or name in c), key=len)
    if within:
        return f" (Did you mean '{within[0]}'?)"
    message = unknown_name_message("key", name, choices)
    return f" ({message.split('. ', 1)[1].split(' Available')[0]})" if "Did you mean" in message else ""


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Parse ``value`` (often a CLI string) as the field's annotated type."""
    if not isinstance(value, str):
        return _coerce_json(key, value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value.lower() in ("none", "null") and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if hint is bool:
            return _parse_bool(value)
        if hint in (int, float, str):
            return hint(value)
        if origin in (tuple, list):
            parts = json.loads(value) if value.strip().startswith("[") else value.split(",")
            items = [_coerce(key, str(p).strip(), args[0]) for p in parts]
            return tuple(items) if origin is tuple else items
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"Setting '{key}': cannot read {value!r} as {_type_name(hint)}.") from None
    return value


def _coerce_json(key: str, value: Any, hint: Any) -> Any:
    if isinstance(value, list) and typing.get_origin(hint) is tuple:
        return tuple(value)
    return value


def _parse_bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """``["lr=0.1", "epochs=5"]`` -> ``{"lr": "0.1", "epochs": "5"}``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}.")
        out[key.strip()] = value.strip()
    return out


class Method(nn.Module):
    """Base class of all methods. Subclasses set the class attributes below."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Official per-dataset settings (dataset name -> overrides), applied before the user's --set.
    dataset_presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, config: MethodConfig | None = None):
        super().__init__()
        self.config = config if config is not None else self.config_class()

    @classmethod
    def preset(cls, dataset: str, shots: int | None) -> dict[str, Any]:
        """Overrides the official code uses for ``dataset`` (and ``shots``); empty if none."""
        return dict(cls.dataset_presets.get(dataset, {}))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # ---- loss terms, for the training log ------------------------------------------------------
    def record_terms(self, **terms: torch.Tensor) -> None:
        """Remember the parts of the last loss, as they enter it (weighted), for the epoch log."""
        self.__dict__["_loss_terms"] = {k: float(v.detach()) for k, v in terms.items()}

    def pop_loss_terms(self) -> dict[str, float]:
        """The terms of the last loss (empty for single-term losses); the loops read them per step."""
        return self.__dict__.pop("_loss_terms", {})

    # ---- saving and loading -------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """Everything learned or cached, by name (the module's state dict)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Set every tensor of ``state`` by name, creating those that do not exist yet (shapes of
        existing ones must match: a context of another length is refused, not silently swapped in)."""
        for name, tensor in state.items():
            _set_tensor(self, name, tensor)

    def save_adapter(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> None:
        directory = Path(directory)
        meta = {"method": self.name, "family": self.family, "config": self.config.to_dict(), **(extra or {})}
        with atomic_path(directory / ADAPTER_WEIGHTS) as tmp:
            save_file(self.adapter_state(), str(tmp), metadata={"method": self.name})
        write_json_atomic(directory / ADAPTER_CONFIG, meta)

    @classmethod
    def from_saved(cls, directory: str | Path) -> Method:
        """Rebuild a saved method from ``adapter_config.json`` + ``adapter.safetensors``."""
        meta = json.loads((Path(directory) / ADAPTER_CONFIG).read_text())
        method_cls = get_method(RENAMED.get(meta["method"], meta["method"]))
        method = method_cls(method_cls.config_class.from_dict(meta["config"]))
        method.before_load(meta)
        method.load_adapter_state(load_file(str(Path(directory) / ADAPTER_WEIGHTS)))
        return method.eval()

    def before_load(self, meta: Mapping[str, Any]) -> None:
        """Create sub-modules from the saved metadata before tensors are loaded into them."""

    def export_parts(self, merge: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        """``(transformers model, W, b)`` with logits ``normalize(model image features) @ W.T + b``.

        For ``vlpeft export``: methods whose prediction a plain transformers model plus a linear
        class head reproduces implement it (an attached method: ``attach(backbone, classnames)``).
        """
        raise not_exportable(self.name, "they are not a linear head over the model's image features")


def not_exportable(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"{name} cannot be exported as a plain transformers model: its predictions need vlpeft's code "
        f"({why}). Use `vlpeft predict --run DIR` instead."
    )


def _set_tensor(module: nn.Module, dotted: str, tensor: torch.Tensor) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    current = getattr(module, leaf, None)
    if isinstance(current, torch.Tensor):
        check_shape(type(module).__name__, dotted, tuple(current.shape), tuple(tensor.shape))
    if isinstance(current, nn.Parameter):
        setattr(module, leaf, nn.Parameter(tensor.clone(), requires_grad=current.requires_grad))
    elif leaf in module._buffers or current is None:
        module.register_buffer(leaf, tensor.clone())
    else:
        raise ConfigError(f"Saved tensor '{dotted}' does not match an attribute of {type(module).__name__}.")


def check_shape(owner: str, name: str, expected: tuple[int, ...], saved: tuple[int, ...]) -> None:
    """Refuse a saved tensor whose shape differs from the tensor it would replace."""
    if expected != saved:
        raise ConfigError(
            f"Saved tensor '{name}' has shape {list(saved)} but this {owner} expects {list(expected)}; "
            "was it saved with other settings (n_ctx, rank, classes) or another backbone?"
        )


METHODS: Registry[type[Method]] = Registry("method")


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: ``@register_method`` adds a method under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} must set a `name` to be registered.")
    METHODS.register(cls.name, cls)
    return cls


def get_method(name: str) -> type[Method]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
