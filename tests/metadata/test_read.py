"""Finding an export's metadata file, and the normalized copy read_metadata keeps beside it."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.metadata.helpers import (
    items,
    nested_table,
    write_json_export,
    write_parquet,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata.read import read_metadata, read_metadata_file


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


def _parquet_with_bytes_replaced(tmp_path, old: bytes, new: bytes):
    """A parquet file whose text ``old`` (a value or a column name) is overwritten in place by ``new``,
    as a writer that does not check UTF-8 would leave it. Uncompressed and plain-encoded, so that
    the text lies as it is in the file."""
    assert len(old) == len(new)
    table = pa.table(
        {
            "media_id": ["m-1", "m-2", "m-3"],
            "file_name": ["a.jpg", "cat_01.jpg", "c.jpg"],
            "metadata_items": [None, '[{"type": "image_label", "properties": {"category_name": "tabby"}}]', None],
        }
    )
    path = tmp_path / "metadata.parquet"
    pq.write_table(table, path, compression="none", use_dictionary=False, store_schema=False, write_statistics=False)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    return path


@pytest.mark.parametrize(
    "old,new,field,media_id",
    [
        (b"cat_01.jpg", b"cat_\xff1.jpg", "file_name", "m-2"),
        (b"tabby", b"tab\xffy", "metadata_items", "m-2"),
        (b"m-3", b"m\xff3", "media_id", None),  # no media id to name: the row, then
        (b"file_name", b"file\xffname", "metadata", None),
    ],
    ids=["value", "JSON string", "media id", "column name"],
)
def test_parquet_text_that_is_not_utf8_is_refused_naming_the_column(tmp_path, old, new, field, media_id):
    path = _parquet_with_bytes_replaced(tmp_path, old, new)
    with pytest.raises(SchemaError) as caught:
        read_metadata_file(path)
    assert caught.value.field == field
    assert caught.value.media_id == media_id
    assert str(path) in str(caught.value)
    if field == "media_id":
        assert "row 2" in str(caught.value), f"the message does not name the row: {caught.value}"
