"""Fixtures of the metadata tests."""

from __future__ import annotations

import pytest

from vl_datasets.metadata.read import read_metadata

from tests.metadata.helpers import write_json_export


@pytest.fixture
def expected(tmp_path):
    return read_metadata(write_json_export(tmp_path / "json").parent)
