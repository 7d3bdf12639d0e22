"""Fixtures of the metadata tests."""

from __future__ import annotations

import pytest

from tests.metadata.helpers import write_json_export
from vl_datasets.metadata.read import read_metadata


@pytest.fixture
def expected(tmp_path):
    return read_metadata(write_json_export(tmp_path / "json").parent)
