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
