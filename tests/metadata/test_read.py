"""Finding an export's metadata file, and the normalized copy read_metadata keeps beside it."""

from __future__ import annotations

import pytest

from tests.metadata.helpers import (
    items,
    nested_table,
    write_json_export,
    write_parquet,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata.read import read_metadata


def test_parquet_preferred_over_json(tmp_path):
    write_json_export(tmp_path)
    write_parquet(tmp_path, nested_table(items()[:1]))
    assert read_metadata(tmp_path).num_rows == 1


def test_no_metadata_file_names_the_folder(tmp_path):
    with pytest.raises(SchemaError, match=str(tmp_path)):
        read_metadata(tmp_path)


def test_read_metadata_reuses_and_invalidates_its_cache(tmp_path, monkeypatch):
    from vl_datasets.metadata import read as metadata

    export = write_json_export(tmp_path / "export").parent
    cache = tmp_path / "normalized.arrow"
    first = read_metadata(export, cache_path=cache)
    assert cache.is_file()
    assert not list(tmp_path.glob(".*.tmp"))
    calls = []
    real = metadata.read_metadata_file
    monkeypatch.setattr(metadata, "read_metadata_file", lambda path: calls.append(path) or real(path))
    assert read_metadata(export, cache_path=cache).equals(first), "the cached table differs from the first read"
    assert calls == []
    write_json_export(export, items()[:2])  # another export in the same folder: another size
    assert read_metadata(export, cache_path=cache).num_rows == 2
    assert len(calls) == 1
