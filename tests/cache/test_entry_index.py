"""A cached version whose index no longer reads (deleted, damaged, written by another version of
the library) gets it written again, streamed, instead of every open reading the whole metadata
into memory; a cache that cannot take it says so and still opens the dataset."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from vl_datasets import Client
from vl_datasets.loading import dataset as dataset_module
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.metadata.index import read_index
from vl_datasets.metadata.item_codes import items_path
from vl_datasets.metadata.normalize import NORMALIZED_VERSION, VERSION_KEY
from vl_datasets.testing import LocalVisualLayer, write_dataset

OPTIONS = {"min_uniqueness": 0.3, "dedupe": True, "invalid_labels": "drop", "image_size": 8}


@pytest.fixture(params=["downloaded Parquet export", "opened JSON folder"])
def open_dataset(request, tmp_path):
    """A function opening the same dataset from the same cache, each call a new open."""
    write_dataset(tmp_path / "datasets", "x", n_items=60, n_clusters=8)
    cache = tmp_path / "cache"
    if request.param == "opened JSON folder":
        return lambda: VisualLayerDataset.from_export(tmp_path / "datasets" / "x", cache_dir=cache, **OPTIONS)
    service = LocalVisualLayer(tmp_path / "datasets", export_polls=0)
    service.start()
    request.addfinalizer(service.stop)
    client = Client(service.url, progress=False, env={}, sleep=lambda s: None)
    return lambda: VisualLayerDataset("x", client=client, cache_dir=cache, **OPTIONS)


def _delete_items(index):
    items_path(index).unlink()


def _truncate_items(index):
    data = items_path(index).read_bytes()
    items_path(index).write_bytes(data[: len(data) // 2])


def _delete_index(index):
    index.unlink()


def _stamped(index, version: bytes):
    """The index as a library that wrote normalized ``version`` would have left it."""
    table = pa.ipc.open_file(pa.memory_map(str(index))).read_all()
    stamped = table.replace_schema_metadata({**table.schema.metadata, VERSION_KEY: version})
    index.unlink()  # the map above still holds the old file's pages
    with pa.OSFile(str(index), "wb") as sink, pa.ipc.new_file(sink, stamped.schema) as writer:
        writer.write_table(stamped)


def _older_format(index):
    _stamped(index, b"1")


@pytest.mark.parametrize("damage", [_delete_items, _truncate_items, _delete_index, _older_format])
def test_an_index_that_no_longer_reads_is_written_again_not_read_into_memory(open_dataset, damage, caplog, monkeypatch):
    first = open_dataset()
    rows = first.table.to_pylist()  # copied: the first dataset's map of the items may not outlive the damage
    damage(first.entry.index_path)
    assert read_index(first.entry.index_path) is None

    def whole(*args, **kwargs):
        raise AssertionError("the open read the whole metadata into memory")

    monkeypatch.setattr(dataset_module, "build_index", whole)
    monkeypatch.setattr(dataset_module, "read_metadata_file", whole)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        again = open_dataset()
    assert again.entry == first.entry
    assert "writing it again" in caplog.text and str(first.entry.index_path) in caplog.text
    assert read_index(first.entry.index_path) is not None
    assert again.media_ids == first.media_ids and again.fingerprint() == first.fingerprint()
    assert [again.items.target(i) for i in range(len(again))] == [first.items.target(i) for i in range(len(first))]
    assert again.table.to_pylist() == rows

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        third = open_dataset()
    assert "writing it again" not in caplog.text, "the index written again did not read on the next open"
    assert third.media_ids == first.media_ids


def test_a_cache_that_cannot_take_the_index_again_says_so_and_reads_the_metadata(open_dataset, caplog):
    first = open_dataset()
    items = items_path(first.entry.index_path)
    items.unlink()
    items.mkdir()  # where the items file would be written, a folder: the write fails
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        again = open_dataset()
    assert "Cannot write the index" in caplog.text and str(first.entry.index_path) in caplog.text
    assert again.media_ids == first.media_ids and again.fingerprint() == first.fingerprint()
    assert again.curation_summary() == first.curation_summary()


def test_an_index_a_later_version_wrote_is_left_to_it(open_dataset, caplog):
    """A cache shared by jobs of two versions: the later one's index is never overwritten under its jobs."""
    first = open_dataset()
    later = str(int(NORMALIZED_VERSION) + 1).encode()
    _stamped(first.entry.index_path, later)
    written = first.entry.index_path.read_bytes(), items_path(first.entry.index_path).read_bytes()
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        again = open_dataset()
    assert "written by a later version of vl_datasets" in caplog.text and "writing it again" not in caplog.text
    assert (first.entry.index_path.read_bytes(), items_path(first.entry.index_path).read_bytes()) == written
    assert again.media_ids == first.media_ids and again.fingerprint() == first.fingerprint()
