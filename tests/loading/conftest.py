"""Fixtures of the loading tests."""

from __future__ import annotations

import pytest

from tests.loading.helpers import ITEMS, make_items
from vl_datasets.testing import write_dataset


@pytest.fixture
def folder(tmp_path):
    write_dataset(tmp_path, "loader", media_items=make_items(ITEMS))
    return tmp_path / "loader"
