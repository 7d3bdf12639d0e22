from __future__ import annotations

import pytest

from vl_datasets.testing import LocalVisualLayer, write_dataset


@pytest.fixture
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root, "ds-ready", n_items=8, n_clusters=3)
    write_dataset(root, "ds-indexing", n_items=2, status="INDEXING", seed=1)
    return root


@pytest.fixture
def local_vl(dataset_root):
    with LocalVisualLayer(dataset_root) as service:
        yield service


@pytest.fixture
def quick_vl(dataset_root):
    """Exports complete at the first poll: for code under test that waits with real sleeps."""
    with LocalVisualLayer(dataset_root, export_polls=0) as service:
        yield service


@pytest.fixture
def local_vl_auth(dataset_root):
    with LocalVisualLayer(dataset_root, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789") as service:
        yield service
