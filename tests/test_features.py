"""FeatureStore: per-image caching, zero forwards when warm, resume, corruption, augmentation."""

from __future__ import annotations

import logging
import random

import pytest
import torch
from PIL import Image

from vlpeft.backbones import load_backbone
from vlpeft.data import load_dataset
from vlpeft.data.transforms import AugmentedView, AugmentSpec, ImageTransform, random_resized_crop_box
from vlpeft.features import FeatureStore, ViewSpec


@pytest.fixture
def store(tiny_clip, tmp_path):
    return FeatureStore(
        load_backbone(str(tiny_clip)), cache_dir=tmp_path / "cache", batch_size=4, chunk_size=5
    )


@pytest.fixture
def shapes(shapes_folder):
    return load_dataset("imagefolder", shapes_folder)


def test_features_equal_direct_encoding_and_are_cached(store, shapes):
    items = shapes.test
    feats = store.image_features("shapes", items)
    pixels = torch.stack([store.backbone.preprocess(Image.open(i.impath)) for i in items])
    torch.testing.assert_close(feats, store.backbone.encode_image(pixels), atol=1e-5, rtol=1e-5)
    assert store.image_encoder_forwards == len(items)
    again = FeatureStore(store.backbone, store.root)
    torch.testing.assert_close(again.image_features("shapes", items), feats, atol=0, rtol=0)
    assert again.image_encoder_forwards == 0


def test_images_are_shared_between_subsets(store, shapes):
    store.image_features("shapes", shapes.train[:10])
    store.image_features("shapes", shapes.train[5:15])  # half of these are cached
    assert store.image_encoder_forwards == 15


def test_views_differ_but_are_reproducible(store, shapes):
    spec = AugmentSpec(seed=3)
    views = store.views("shapes", shapes.train[:6], spec, num_views=3)
    assert views.shape == (3, 6, store.backbone.embed_dim)
    assert not torch.allclose(views[0], views[1])
    fresh = FeatureStore(store.backbone, store.root.parent / "other-cache")
    torch.testing.assert_close(fresh.views("shapes", shapes.train[:6], spec, 3), views, atol=1e-5, rtol=1e-5)
    eval_feats = store.image_features("shapes", shapes.train[:6])
    assert not torch.allclose(views[0], eval_feats)  # views are not the eval transform


def test_views_do_not_depend_on_file_times_or_the_dataset_root(store, shapes, shapes_folder, tmp_path):
    """A regenerated copy of a dataset (new mtimes, another root) gets the same crops."""
    import os
    import shutil

    copy = tmp_path / "regenerated"
    shutil.copytree(shapes_folder, copy)
    for path in copy.rglob("*.png"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    spec = AugmentSpec(seed=3)
    views = store.views("shapes", shapes.train[:6], spec, num_views=2)
    again = store.views("shapes", load_dataset("imagefolder", copy).train[:6], spec, num_views=2)
    assert store.image_encoder_forwards == 24  # the copy is a new cache entry (its mtimes changed) ...
    torch.testing.assert_close(again, views, atol=1e-5, rtol=1e-5)  # ... but the same views


def test_changed_image_is_encoded_again(store, shapes):
    items = shapes.test[:3]
    store.image_features("shapes", items)
    img = Image.open(items[0].impath).rotate(90)
    img.save(items[0].impath)  # new content, size/mtime change
    store.image_features("shapes", items)
    assert store.image_encoder_forwards == 4


def test_interrupted_extraction_resumes(store, shapes, monkeypatch):
    items = shapes.train  # 20 images: 4 shards of 5
    calls = {"n": 0}
    original = store._write_shard

    def crash_after_two(directory, feats, keys):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(directory, feats, keys)

    monkeypatch.setattr(store, "_write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        store.image_features("shapes", items)
    monkeypatch.setattr(store, "_write_shard", original)
    resumed = FeatureStore(store.backbone, store.root, chunk_size=5)
    resumed.image_features("shapes", items)
    assert resumed.image_encoder_forwards == 10  # only the two unfinished shards
    assert not list(store.root.rglob("*.tmp"))  # nothing half-written


def test_corrupt_shard_is_rebuilt_with_a_warning(store, shapes, caplog):
    items = shapes.test[:5]
    reference = store.image_features("shapes", items)
    shard = next(store.root.rglob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the tensor bytes
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        rebuilt = FeatureStore(store.backbone, store.root)
        out = rebuilt.image_features("shapes", items)
    assert "corrupt" in caplog.text and rebuilt.image_encoder_forwards == 5
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    shard = next(store.root.rglob("shard-*.safetensors"))
    shard.write_bytes(b"garbage")  # unreadable header
    assert FeatureStore(store.backbone, store.root).image_features("shapes", items).shape == (5, 16)


def test_text_embeddings_cached(store):
    prompts = ["a photo of a cat.", "a photo of a dog."]
    feats = store.text_embeddings(prompts)
    torch.testing.assert_close(feats, store.backbone.encode_text(store.backbone.tokenize(prompts)))
    again = FeatureStore(store.backbone, store.root)
    torch.testing.assert_close(again.text_embeddings(prompts), feats)
    assert again.text_encoder_prompts == 0


def test_cache_dir_from_environment(monkeypatch, tmp_path, tiny_clip):
    monkeypatch.setenv("VLPEFT_CACHE_DIR", str(tmp_path / "env-cache"))
    assert FeatureStore(load_backbone(str(tiny_clip))).root == tmp_path / "env-cache"


def test_random_resized_crop_box_semantics():
    spec = AugmentSpec(scale=(0.5, 1.0))
    rng = random.Random(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(100, 60, spec, rng)
        assert left >= 0 and left + w <= 100 and top >= 0 and top + h <= 60
        assert 0.5 * 6000 * 0.7 <= w * h <= 6000  # area within the scale range (up to rounding)
    assert random_resized_crop_box(1000, 10, spec, random.Random(0)) == (493, 0, 13, 10)  # centre fallback


def test_augmented_view_size_and_determinism():
    base = ImageTransform(shortest_edge=32, crop=(32, 32))
    img = Image.new("RGB", (64, 40), (10, 200, 30))
    a = AugmentedView(base, AugmentSpec(), view=2)(img, "k")
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, AugmentedView(base, AugmentSpec(), view=2)(img, "k"))


def test_tokens_view(store, shapes):
    tokens = store.image_features("shapes", shapes.test[:2], ViewSpec(tokens=True))
    assert tokens.shape == (2, 17, 16)


def test_a_read_only_cache_still_reads_and_computes_without_writing(store, shapes, monkeypatch, caplog):
    import vlpeft.features

    cached = store.image_features("shapes", shapes.test[:4])  # written while the cache was writable
    monkeypatch.setattr(vlpeft.features, "writable_dir", lambda path: False)  # a read-only mount
    readonly = FeatureStore(store.backbone, store.root, batch_size=4)
    assert readonly.readonly and "not writable" in caplog.text
    before = sorted(p.name for p in store.root.rglob("*"))
    feats = readonly.image_features("shapes", shapes.test)
    torch.testing.assert_close(feats[:4], cached, atol=0, rtol=0)  # read from the cache
    assert readonly.image_encoder_forwards == len(shapes.test) - 4  # the rest computed once...
    readonly.image_features("shapes", shapes.test)
    assert readonly.image_encoder_forwards == len(shapes.test) - 4  # ...and kept for this process
    readonly.text_embeddings(["a photo of a cat."])
    assert sorted(p.name for p in store.root.rglob("*")) == before  # nothing written
