"""A dataset's leakage-safe split is kept beside its item list: split once, then mapped by every call
(every rank of a job) with the same settings."""

from __future__ import annotations

import logging
import pickle

import pytest

from vl_datasets import leakage_safe_split
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.metadata.split_files import SPLITS
from vl_datasets.testing import write_dataset

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@pytest.fixture
def everything(tmp_path):
    source = write_dataset(tmp_path / "src", "x", n_items=120, n_clusters=15)
    return VisualLayerDataset.from_export(source, cache_dir=tmp_path / "cache", task=None)


def test_a_kept_split_is_mapped_by_later_calls_without_reading_the_index_again(everything):
    reference = leakage_safe_split(everything.table, FRACTIONS, seed=3)
    first = leakage_safe_split(everything, FRACTIONS, seed=3)
    assert first == reference
    # A part pickles as its file's path, so a worker or another rank maps it instead of a copy.
    assert str(everything.items.list_folder / SPLITS).encode() in pickle.dumps(first["train"])
    everything.items._files.index.unlink()  # a new split would have to read it (and would name it gone)
    again = leakage_safe_split(everything, FRACTIONS, seed=3)
    assert again == reference


def test_each_seed_fraction_and_stratification_is_a_split_of_its_own(everything):
    calls = [
        (FRACTIONS, 3, True),
        (FRACTIONS, 4, True),
        ({"train": 0.5, "val": 0.25, "test": 0.25}, 3, True),
        (FRACTIONS, 3, False),
    ]
    for fractions, seed, stratify in calls:
        kept = leakage_safe_split(everything, fractions, seed=seed, stratify=stratify)
        assert kept == leakage_safe_split(everything.table, fractions, seed=seed, stratify=stratify)
    assert len(list((everything.items.list_folder / SPLITS).iterdir())) == len(calls)


def test_the_same_fractions_in_another_order_never_change_a_part_handed_over_before(everything):
    """A part pickles as its file's path: the reordered call wrote its parts into the same folder,
    and the first call's "train", unpickled in a worker, held the second's "test"."""
    parts = leakage_safe_split(everything, {"train": 0.8, "test": 0.2}, seed=0)
    handed_over = pickle.dumps(parts["train"])
    reordered = leakage_safe_split(everything, {"test": 0.2, "train": 0.8}, seed=0)
    assert reordered == leakage_safe_split(everything.table, {"test": 0.2, "train": 0.8}, seed=0)
    assert pickle.loads(handed_over) == parts["train"]
    assert leakage_safe_split(everything, {"train": 0.8, "test": 0.2}, seed=0) == parts


@pytest.mark.parametrize("damage", ["truncated", "removed", "manifest"])
def test_a_damaged_kept_split_is_split_again(everything, damage):
    reference = leakage_safe_split(everything.table, FRACTIONS, seed=1)
    leakage_safe_split(everything, FRACTIONS, seed=1)
    [folder] = (everything.items.list_folder / SPLITS).iterdir()
    part = folder / "part-1.arrow"
    if damage == "truncated":
        part.write_bytes(part.read_bytes()[:-40])
    elif damage == "removed":
        part.unlink()
    else:
        (folder / "manifest.json").write_text('{"parts": {"train": 1, "val": 2, "test": 3}}')
    assert leakage_safe_split(everything, FRACTIONS, seed=1) == reference
    assert leakage_safe_split(everything, FRACTIONS, seed=1) == reference  # and what it wrote again holds


def test_a_list_folder_that_cannot_keep_a_split_splits_in_memory(everything, caplog):
    (everything.items.list_folder / SPLITS).write_text("a file where the splits would go")
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        parts = leakage_safe_split(everything, FRACTIONS, seed=2)
    assert "Cannot keep the split" in caplog.text
    assert parts == leakage_safe_split(everything.table, FRACTIONS, seed=2)
