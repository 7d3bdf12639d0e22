"""The sample dataset, split without leakage, as the integrations' tests open it."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable

import pytest

from vl_datasets import CurationRules, VisualLayerDataset, leakage_safe_split
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT
from vl_datasets.testing import write_dataset

# The example's curation of the sample: each rule removes the defects injected for it.
RULES = CurationRules(
    min_uniqueness=0.05, keep_unscored=True, drop_issues={"mislabels": 0.6, "blur": 0.5, "outliers": 0.5}, dedupe=True
)


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory):
    """The sample, copied so that opening it writes nothing into the package, and a cache of its own."""
    root = tmp_path_factory.mktemp("sample")
    shutil.copytree(SAMPLE_ROOT / SAMPLE_DATASET_ID, root / SAMPLE_DATASET_ID)
    return root / SAMPLE_DATASET_ID, root / "cache"


@pytest.fixture(scope="module")
def open_part(sample_export) -> Callable[..., VisualLayerDataset]:
    """open_part("train", **options): a part of the sample's leakage-safe 80/20 split at 16 px, curated by RULES."""
    folder, cache = sample_export
    everything = VisualLayerDataset.from_export(folder, task=None, cache_dir=cache)
    parts = leakage_safe_split(everything.table, {"train": 0.8, "test": 0.2}, seed=0)

    def open_part(name: str, **options) -> VisualLayerDataset:
        rules = options.pop("curation", RULES)
        subset = dataclasses.replace(rules, subset=parts[name])
        options.setdefault("classes", [str(d) for d in range(10)])
        return VisualLayerDataset.from_export(folder, cache_dir=cache, curation=subset, image_size=16, **options)

    return open_part


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A synthetic 120-item export (each item its own cluster, so a split has groups enough), and a
    cache of its own: small enough for a test to run many fits."""
    root = tmp_path_factory.mktemp("tiny")
    return write_dataset(root, "tiny", n_items=120, n_clusters=120), root / "cache"
