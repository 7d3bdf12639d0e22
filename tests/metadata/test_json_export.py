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


def _json_bytes(media=None) -> bytes:
    return json.dumps({"info": INFO, "media_items": items() if media is None else media}).encode()


def _not_utf8(data: bytes, old: bytes, new: bytes) -> tuple[bytes, int]:
    assert data.count(old) == 1, f"{old!r} is not unique in the export"
    return data.replace(old, new), data.index(old) + next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)


@pytest.mark.parametrize(
    "change",
    [
        (b'"cat_01.jpg"', b'"cat_\xff1.jpg"'),  # a byte no UTF-8 text holds
        (b'"issues_description"', b'"issues\xe9description"'),  # Latin-1 in a key
        (b"a tabby cat", b"a tabby \xc3t"),  # a sequence cut short
        (b"a tabby cat", b"a tabby \xed\xa0\x80t"),  # an encoded surrogate, which json.load's decoder lets through
    ],
    ids=["invalid byte", "latin-1 key", "cut sequence", "surrogate"],
)
def test_metadata_json_that_is_not_utf8_names_the_byte_offset(tmp_path, change):
    data, offset = _not_utf8(_json_bytes(), *change)
    (tmp_path / "metadata.json").write_bytes(data)
    with pytest.raises(SchemaError) as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "metadata"
    assert f"offset {offset:,}" in str(caught.value), f"the message does not give offset {offset}: {caught.value}"
    assert str(tmp_path / "metadata.json") in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
def test_metadata_json_in_another_encoding_is_refused(tmp_path, encoding):
    media = items()
    media[0]["file_name"] = "café.jpg"  # json.load would take UTF-16 and UTF-32 from their first bytes
    text = json.dumps({"info": INFO, "media_items": media}, ensure_ascii=False)
    (tmp_path / "metadata.json").write_bytes(text.encode(encoding))
    with pytest.raises(SchemaError, match="not UTF-8 text") as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "metadata"


def test_metadata_json_not_utf8_at_the_end_and_past_a_large_first_slice(tmp_path):
    data = _json_bytes()
    (tmp_path / "metadata.json").write_bytes(data + b"\xe2\x82")  # the file ends inside a sequence
    with pytest.raises(SchemaError, match=f"offset {len(data):,}"):
        read_metadata(tmp_path)
    padded = data[:-2] + b" " * (20 << 20) + b"\xff" + data[-2:]  # past the first 16 MiB slice the offset is read in
    (tmp_path / "metadata.json").write_bytes(padded)
    with pytest.raises(SchemaError, match=f"offset {len(data) - 2 + (20 << 20):,}"):
        read_metadata(tmp_path)


def test_metadata_json_with_a_utf8_byte_order_mark_is_read(tmp_path, expected):
    (tmp_path / "metadata.json").write_bytes(b"\xef\xbb\xbf" + _json_bytes())
    assert read_metadata(tmp_path).to_pylist() == expected.to_pylist()
    (tmp_path / "metadata.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(items()).encode())  # json.load's path
    assert read_metadata(tmp_path).to_pylist() == expected.to_pylist()


def test_json_load_fallback_refuses_what_is_not_utf8_too(tmp_path, monkeypatch):
    from vl_datasets.metadata import read

    monkeypatch.setattr(read, "check_utf8", lambda path: None)  # as if the file changed after the check
    data, offset = _not_utf8(json.dumps(items()).encode(), b'"cat_01.jpg"', b'"cat_\xff1.jpg"')
    (tmp_path / "metadata.json").write_bytes(data)
    with pytest.raises(SchemaError, match=f"offset {offset:,}"):
        read_metadata(tmp_path)
