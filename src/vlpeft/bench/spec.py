"""Bench specs: a YAML file naming the grid, validated in full, expanded into runs.

```yaml
name: coop-fewshot                 # free text
protocol: few-shot                 # few-shot | base-to-new | cross-dataset | domain-generalisation
backbones: [hf:openai/clip-vit-base-patch16]
root: /data                        # default dataset root; "@world" = the embedded world (generated)
datasets: [OxfordPets, {name: DescribableTextures, root: /other}]   # few-shot, base-to-new
source: ImageNet                   # cross-dataset, domain-generalisation
targets: [Caltech101, OxfordPets]  # cross-dataset, domain-generalisation
methods:
  - zero-shot
  - {method: coop, name: "CoOp (4 ctx)", set: {n_ctx: 4}}
shots: [1, 2, 4, 8, 16]
seeds: [1, 2, 3]
val_policy: fewshot                # none | fewshot | full
device: auto
resources: {num_cpus: 1, num_gpus: 0}   # per run, for --executor ray
```

Every name is checked before the first run: an unknown key, method, dataset or setting is an
error that lists the valid choices.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlpeft.errors import ConfigError
from vlpeft.registry import unknown_name_message

PROTOCOLS = ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation")
WORLD_ROOT = "@world"
KEYS = {
    "name": "free text shown in the report",
    "protocol": f"one of {list(PROTOCOLS)}",
    "backbones": "list of model specs (embedded, hf:ORG/NAME, local:DIR)",
    "root": "default dataset root ('@world' for the embedded world)",
    "datasets": "datasets of few-shot and base-to-new: names or {name, root}",
    "source": "the training dataset of cross-dataset and domain-generalisation",
    "targets": "the evaluation datasets of cross-dataset and domain-generalisation",
    "methods": "list of method names or {method, name, set}",
    "shots": "list of shot counts",
    "seeds": "list of few-shot sampling seeds",
    "val_policy": "none | fewshot | full",
    "device": "auto | cpu | cuda | cuda:N",
    "dtype": "float32 | float16 | bfloat16 (default: the checkpoint's)",
    "batch_size": "images per encoder batch",
    "cache_dir": "feature cache (default $VLPEFT_CACHE_DIR or ~/.cache/vlpeft)",
    "resources": "per-run {num_cpus, num_gpus} for --executor ray",
}
METHOD_KEYS = ("method", "name", "set")
EXECUTION_ONLY = ("cache_dir", "batch_size", "resources")  # change no number: not part of a DIR's identity
DATASET_KEYS = ("name", "root")


@dataclass(frozen=True)
class MethodEntry:
    method: str  # registered name
    name: str  # display name
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Directory-safe identity: the method and a hash of its settings."""
        if not self.overrides:
            return self.method
        digest = hashlib.sha1(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.method}-{digest}"


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    root: str


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a trained run beyond its own test split."""

    label: str  # directory name under evals/ and the row's split
    dataset: str
    root: str
    subsample: str = "all"
    classes: str = "rebuild"  # rebuild: the target's class names | subset: the source classifier's columns


@dataclass(frozen=True)
class Run:
    """One training run of the grid and the evaluations that follow it."""

    key: str
    protocol: str
    backbone: str
    method: MethodEntry
    dataset: DatasetEntry
    shots: int  # 0: a method that never looks at training images (zero-shot)
    seed: int
    subsample: str
    evals: tuple[Evaluation, ...] = ()

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchSpec:
    name: str
    protocol: str
    backbones: list[str]
    methods: list[MethodEntry]
    datasets: list[DatasetEntry]
    source: DatasetEntry | None
    targets: list[DatasetEntry]
    shots: list[int]
    seeds: list[int]
    val_policy: str = "fewshot"
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 64
    cache_dir: str | None = None
    resources: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1, "num_gpus": 0})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Identity of the grid's results: everything but where and how fast it runs (the cache folder,
        the encoder batch size, per-run resources), which a user may change between sessions."""
        grid = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_ONLY}
        return hashlib.sha256(json.dumps(grid, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def all_datasets(self) -> list[DatasetEntry]:
        """Every dataset the grid reads: trained on and evaluated on."""
        return [*self.datasets, *([self.source] if self.source else []), *self.targets]

    @property
    def uses_world(self) -> bool:
        return any(d.root == WORLD_ROOT for d in self.all_datasets)

    def runs(self) -> list[Run]:
        """The expanded grid, in a stable order (backbone, dataset, method, shots, seed)."""
        from vlpeft.methods import get_method

        out: list[Run] = []
        sources = [self.source] if self.source else self.datasets
        for backbone in self.backbones:
            for dataset in sources:
                for method in self.methods:
                    trains = getattr(get_method(method.method), "needs_train", True)
                    grid = (
                        [(k, s) for k in self.shots for s in self.seeds] if trains else [(0, self.seeds[0])]
                    )
                    for shots, seed in grid:
                        out.append(self._run(backbone, method, dataset, shots, seed))
        return out

    def _run(self, backbone: str, method: MethodEntry, dataset: DatasetEntry, shots: int, seed: int) -> Run:
        subsample, evals = "all", ()
        if self.protocol == "base-to-new":
            subsample, evals = "base", (Evaluation("new", dataset.name, dataset.root, "new"),)
        elif self.protocol in ("cross-dataset", "domain-generalisation"):
            classes = "subset" if self.protocol == "domain-generalisation" else "rebuild"
            evals = tuple(Evaluation(t.name, t.name, t.root, "all", classes) for t in self.targets)
        parts = [self.protocol, slug(backbone), method.key, dataset.name, f"{shots}shot", f"seed{seed}"]
        return Run("__".join(parts), self.protocol, backbone, method, dataset, shots, seed, subsample, evals)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


# ---- loading and validation ---------------------------------------------------------------------


def load_spec(path: str | Path) -> BenchSpec:
    """Read and validate a spec file; every problem is a ConfigError naming the key or line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Spec file '{path}' does not exist.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"'{path}' is not valid YAML{where}: {problem}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read spec file '{path}': {err}.") from None
    return parse_spec(raw, base=path.parent)


def parse_spec(raw: Any, base: Path | None = None) -> BenchSpec:
    if not isinstance(raw, dict):
        raise ConfigError("A bench spec is a YAML mapping of keys: " + ", ".join(KEYS) + ".")
    unknown = [k for k in raw if k not in KEYS]
    if unknown:
        raise ConfigError(
            f"Unknown spec key {unknown[0]!r}. "
            + unknown_name_message("key", unknown[0], list(KEYS)).split(". ", 1)[-1]
        )
    protocol = str(raw.get("protocol", "few-shot"))
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}.")
    root = _root(raw.get("root"), base)
    spec = BenchSpec(
        name=str(raw.get("name", "bench")),
        protocol=protocol,
        backbones=_strings(raw, "backbones", ["embedded"]),
        methods=[_method(m) for m in _list(raw, "methods")],
        datasets=[_dataset(d, root, base) for d in _list(raw, "datasets", required=False)],
        source=_dataset(raw["source"], root, base) if raw.get("source") is not None else None,
        targets=[_dataset(d, root, base) for d in _list(raw, "targets", required=False)],
        shots=_ints(raw, "shots", [16], minimum=1),
        seeds=_ints(raw, "seeds", [1], minimum=0),
        val_policy=str(raw.get("val_policy", "fewshot")),
        device=str(raw.get("device", "auto")),
        dtype=raw.get("dtype"),
        batch_size=_ints({"batch_size": [raw.get("batch_size", 64)]}, "batch_size", [64], minimum=1)[0],
        cache_dir=str(raw["cache_dir"]) if raw.get("cache_dir") else None,
        resources=_resources(raw.get("resources")),
    )
    _check(spec)
    return spec


def _root(value: Any, base: Path | None) -> str | None:
    if value is None:
        return None
    text = os.path.expandvars(str(value))  # root: $DATA
    if text == WORLD_ROOT:
        return text
    path = Path(text).expanduser()
    return str(path if path.is_absolute() or base is None else (base / path).resolve())


def _list(raw: dict, key: str, required: bool = True) -> list:
    value = raw.get(key)
    if value is None:
        if required:
            raise ConfigError(f"The spec needs '{key}': {KEYS[key]}.")
        return []
    if not isinstance(value, list):
        value = [value]
    if required and not value:
        raise ConfigError(f"'{key}' is empty: the grid would have no runs.")
    return value


def _strings(raw: dict, key: str, default: list[str]) -> list[str]:
    values = _list(raw, key, required=False) or default
    return [str(v) for v in values]


def _ints(raw: dict, key: str, default: list[int], minimum: int) -> list[int]:
    values = _list(raw, key, required=False) or default
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"'{key}' must hold integers >= {minimum}, got {v!r}.")
        out.append(v)
    if len(set(out)) != len(out):
        raise ConfigError(f"'{key}' lists a value twice: {out}.")
    return out


def _entry(entry: Any, what: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """A spec list entry as a mapping: a bare name is ``{keys[0]: name}``; unknown keys are refused."""
    if isinstance(entry, str):
        entry = {keys[0]: entry}
    if not isinstance(entry, dict) or keys[0] not in entry:
        raise ConfigError(f"A {what} entry is a name or {{{', '.join(keys)}}}, got {entry!r}.")
    unknown = [k for k in entry if k not in keys]
    if unknown:
        raise ConfigError(f"Unknown key {unknown[0]!r} in {what} entry {entry!r}; valid: {list(keys)}.")
    return entry


def _method(entry: Any) -> MethodEntry:
    from vlpeft.methods import get_method

    entry = _entry(entry, "methods", METHOD_KEYS)
    cls = get_method(str(entry["method"]))  # unknown names raise with the closest match
    overrides = entry.get("set") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"'set' of method {cls.name} must be a mapping of settings, got {overrides!r}.")
    overrides = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()}
    cls.config_class().with_overrides(overrides)  # unknown keys and bad values raise here
    return MethodEntry(cls.name, str(entry.get("name") or cls.name), overrides)


def _dataset(entry: Any, root: str | None, base: Path | None) -> DatasetEntry:
    from vlpeft.data import get_dataset_spec

    entry = _entry(entry, "dataset", DATASET_KEYS)
    spec = get_dataset_spec(str(entry["name"]))  # unknown names raise with the closest match
    where = _root(entry.get("root"), base) or root
    if where is None:
        raise ConfigError(
            f"Dataset {spec.name} has no root: give 'root' at the top of the spec or in its entry."
        )
    if where != WORLD_ROOT and not Path(where).is_dir():
        raise ConfigError(f"The root of {spec.name}, '{where}', is not a directory.")
    return DatasetEntry(spec.name, where)


def _resources(value: Any) -> dict[str, float]:
    out = {"num_cpus": 1.0, "num_gpus": 0.0}
    if value is None:
        return out
    if not isinstance(value, dict) or any(k not in out for k in value):
        raise ConfigError(f"'resources' takes num_cpus and num_gpus, got {value!r}.")
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"resources.{k} must be a non-negative number, got {v!r}.")
        out[k] = float(v)
    return out


def _check(spec: BenchSpec) -> None:
    from vlpeft.methods import get_method
    from vlpeft.methods.inputs import VAL_POLICIES

    if spec.val_policy not in VAL_POLICIES:
        raise ConfigError(f"val_policy must be one of {list(VAL_POLICIES)}, got {spec.val_policy!r}.")
    if spec.protocol in ("few-shot", "base-to-new"):
        if not spec.datasets:
            raise ConfigError(f"The {spec.protocol} protocol needs 'datasets'.")
        if spec.source or spec.targets:
            raise ConfigError(
                f"'source' and 'targets' belong to cross-dataset/domain-generalisation, not {spec.protocol}."
            )
    else:
        if spec.source is None or not spec.targets:
            raise ConfigError(f"The {spec.protocol} protocol needs 'source' and 'targets'.")
        if spec.datasets:
            raise ConfigError(f"The {spec.protocol} protocol trains on 'source'; remove 'datasets'.")
    if spec.protocol in ("base-to-new", "cross-dataset"):
        fixed = [m.method for m in spec.methods if not get_method(m.method).transfers_to_new_classes]
        if fixed:
            raise ConfigError(
                f"{spec.protocol} evaluates on classes the method was not trained on; {fixed} learn weights "
                "for their training classes only. Use methods that transfer (zero-shot, prompt learners)."
            )
    names = [m.name for m in spec.methods]
    keys = [m.key for m in spec.methods]
    if len(set(names)) != len(names) or len(set(keys)) != len(keys):
        raise ConfigError(f"Two methods entries share a display name or the same settings: {names}.")
