"""The columns a Parquet export's index leaves in its metadata file: read from there the first time
something asks, into a file beside the index, and joined back in their places with the same values."""

from __future__ import annotations

import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.metadata.helpers import json_strings_table, realistic_media_items, write_json_export, write_parquet
from vl_datasets.atomic import beside
from vl_datasets.errors import CacheMissError, SchemaError
from vl_datasets.metadata import deferred, index_writer
from vl_datasets.metadata.deferred import COLUMNS_FILE, Deferral, complete_index
from vl_datasets.metadata.index import INDEX_FILE, build_index, read_index, write_export_index
from vl_datasets.metadata.item_codes import plain_table

PASS_THROUGH = ("url", "media_type", "cluster_id", "image_filename")


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    """An index of several record batches, of lengths the Parquet file's row groups (64) do not share."""
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 100)


def media(n=300):
    out = realistic_media_items(n)
    for i, item in enumerate(out):
        item.update(url=f"https://cdn.example.com/{i}.jpg", cluster_id=f"cluster-{i % 7}")
        item["image_filename"] = f"{item['media_id']}.jpg" if i % 5 else None
    return out


def parquet_export(folder, items, **kwargs):
    table = json_strings_table(items)
    table = table.append_column("image_filename", pa.array([m["image_filename"] for m in items], pa.string()))
    return write_parquet(folder, table, row_group_size=64, **kwargs).parent


def indexed(export, out):
    out.mkdir(parents=True, exist_ok=True)
    write_export_index(export, out / INDEX_FILE, batch_rows=40)
    index = read_index(out / INDEX_FILE)
    assert index is not None, "the index does not read back"
    return index


def same_as_whole_build(export, out):
    index = indexed(export, out)
    complete, whole = complete_index(index, out / INDEX_FILE), build_index(export)
    # Its items come coded (a code per row over the distinct lists): decoded, the same table.
    assert plain_table(complete).schema.equals(whole.schema, check_metadata=True), (complete.schema, whole.schema)
    assert complete.to_pylist() == whole.to_pylist()
    return index, complete


def test_a_metadata_only_index_leaves_the_pass_through_columns_in_the_file(tmp_path):
    export = parquet_export(tmp_path / "export", media())
    index, complete = same_as_whole_build(export, tmp_path / "out")
    assert not set(PASS_THROUGH) & set(index.column_names)
    assert not {"file_size_bytes", "file_name"} & set(index.column_names), "made of the file's columns when asked for"
    assert complete.column("url")[3].as_py() == "https://cdn.example.com/3.jpg"
    assert complete.column("file_size_bytes")[3].as_py() == 13.5 * 1024  # "13.5KB"
    assert complete.column("file_name")[3].as_py() == "img_0000003.jpg"  # the file has none: the path's base name
    assert complete.column("image_filename")[0].as_py() is None  # null where the file has none
    store = pa.ipc.open_file(str(tmp_path / "out" / COLUMNS_FILE))
    lengths = [store.get_batch(i).num_rows for i in range(store.num_record_batches)]
    assert (
        lengths == [len(chunk) for chunk in index.column("media_id").chunks] == [120, 120, 60]
    )  # slices of 40, written 100 or more at a time


