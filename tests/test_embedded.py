"""The shipped embedded CLIP: loads offline, reproduces its stored zero-shot numbers, adapts."""

from __future__ import annotations

import json

import pytest

from vlpeft.backbones import load_backbone
from vlpeft.backbones.loading import embedded_dir
from vlpeft.data.world.reference import REFERENCE_FILE, subset_zero_shot


@pytest.fixture(scope="module")
def embedded():
    return load_backbone("embedded")


def test_embedded_checkpoint_is_small_and_complete(embedded):
    files = {p.name: p.stat().st_size for p in embedded_dir().iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
    } <= set(files)
    assert sum(files.values()) < 20 * 2**20
    assert (
        embedded.family == "clip"
        and embedded.dtype.is_floating_point
        and embedded.preprocess.output_size == (64, 64)
    )


def test_embedded_reproduces_its_stored_zero_shot_accuracies(embedded):
    stored = json.loads((embedded_dir() / REFERENCE_FILE).read_text())
    now = subset_zero_shot(embedded, stored["per_class"], stored["world_seed"])
    for name, ref in stored["datasets"].items():
        assert now["datasets"][name]["accuracy"] == ref["accuracy"], name
        assert now["datasets"][name]["mean_max_logit"] == pytest.approx(ref["mean_max_logit"], abs=1e-3), name


@pytest.fixture(scope="module")
def pointillism_root(tmp_path_factory):
    """WorldPointillism (a style unseen in pretraining): 16 train, 4 val, 15 test images per class."""
    from vlpeft.data.world.datasets import world_set, write_world_set

    root = tmp_path_factory.mktemp("world")
    ws = world_set("WorldPointillism")
    write_world_set(ws, root / ws.folder, 0, per_class=(16, 4, 15))
    return root


def _accuracy(method: str, embedded, root, cache, **overrides) -> float:
    from vlpeft.engine.runner import TrainConfig, run_train

    common = dict(shots=16, seed=1, cache_dir=str(cache), overrides=overrides, device="cpu")
    cfg = TrainConfig(method, "embedded", "WorldPointillism", str(root), **common)
    return run_train(cfg, backbone=embedded)["metrics"]["accuracy"]


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("zs-init-lp", {}),  # a 16-shot feature head (zero-shot 16.7% -> 26.7% when written)
        ("coop-ctxv1", {"epochs": "50"}),  # CoOp, CoCoOp-paper setting, 150 steps (-> 24.0%)
        ("lora", {"iters_per_shot": "10", "lr": "1e-3"}),  # 160 steps, so a larger lr (-> 29.3%)
    ],
)
def test_sixteen_shot_adaptation_beats_zero_shot(
    method, overrides, embedded, pointillism_root, tmp_path_factory
):
    cache = tmp_path_factory.getbasetemp() / "embedded-cache"
    zero_shot = _accuracy("zero-shot", embedded, pointillism_root, cache)
    adapted = _accuracy(method, embedded, pointillism_root, cache, **overrides)
    assert adapted >= zero_shot + 5, (method, zero_shot, adapted)
