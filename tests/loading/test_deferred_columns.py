"""A dataset over a Parquet export whose index left its pass-through columns (url, media_type,
cluster_id, image_filename) in the metadata file: every way of reading its rows sees them, in
their places, with the values the file holds."""

from __future__ import annotations

import logging
import pickle

import pyarrow.compute as pc
import pytest

from vl_datasets import leakage_safe_split
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.metadata.deferred import COLUMNS_FILE, Deferral
from vl_datasets.metadata.index import IMAGE_COLUMN, build_index, read_index
from vl_datasets.testing import write_dataset


@pytest.fixture
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root, "clusters", n_items=40, n_clusters=6)
    return root


@pytest.fixture(params=["with images", "images_root"])
def opened(request, datasets, tmp_path):
    """A dataset of the local service's Parquet export (its default), and the columns its index left out."""
    from vl_datasets import Client
    from vl_datasets.testing import LocalVisualLayer

    with LocalVisualLayer(datasets, export_polls=0) as service:
        client = Client(service.url, progress=False, env={}, sleep=lambda s: None)
        options = {"images_root": str(datasets / "clusters" / "images")} if request.param == "images_root" else {}
        ds = VisualLayerDataset("clusters", client=client, cache_dir=tmp_path / "cache", task=None, **options)
    index = read_index(ds.entry.index_path)
    deferral = Deferral.of(index)
    assert deferral is not None, "the export's index holds every column: nothing here is deferred"
    return ds, set(deferral.columns), options


def whole_rows(ds):
    """The rows the export's metadata holds, by media id, as a whole-table read makes them."""
    table = build_index(ds.entry.path, images_dir=ds.entry.path / "images").drop_columns([IMAGE_COLUMN])
    return table.column_names, {row["media_id"]: row for row in table.to_pylist()}


def test_every_column_is_in_its_place_with_the_file_s_values(opened):
    ds, left_out, _ = opened
    assert {"url", "cluster_id", "media_type"} <= left_out
    names, rows = whole_rows(ds)
    assert ds.table.column_names == ds.items.column_names == names
    assert ds.table.to_pylist() == [rows[m] for m in ds.media_ids]
    assert ds.items.column("cluster_id").to_pylist() == [rows[m]["cluster_id"] for m in ds.media_ids]
    assert ds.target(3) == rows[ds.media_ids[3]]  # task=None: the whole row
    assert (ds.entry.index_path.parent / COLUMNS_FILE).is_file()


def test_a_worker_sees_the_columns_the_first_process_read(opened):
    ds, _, _ = opened
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.table.equals(ds.table)


def test_where_over_a_deferred_column_chooses_by_its_values(opened, tmp_path):
    ds, _, options = opened
    cluster = ds.items.column("cluster_id")[0].as_py()
    chosen = VisualLayerDataset.from_export(
        ds.entry.path, cache_dir=tmp_path / "again", task=None, where=pc.field("cluster_id") == cluster, **options
    )
    assert 0 < len(chosen) < len(ds)
    assert set(chosen.media_ids) == {row["media_id"] for row in ds.table.to_pylist() if row["cluster_id"] == cluster}


def test_a_split_groups_by_the_deferred_clusters_as_over_the_table(opened):
    ds, _, _ = opened
    fractions = {"train": 0.6, "test": 0.4}
    parts = leakage_safe_split(ds, fractions, seed=2)
    assert parts == leakage_safe_split(ds.table, fractions, seed=2)
    clusters = dict(zip(ds.media_ids, ds.items.column("cluster_id").to_pylist()))
    train = {clusters[m] for m in parts["train"]}
    assert not train & {clusters[m] for m in parts["test"]}, "a cluster was split across parts"


def test_curation_details_hold_every_row_with_its_columns(opened):
    ds, _, _ = opened
    details = ds.curation_details()
    names, rows = whole_rows(ds)
    assert details.column_names[: len(names)] == names
    assert {row["media_id"]: row["url"] for row in details.to_pylist()} == {m: r["url"] for m, r in rows.items()}


def test_a_cache_that_cannot_keep_the_columns_splits_with_them_in_memory(opened, caplog):
    ds, _, _ = opened
    store = ds.entry.index_path.parent / COLUMNS_FILE
    assert not store.exists(), "opening the dataset read the columns nothing asked for"
    store.mkdir()  # where the file would go, something it cannot replace
    fractions = {"train": 0.5, "test": 0.5}
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        parts = leakage_safe_split(ds, fractions, seed=1)
    assert "Cannot keep the columns" in caplog.text
    assert parts == leakage_safe_split(ds.table, fractions, seed=1)