def test_an_export_with_images_keeps_the_file_names_it_finds_them_by(tmp_path):
    items = media(120)
    export = parquet_export(tmp_path / "export", items)
    for item in items:
        (export / "images" / "train").mkdir(parents=True, exist_ok=True)
        (export / "images" / item["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        (export / "images" / item["file_path"]).write_bytes(b"jpeg")
    index, complete = same_as_whole_build(export, tmp_path / "out")
    assert {"image_filename", "file_name"} <= set(index.column_names)
    assert not {"url", "media_type", "cluster_id", "file_size_bytes"} & set(index.column_names)
    assert complete.column("__image_path__").null_count == 0


def test_a_json_export_keeps_every_column_in_its_index(tmp_path):
    path = write_json_export(tmp_path / "export", media(50))
    index = indexed(path.parent, tmp_path / "out")
    assert Deferral.of(index) is None
    assert complete_index(index, tmp_path / "out" / INDEX_FILE).to_pylist() == build_index(path.parent).to_pylist()
    assert not (tmp_path / "out" / COLUMNS_FILE).exists()


def test_a_column_of_another_type_is_read_as_before(tmp_path):
    table = json_strings_table(media(30)).drop_columns(["cluster_id"])
    table = table.append_column("cluster_id", pa.array(range(30), pa.int64()))  # cast to text while indexing
    export = write_parquet(tmp_path / "export", table).parent
    index, complete = same_as_whole_build(export, tmp_path / "out")
    assert "cluster_id" in index.column_names and complete.column("cluster_id")[4].as_py() == "4"


def test_sizes_stored_as_numbers_are_left_in_the_file_and_rounded_as_before(tmp_path):
    table = json_strings_table(media(30)).drop_columns(["file_size"])
    table = table.append_column("file_size", pa.array([i * 1000.6 for i in range(30)], pa.float64()))
    export = write_parquet(tmp_path / "export", table).parent
    index, complete = same_as_whole_build(export, tmp_path / "out")
    assert "file_size_bytes" not in index.column_names and complete.column("file_size_bytes")[2].as_py() == 2001


def test_an_index_of_version_3_that_holds_its_sizes_and_names_is_completed(tmp_path, monkeypatch):
    """An earlier version left out the text columns only, keeping the sizes and file names."""
    made = deferred.plan

    def plan_of_version_3(metadata, *, has_images):
        columns = tuple(c for c in made(metadata, has_images=has_images).columns if c in PASS_THROUGH)
        return Deferral(columns, tuple(n for n in pq.read_schema(metadata).names if n in {*columns, "media_id"}))

    monkeypatch.setattr("vl_datasets.metadata.index.plan", plan_of_version_3)
    export = parquet_export(tmp_path / "export", media(90))
    built, complete = same_as_whole_build(export, tmp_path / "out")
    assert {"file_size_bytes", "file_name"} <= set(built.column_names) and "url" not in built.column_names
    assert complete.column("file_size_bytes")[1].as_py() == 11.5 * 1024


def test_the_columns_are_read_once_and_mapped_after(tmp_path, monkeypatch):
    export = parquet_export(tmp_path / "export", media())
    _, first = same_as_whole_build(export, tmp_path / "out")
    written = (tmp_path / "out" / COLUMNS_FILE).stat()

    def no_read(*args, **kwargs):
        raise AssertionError("the columns kept beside the index were read from the metadata file again")

    monkeypatch.setattr(deferred, "_read_back", no_read)
    again = complete_index(read_index(tmp_path / "out" / INDEX_FILE), tmp_path / "out" / INDEX_FILE)
    assert again.equals(first)
    assert (tmp_path / "out" / COLUMNS_FILE).stat().st_mtime_ns == written.st_mtime_ns


@pytest.mark.parametrize("change", ["rewritten", "removed"])
def test_a_metadata_file_changed_since_the_index_was_built_is_named(tmp_path, change):
    export = parquet_export(tmp_path / "export", media(60))
    index = indexed(export, tmp_path / "out")
    metadata = export / "metadata.parquet"
    if change == "removed":
        metadata.unlink()
    else:
        stat = metadata.stat()
        os.utime(metadata, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(CacheMissError, match="changed or is gone") as caught:
        complete_index(index, tmp_path / "out" / INDEX_FILE)
    assert str(metadata) in str(caught.value) and "url" in str(caught.value)
    assert not (tmp_path / "out" / COLUMNS_FILE).exists()


def test_a_folder_that_cannot_keep_the_columns_reads_them_into_memory(tmp_path, caplog):
    export = parquet_export(tmp_path / "export", media())
    index = indexed(export, tmp_path / "out")
    (tmp_path / "out" / COLUMNS_FILE).mkdir()  # where the file would go, something it cannot replace
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        complete = complete_index(index, tmp_path / "out" / INDEX_FILE)
    assert "Cannot keep the columns" in caplog.text
    assert complete.to_pylist() == build_index(export).to_pylist()


def test_text_that_is_not_utf8_in_a_deferred_column_is_named_when_read(tmp_path):
    items = media(40)
    export = parquet_export(tmp_path / "export", items, compression="none", use_dictionary=False)
    metadata = export / "metadata.parquet"
    metadata.write_bytes(
        metadata.read_bytes().replace(b"https://cdn.example.com/7.jpg", b"https://cdn.example.com/\xff.jpg")
    )
    assert pq.read_table(metadata).num_rows == 40
    index = indexed(export, tmp_path / "out")  # the index reads no url
    with pytest.raises(SchemaError, match="not UTF-8") as caught:
        complete_index(index, tmp_path / "out" / INDEX_FILE)
    assert "id-0000007" in str(caught.value) and "url" in str(caught.value)


def test_what_a_killed_build_of_the_columns_left_is_removed_by_the_next(tmp_path):
    export = parquet_export(tmp_path / "export", media(60))
    index = indexed(export, tmp_path / "out")
    left = beside(tmp_path / "out" / COLUMNS_FILE)  # where a build writes before its rename
    left.write_bytes(b"half of a columns file")
    complete = complete_index(index, tmp_path / "out" / INDEX_FILE)
    assert not left.exists(), "a killed build's file stays beside the index"
    assert complete.to_pylist() == build_index(export).to_pylist()


def test_an_image_filename_that_fills_a_missing_file_path_is_read_yet_left_out(tmp_path):
    items = media(90)
    for i, item in enumerate(items):
        item["file_name"] = f"name-{i}.jpg" if i % 3 else None  # else the base name of the path found
    for item in items[::4]:
        item["file_path"] = None  # found by its image_filename alone (every fifth has none either)
    index, complete = same_as_whole_build(parquet_export(tmp_path / "export", items), tmp_path / "out")
    assert not {"image_filename", "file_name"} & set(index.column_names)
    names = complete.column("file_name").to_pylist()
    assert [names[i] for i in (0, 1, 3, 12)] == [None, "name-1.jpg", "img_0000003.jpg", "id-0000012.jpg"]
    assert index.column("file_path")[4].as_py() == "id-0000004.jpg" == complete.column("image_filename")[4].as_py()
    assert index.column("file_path")[0].as_py() is None


@pytest.mark.parametrize(
    ("statistics", "missing_path"),
    [(True, False), (True, True), (False, False)],
    ids=["no-row-lacks-a-path", "a-row-lacks-one", "no-statistics"],
)
def test_the_build_reads_image_filename_unless_the_statistics_say_no_row_needs_it(tmp_path, statistics, missing_path):
    items = media(40)
    items[9]["image_filename"] = "image-9.jpg"
    if missing_path:
        items[20]["file_path"] = None
    export = parquet_export(
        tmp_path / "export", items, compression="none", use_dictionary=False, write_statistics=statistics
    )
    metadata = export / "metadata.parquet"
    metadata.write_bytes(metadata.read_bytes().replace(b"image-9.jpg", b"image-\xff.jpg"))  # not UTF-8
    if missing_path or not statistics:  # read to fill the missing file_path: its text is checked then
        with pytest.raises(SchemaError, match="not UTF-8") as caught:
            indexed(export, tmp_path / "out")
    else:
        index = indexed(export, tmp_path / "out")
        with pytest.raises(SchemaError, match="not UTF-8") as caught:
            complete_index(index, tmp_path / "out" / INDEX_FILE)
    assert "id-0000009" in str(caught.value) and "image_filename" in str(caught.value)
