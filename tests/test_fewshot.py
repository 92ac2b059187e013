"""Few-shot sampling reproduces CoOp/Dassl exactly on the published split files."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import pytest

from vlpeft.data.base import Datum
from vlpeft.data.coop import read_split_file
from vlpeft.data.fewshot import fewshot_train_val, subsample_labels

from conftest import SPLIT_FILES, shared_path


def dassl_reference(split: dict, shots: int, seed: int) -> tuple[list[str], list[str]]:
    """Dassl's generate_fewshot_dataset as CoOp's dataset classes call it, on global `random`.

    set_random_seed(seed) -> train K-shot -> val min(K, 4)-shot, grouping with a defaultdict.
    """

    def generate(items, num_shots):
        tracker = defaultdict(list)
        for item in items:
            tracker[item[1]].append(item)
        out = []
        for _, group in tracker.items():
            out.extend(random.sample(group, num_shots) if len(group) >= num_shots else group)
        return out

    state = random.getstate()
    try:
        random.seed(seed)
        train = generate(split["train"], shots)
        val = generate(split["val"], min(shots, 4))
    finally:
        random.setstate(state)
    return [t[0] for t in train], [v[0] for v in val]


@pytest.mark.parametrize("name", sorted(SPLIT_FILES))
def test_fewshot_matches_dassl_on_published_splits(name, tmp_path):
    path = shared_path("splits", SPLIT_FILES[name])
    raw = json.loads(path.read_text())
    splits = read_split_file(path, tmp_path)
    for shots in (1, 2, 4, 8, 16):
        for seed in (1, 2, 3):
            train, val = fewshot_train_val(splits["train"], splits["val"], shots, seed)
            ref_train, ref_val = dassl_reference(raw, shots, seed)
            assert [d.relpath for d in train] == ref_train, (name, shots, seed)
            assert [d.relpath for d in val] == ref_val, (name, shots, seed)


def test_fewshot_pinned_oxfordpets_seed1(tmp_path):
    """A pinned sample, so that a change to both implementation and reference is noticed."""
    path = shared_path("splits", "split_zhou_OxfordPets.json")
    splits = read_split_file(path, tmp_path)
    train, val = fewshot_train_val(splits["train"], splits["val"], 1, 1)
    assert len(train) == 37 and len(val) == 37
    assert [d.relpath for d in train[:3]] == PINNED_PETS_1SHOT_SEED1


PINNED_PETS_1SHOT_SEED1 = [
    "Abyssinian_141.jpg",
    "american_bulldog_200.jpg",
    "american_pit_bull_terrier_118.jpg",
]


def _items(counts: dict[int, int]) -> list[Datum]:
    return [Datum(f"/x/{c}_{i}.jpg", c, f"c{c}", f"{c}_{i}.jpg") for c, n in counts.items() for i in range(n)]


def test_classes_with_fewer_items_than_shots_keep_all():
    items = _items({0: 2, 1: 10})
    train, _ = fewshot_train_val(items, items, 4, seed=1)
    assert sum(d.label == 0 for d in train) == 2
    assert sum(d.label == 1 for d in train) == 4


def test_without_val_split_val_comes_from_unsampled_train():
    items = _items({0: 20, 1: 20, 2: 20})
    train, val = fewshot_train_val(items, [], 4, seed=3)
    reference, _ = fewshot_train_val(items, items, 4, seed=3)
    assert train == reference  # train shots are CoOp's regardless of val
    assert len(val) == 12 and not {d.impath for d in val} & {d.impath for d in train}


def test_sampling_leaves_global_random_state_alone():
    items = _items({0: 30})
    random.seed(123)
    expected = random.random()
    random.seed(123)
    fewshot_train_val(items, items, 2, seed=9)
    assert random.random() == expected


def test_bad_shots_is_a_clear_error():
    with pytest.raises(ValueError, match="shots must be a positive integer"):
        fewshot_train_val(_items({0: 3}), [], 0, seed=1)


@pytest.mark.parametrize("n", [1, 2, 37, 100, 101])
def test_base_new_split_halves(n):
    base, new = subsample_labels(n, "base"), subsample_labels(n, "new")
    assert base == list(range(math.ceil(n / 2)))
    assert new == list(range(math.ceil(n / 2), n))
