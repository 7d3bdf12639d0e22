"""The normalized table on disk: a round trip, and files from another version or of junk read as absent."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.metadata.helpers import (
    INFO,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata.normalize import VERSION_KEY, info_of
from vl_datasets.metadata.table_file import read_normalized, write_normalized


def test_normalized_round_trip(tmp_path, expected):
    write_normalized(expected, tmp_path / "n.arrow")
    again = read_normalized(tmp_path / "n.arrow")
    assert again.schema.equals(expected.schema, check_metadata=True), "the schema or its metadata changed"
    assert again.equals(expected), "the table read back differs from the one written"
    assert info_of(again) == INFO


def test_cache_from_another_version_is_rebuilt(tmp_path, expected):
    stale = expected.replace_schema_metadata({**expected.schema.metadata, VERSION_KEY: b"0"})
    with pa.ipc.new_file(str(tmp_path / "n.arrow"), stale.schema) as writer:  # a readable file, older version
        writer.write_table(stale)
    assert read_normalized(tmp_path / "n.arrow") is None
    assert read_normalized(tmp_path / "missing.arrow") is None
    (tmp_path / "junk.arrow").write_bytes(b"not an arrow file")
    assert read_normalized(tmp_path / "junk.arrow") is None
    with pytest.raises(SchemaError):
        write_normalized(stale, tmp_path / "other.arrow")


def test_a_table_of_version_2_is_read_as_one_that_leaves_no_column_out(tmp_path, expected):
    """An index built before an index could leave columns in its metadata file holds them all."""
    older = expected.replace_schema_metadata({**expected.schema.metadata, VERSION_KEY: b"2"})
    with pa.ipc.new_file(str(tmp_path / "n.arrow"), older.schema) as writer:
        writer.write_table(older)
    again = read_normalized(tmp_path / "n.arrow")
    assert again is not None and again.equals(older) and "url" in again.column_names
