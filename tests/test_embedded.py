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
