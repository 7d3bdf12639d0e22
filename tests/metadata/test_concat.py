"""The metadata files of a selection's chunks joined into one: what one export of it would have read."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vl_datasets.errors import CorruptArchiveError, SchemaError
from vl_datasets.metadata.concat import concatenate_metadata, media_ids_of
from vl_datasets.metadata.read import read_metadata_file


def _item(media_id: str, **extra) -> dict:
    labels = [{"type": "image_label", "properties": {"category_name": "cat", "source": "User"}}]
    return {"media_id": media_id, "file_path": f"{media_id}.jpg", "metadata_items": labels, **extra}


def _chunk(tmp_path, i: int, name: str) -> Path:
    (tmp_path / str(i)).mkdir()
    return tmp_path / str(i) / name


def test_parquet_chunks_whose_columns_differ_are_read_as_one_file_would_be(tmp_path):
    parts = [_chunk(tmp_path, 0, "metadata.parquet"), _chunk(tmp_path, 1, "metadata.parquet")]
    items = json.dumps([{"type": "image_label", "properties": {"category_name": "cat"}}])
    pq.write_table(
        pa.table({"media_id": ["a", "b"], "file_path": ["a.jpg", "b.jpg"], "metadata_items": [items, items],
                  "score": [1, 2], "note": [None, None], "tag": [7, 8]}),
        parts[0],
    )  # fmt: skip
    pq.write_table(
        pa.table({"media_id": ["c"], "file_path": ["c.jpg"], "metadata_items": [items],
                  "score": [2.5], "note": ["kept"], "tag": ["x"]}),
        parts[1],
    )  # fmt: skip
    out = tmp_path / "joined"
    out.mkdir()
    assert concatenate_metadata(parts, out) == 3
    table = read_metadata_file(out / "metadata.parquet")
    assert table.column("media_id").to_pylist() == ["a", "b", "c"]
    assert table.column("score").to_pylist() == [1.0, 2.0, 2.5], "whole numbers and fractions: floats"
    assert table.column("note").to_pylist() == [None, None, "kept"], (
        "a column all null in one chunk: its type elsewhere"
    )
    assert table.column("tag").to_pylist() == ["7", "8", "x"], "numbers and text in one column: text"
    assert [labels[0]["category_name"] for labels in table.column("labels").to_pylist()] == ["cat"] * 3


def test_json_chunks_join_into_one_export_with_the_first_chunks_info(tmp_path):
    parts = [_chunk(tmp_path, i, "metadata.json") for i in range(3)]
    big = 2**70  # past 64 bits: the streamed read's slower parser takes it on
    parts[0].write_text(json.dumps({"info": {"dataset": "café"}, "media_items": [_item("a", w=1.0)]}))
    parts[1].write_text(json.dumps([_item("b", w=2), _item("c", w=big)]))  # a bare list of items
    parts[2].write_text(json.dumps({"info": {"dataset": "other"}, "media_items": [_item("d")]}))
    out = tmp_path / "joined"
    out.mkdir()
    assert concatenate_metadata(parts, out) == 4
    joined = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert joined["info"] == {"dataset": "café"}
    assert joined["media_items"] == [_item("a", w=1.0), _item("b", w=2), _item("c", w=big), _item("d")]
    assert isinstance(joined["media_items"][0]["w"], float) and isinstance(joined["media_items"][1]["w"], int)


def test_chunks_of_two_formats_are_refused(tmp_path):
    parts = [_chunk(tmp_path, 0, "metadata.json"), _chunk(tmp_path, 1, "metadata.parquet")]
    parts[0].write_text(json.dumps([_item("a")]))
    pq.write_table(pa.table({"media_id": ["b"], "file_path": ["b.jpg"]}), parts[1])
    with pytest.raises(CorruptArchiveError, match="differ in format"):
        concatenate_metadata(parts, tmp_path)
    assert not (tmp_path / "metadata.json").exists()


def test_a_chunks_media_ids_are_read_without_its_items(tmp_path):
    parquet, json_file, bare = tmp_path / "m.parquet", tmp_path / "m.json", tmp_path / "bare.json"
    pq.write_table(pa.table({"media_id": ["b", "a"], "metadata_items": ["not json at all", None]}), parquet)
    json_file.write_text(json.dumps({"info": {}, "media_items": [_item("b"), {"file_path": "x.jpg"}, _item("a")]}))
    bare.write_text(json.dumps([_item("c")]))
    assert media_ids_of(parquet) == ["b", "a"]
    assert media_ids_of(json_file) == ["b", None, "a"], "an item without a media id is counted, as None"
    assert media_ids_of(bare) == ["c"]
    pq.write_table(pa.table({"id": ["a"]}), parquet)
    with pytest.raises(SchemaError, match="no readable media_id"):
        media_ids_of(parquet)


def test_a_json_chunk_nested_too_deep_is_refused_before_it_is_walked(tmp_path):
    part = _chunk(tmp_path, 0, "metadata.json")
    part.write_text('[{"media_id": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    with pytest.raises(SchemaError, match="nests 65 levels deep"):
        media_ids_of(part)
    with pytest.raises(SchemaError, match="nests 65 levels deep"):
        concatenate_metadata([part], tmp_path)
