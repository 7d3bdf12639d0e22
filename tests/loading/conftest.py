"""Fixtures of the loading tests."""

from __future__ import annotations

import pytest

from tests.loading.helpers import ITEMS, make_items, split_export
from vl_datasets.testing import write_dataset


@pytest.fixture
def folder(tmp_path):
    write_dataset(tmp_path, "loader", media_items=make_items(ITEMS))
    return tmp_path / "loader"


@pytest.fixture(name="split_export")
def split_export_fixture(tmp_path):
    """An export of 12 items whose images sit in a folder of their own (see helpers.split_export)."""
    return split_export(tmp_path, 12)


@pytest.fixture
def shared_bucket(s3_root):
    """(a prefix in a bucket of the loopback S3 for shared prepared stores, storage options that reach it,
    holding a secret that must never be shown)."""
    import fsspec.config

    from tests.loading.shared_store_files import SECRET

    endpoint = fsspec.config.conf["s3"]["endpoint_url"]
    options = {"endpoint_url": endpoint, "key": "testing", "secret": SECRET, "skip_instance_cache": True}
    return "s3://shared-bucket/prepared", options


@pytest.fixture
def shared_export(tmp_path, monkeypatch):
    """An export of 20 images of 80x60 for the shared-store tests, with progress bars off."""
    from tests.loading.shared_store_files import ITEMS

    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    return write_dataset(tmp_path, "ds", n_items=ITEMS, image_size=(80, 60))
