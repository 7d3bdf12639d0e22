"""The index's items kept once per distinct list, a code per row: read back as the lists they were,
never joined to another index's items, and taken, decoded and expanded as the plain lists would be."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.metadata.helpers import json_strings_table, realistic_media_items, write_parquet
from vl_datasets.errors import CacheMissError
from vl_datasets.metadata import index_writer
from vl_datasets.metadata.curation import flat_issues, is_duplicates
from vl_datasets.metadata.index import INDEX_FILE, build_index, read_index, write_export_index
from vl_datasets.metadata.item_codes import (
    ITEM_NAMES,
    ITEMS_COLUMN,
    expanded,
    items_path,
    plain_table,
    take_rows,
    with_items,
)
from vl_datasets.metadata.items import ITEM_FIELDS
from vl_datasets.metadata.row_batches import file_slices


def _export(tmp_path, rows: int = 300):
    """An export of ``rows`` items, every fifth repeating the items of the one before it."""
    media = realistic_media_items(rows)
    for i in range(1, rows, 5):
        media[i]["metadata_items"] = media[i - 1]["metadata_items"]
    table = json_strings_table(media)
    return write_parquet(tmp_path / "export", table, row_group_size=64).parent


def _index(tmp_path, export, name: str = "out", **kwargs):
    out = tmp_path / name
    out.mkdir()
    write_export_index(export, out / INDEX_FILE, **kwargs)
    return out / INDEX_FILE


def test_the_coded_columns_are_the_item_columns():
    assert tuple(field.name for field in ITEM_FIELDS) == ITEM_NAMES


def test_each_distinct_items_text_is_kept_once_and_reads_back_as_every_rows_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 100)  # several batches, each of several slices
    export = _export(tmp_path)
    path = _index(tmp_path, export, batch_rows=40)
    with pa.memory_map(str(path)) as source:
        index_file = pa.ipc.open_file(source).read_all()
    with pa.memory_map(str(items_path(path))) as source:
        items_file = pa.ipc.open_file(source).read_all()
    assert ITEMS_COLUMN in index_file.column_names and not set(ITEM_NAMES) & set(index_file.column_names)
    assert items_file.column_names == list(ITEM_NAMES)
    texts = pc.count_distinct(pa.parquet.read_table(export / "metadata.parquet").column("metadata_items")).as_py()
    assert texts <= len(items_file) < len(index_file), "the rows repeating a text share its lists"
    index = read_index(path)
    assert index is not None and ITEMS_COLUMN in index.column_names, "an open reads no item until asked"
    index = with_items(index, path)
    assert (
        plain_table(index).select(list(ITEM_NAMES)).to_pylist()
        == build_index(export).select(list(ITEM_NAMES)).to_pylist()
    )


def test_an_index_never_reads_another_builds_items(tmp_path):
    export = _export(tmp_path, 100)
    first, second = _index(tmp_path, export, "first"), _index(tmp_path, export, "second")
    shutil.copy(items_path(second), items_path(first))  # the same columns, another build's
    assert read_index(first) is None
    items_path(second).unlink()
    assert read_index(second) is None


def test_items_of_other_batches_than_the_index_are_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 40)
    path = _index(tmp_path, _export(tmp_path, 100), batch_rows=40)
    index = read_index(path)
    with pa.memory_map(str(items_path(path))) as source:
        items = pa.ipc.open_file(source).read_all().combine_chunks()  # its own pair, in one batch
    with pa.OSFile(str(items_path(path)), "wb") as sink, pa.ipc.new_file(sink, items.schema) as writer:
        writer.write_table(items)
    with pytest.raises(CacheMissError, match=r"items of the index .* are gone or unreadable"):
        list(file_slices(path, np.arange(len(index))))
    assert read_index(path) is None


def test_rows_taken_across_batches_in_any_order_are_the_plain_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 1)
    export = _export(tmp_path)
    path = _index(tmp_path, export, batch_rows=32)
    index = with_items(read_index(path), path)
    assert index.column("labels").num_chunks > 3
    rows = np.random.default_rng(0).permutation(len(index))[:150]
    rows = np.concatenate([rows, rows[:5]])  # a row taken twice too
    taken = take_rows(index, rows)
    expected = build_index(export).select(taken.column_names).take(pa.array(rows))  # less the deferred columns
    reordered = ["issues", "media_id", "labels"]  # the coded columns in another order than the index's
    assert take_rows(index.select(reordered), rows).to_pylist() == expected.select(reordered).to_pylist()
    assert taken.schema.field("issues").type == expected.schema.field("issues").type
    assert taken.to_pylist() == expected.to_pylist()


def test_expanded_gives_each_row_its_lists_elements_in_order():
    parents = np.array([0, 0, 2, 3, 3, 3])  # list 1 is empty
    codes = np.array([3, 1, 0, 3, 2])
    positions, rows = expanded(parents, codes, 4)
    naive = [(p, r) for r, code in enumerate(codes) for p in np.flatnonzero(parents == code)]
    assert list(zip(positions.tolist(), rows.tolist())) == naive


def test_issues_read_coded_are_the_issues_read_plain(tmp_path):
    export = _export(tmp_path)
    path = _index(tmp_path, export)
    index = with_items(read_index(path), path)
    for which in (None, is_duplicates):
        coded_flat, coded_rows = flat_issues(index.slice(0, 128), which=which)
        flat, rows = flat_issues(plain_table(index.slice(0, 128)), which=which)
        assert coded_flat.to_pylist() == flat.to_pylist() and coded_rows.tolist() == rows.tolist()
    assert len(flat) > 0


@pytest.mark.parametrize("name", ["labels", "issues"])
def test_a_users_table_holds_plain_lists(tmp_path, name):
    from vl_datasets import VisualLayerDataset

    export = _export(tmp_path)
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache", images_root=tmp_path, task=None)
    expected = build_index(export).schema.field(name).type
    assert ds.table.schema.field(name).type == expected
    assert ds.items.column(name).type == expected
    assert all(part.schema.field(name).type == expected for _, part in ds.items.slices([name]))


def test_an_exports_own_categorical_column_is_taken_as_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 1)
    path = _index(tmp_path, _export(tmp_path), batch_rows=32)
    index = with_items(read_index(path), path)
    shade = pa.chunked_array(
        [
            pc.dictionary_encode(pa.array(["dark", "light"] * (len(chunk) // 2) + ["dark"] * (len(chunk) % 2)))
            for chunk in index.column("media_id").chunks
        ]
    )
    index = index.append_column("shade", shade)
    rows = np.random.default_rng(1).permutation(len(index))[:40]
    taken = take_rows(index, rows)
    assert pa.types.is_dictionary(taken.schema.field("shade").type)
    assert taken.column("shade").to_pylist() == index.column("shade").take(pa.array(rows)).to_pylist()
