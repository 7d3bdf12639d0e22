"""A JSON export's ``media_items``: Arrow's reader, the json.load fallback, and the errors that name the file."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from tests.metadata.helpers import (
    INFO,
    items,
    raw_columns,
    write_json_export,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata.normalize import info_of, normalize
from vl_datasets.metadata.read import read_metadata


def test_pretty_printed_json_and_json_strings_with_newlines(tmp_path, expected):
    assert read_metadata(write_json_export(tmp_path / "a", indent=2).parent).to_pylist() == expected.to_pylist()
    media = items()
    table = pa.table(
        dict(
            raw_columns(media),
            metadata_items=[json.dumps(m["metadata_items"], indent=1) if "metadata_items" in m else "" for m in media],
        )
    )
    assert normalize(table).to_pylist() == expected.to_pylist()


def test_json_export_with_odd_types_falls_back_to_json_load(tmp_path, expected):
    media = items()
    media[0]["height"] = 375.0
    media[1]["metadata_items"][0]["properties"]["frame_timestamp"] = "1.5"
    table = read_metadata(write_json_export(tmp_path, media).parent)
    assert table.to_pylist() == expected.to_pylist()
    assert info_of(table) == INFO


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}, "media_items": [{"media_id": "a",', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"metadata\.json"):
        read_metadata(tmp_path)


def test_json_without_media_items(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}}', encoding="utf-8")
    with pytest.raises(SchemaError) as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "media_items"
