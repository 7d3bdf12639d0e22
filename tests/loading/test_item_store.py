"""The curated item list kept in the cache: curated once, mapped by every later open and every
worker, pickled as paths."""

from __future__ import annotations

import itertools
import logging
import pickle
import shutil

import pyarrow as pa
import pytest
import torch

from vl_datasets import errors, leakage_safe_split, scan
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.metadata import curated, index_writer, read, row_batches, stream
from vl_datasets.testing import write_dataset

OPTIONS = {"min_uniqueness": 0.3, "dedupe": True, "invalid_labels": "drop", "image_size": 8}


@pytest.fixture
def folder(tmp_path):
    write_dataset(tmp_path / "src", "x", n_items=60, n_clusters=8)
    return tmp_path / "src" / "x"


def item_lists(cache):
    return [d for entry in scan(cache).entries for d in entry.derived if d.kind == "items"]


def same_items(a, b):
    assert a.media_ids == b.media_ids
    assert a.classes == b.classes and a.fingerprint() == b.fingerprint()
    assert a.curation_summary() == b.curation_summary()
    assert [a.target(i) for i in range(len(a))] == [b.target(i) for i in range(len(b))]
    assert [a.image_path(i) for i in range(len(a))] == [b.image_path(i) for i in range(len(b))]


def test_a_later_open_maps_the_list_the_first_one_wrote(folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    [kept] = item_lists(cache)
    assert kept.complete and kept.items == len(first)

    def no_curation(*args, **kwargs):
        raise AssertionError("a dataset whose list is in the cache curated the export again")

    monkeypatch.setattr(curated, "curate_mask", no_curation)
    again = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    same_items(first, again)
    assert again.table.equals(first.table)


def test_other_options_make_another_list_and_a_damaged_list_is_made_again(folder, tmp_path):
    cache = tmp_path / "cache"
    loose = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    strict = VisualLayerDataset.from_export(folder, cache_dir=cache, **{**OPTIONS, "min_uniqueness": 0.6})
    assert len(strict) < len(loose) and len(item_lists(cache)) == 2
    listed = next(d for d in item_lists(cache) if d.items == len(loose))
    paths = listed.path / "list" / "path.data"
    damaged = paths.read_bytes()[:-3]
    paths.unlink()  # a new file: ``loose`` still maps the old one
    paths.write_bytes(damaged)
    rebuilt = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    same_items(loose, rebuilt)
    assert VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS).items.list.rows.base is not None


def _flip_a_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))  # in place: the same size, so nothing at open can tell


@pytest.mark.parametrize(
    ("file", "read"),
    [
        ("target.i64", lambda ds, i: ds[i]),  # a class index past the classes
        ("path.offsets.i64", lambda ds, i: ds[i]),  # a wild offset: Arrow would allocate it and abort
        ("path.data", lambda ds, i: ds.image_path(i)),  # a path that is no UTF-8
        ("rows.i64", lambda ds, i: ds.items.media_id(i)),  # a row past the index
    ],
)
def test_a_list_changed_in_place_is_named_where_read_and_made_again(folder, tmp_path, file, read):
    """A bad copy or a failing disk changes bytes without changing sizes: the item that reads them
    is refused with the file named, never a wrong target or a dead process; the next open rebuilds."""
    cache = tmp_path / "cache"
    first = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    expected = [first[i][1] for i in range(len(first))]
    (listed,) = item_lists(cache)
    damaged = listed.path / "list" / file
    middle = len(first) // 2
    at = {"target.i64": middle * 8, "path.offsets.i64": (middle + 1) * 8 + 3, "rows.i64": middle * 8 + 6}
    if file == "path.data":
        damaged.write_bytes(damaged.read_bytes().replace(b"/", b"\xff", 1))
    else:
        _flip_a_byte(damaged, at[file])
    opened = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    with pytest.raises(errors.CacheMissError, match=f"{file} .*open the dataset again") as caught:
        for i in range(len(opened)):
            read(opened, i)
    assert str(listed.path) in str(caught.value)
    rebuilt = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    assert [rebuilt[i][1] for i in range(len(rebuilt))] == expected, "the list was not made again"


def test_items_counted_from_the_end_are_read_as_a_sequence_reads_them(folder, tmp_path):
    """ds[-1] is the last item, and reading it changes nothing in the cache."""
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", **OPTIONS)
    n = len(ds)
    for back in (1, 2, n):
        assert torch.equal(ds[-back][0], ds[n - back][0]) and ds[-back][1] == ds[n - back][1]
        assert ds.image_path(-back) == ds.image_path(n - back)
    with pytest.raises(IndexError):
        ds.image_path(n)
    (listed,) = item_lists(tmp_path / "cache")
    assert (listed.path / "list" / "list.json").is_file(), "a read set a sound list aside"


def test_a_list_whose_facts_were_never_written_is_made_again(folder, tmp_path):
    """The list's files are complete only once ``list.json`` is written, last: without it they are
    no list, and the next open curates again rather than reading columns of unknown length."""
    cache = tmp_path / "cache"
    first = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    [listed] = item_lists(cache)
    (listed.path / "list" / "list.json").unlink()
    again = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    same_items(first, again)
    assert (listed.path / "list" / "list.json").is_file()
    assert [p.name for p in listed.path.iterdir() if p.name.startswith(".")] == [], "a build left its folder"


def test_a_dataset_pickles_as_paths_whatever_its_size(tmp_path):
    sizes = {}
    for n in (40, 4000):
        source = write_dataset(tmp_path / "src", f"d{n}", n_items=n, n_clusters=8)
        ds = VisualLayerDataset.from_export(
            source, cache_dir=tmp_path / "cache", images_root=source / "images", task=None
        )
        sizes[n] = len(pickle.dumps(ds))
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.media_ids == ds.media_ids and copy.target(3) == ds.target(3)
    assert abs(sizes[4000] - sizes[40]) < 1024, f"the pickle grows with the items: {sizes}"


def test_a_subset_stays_on_disk_until_asked_for(folder, tmp_path):
    cache = tmp_path / "cache"
    everything = VisualLayerDataset.from_export(folder, cache_dir=cache, task=None)
    part = everything.media_ids[::2]
    ds = VisualLayerDataset.from_export(folder, cache_dir=cache, task=None, subset=part)
    small = VisualLayerDataset.from_export(folder, cache_dir=cache, task=None, subset=part[:1])
    assert len(pickle.dumps(ds)) - len(pickle.dumps(small)) < 256, "the subset ids travel in the pickle"
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.media_ids == ds.media_ids == part
    assert copy.curation_rules.subset == ds.curation_rules.subset


def test_a_part_of_a_split_as_subset_is_the_list_of_its_ids(folder, tmp_path):
    """subset= takes a split's part (MediaIds) as it is: the same items, summary and cached list as
    the same ids in a list, and a pickled dataset restores it from disk."""
    cache = tmp_path / "cache"
    everything = VisualLayerDataset.from_export(folder, cache_dir=cache, task=None)
    part = leakage_safe_split(everything, {"train": 0.6, "test": 0.4}, seed=1)["train"]
    from_part = VisualLayerDataset.from_export(folder, cache_dir=cache, subset=part, **OPTIONS)
    assert from_part.curation_rules.subset is part
    lists_before = len(item_lists(cache))
    from_list = VisualLayerDataset.from_export(folder, cache_dir=cache, subset=list(part), **OPTIONS)
    assert len(item_lists(cache)) == lists_before, "the same ids as a list made another item list"
    same_items(from_part, from_list)
    assert from_part.curation_summary().removed_by["subset"] == len(everything) - len(part)
    copy = pickle.loads(pickle.dumps(from_part))
    assert copy.curation_rules.subset == part and copy.media_ids == from_part.media_ids


def test_a_spawned_worker_maps_the_same_items(folder, tmp_path):
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", **OPTIONS)
    loader = ds.dataloader(8, num_workers=1, shuffle=False, multiprocessing_context="spawn")
    labels = torch.cat([batch[1] for batch in loader]).tolist()
    assert labels == [ds.target(i) for i in range(len(ds))]


def test_a_list_removed_under_a_job_is_named_when_a_worker_opens_it(folder, tmp_path):
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", **OPTIONS)
    state = pickle.dumps(ds)
    shutil.rmtree(ds.items._files.folder)
    with pytest.raises(errors.CacheMissError, match="curated item list"):
        pickle.loads(state)


def test_a_cache_that_cannot_keep_the_list_curates_in_memory(folder, tmp_path, caplog):
    cache = tmp_path / "cache"
    reference = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "other", **OPTIONS)
    VisualLayerDataset.from_export(folder, cache_dir=cache, task=None)  # publishes the entry
    [entry] = scan(cache).entries
    shutil.rmtree(entry.path / "derived")
    (entry.path / "derived").write_text("a file where the derived stores would go")
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        ds = VisualLayerDataset.from_export(folder, cache_dir=cache, **OPTIONS)
    assert "Cannot keep the curated item list" in caplog.text
    same_items(reference, ds)
    assert pickle.loads(pickle.dumps(ds)).media_ids == ds.media_ids


def test_a_dataset_over_an_index_of_many_batches_splits_as_its_table_does(tmp_path, monkeypatch):
    """The items of a cached dataset are read from its index file batch by batch (some batches
    whole, some taken in part, some slices within a batch): the parts are those of its table."""
    monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)  # the export is read (and indexed) 37 rows at a time
    monkeypatch.setattr(stream, "BATCH_ROWS", 37)
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 37)
    monkeypatch.setattr(row_batches, "SLICE_ROWS", 16)
    source = write_dataset(tmp_path / "src", "many", n_items=300, n_clusters=40)
    ds = VisualLayerDataset.from_export(source, cache_dir=tmp_path / "cache", task=None, min_uniqueness=0.4)
    assert ds.items._files is not None and 0 < len(ds) < 300
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    for seed in (0, 1):
        assert leakage_safe_split(ds, fractions, seed=seed) == leakage_safe_split(ds.table, fractions, seed=seed)
    assert pa.ipc.open_file(str(ds.items._files.index)).num_record_batches > 5
    slices = list(ds.items.slices(["media_id"]))
    assert max(table.num_rows for _, table in slices) <= 16
    assert [first for first, _ in slices] == list(itertools.accumulate([0] + [t.num_rows for _, t in slices[:-1]]))
    assert pa.concat_tables(table for _, table in slices).column("media_id").to_pylist() == ds.media_ids


def test_a_split_of_a_dataset_whose_index_was_pruned_names_it(folder, tmp_path, caplog):
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task=None)
    ds.items._files.index.unlink()  # as a prune under a running job would: the mapping stays
    with (
        caplog.at_level(logging.WARNING, logger="vl_datasets"),
        pytest.raises(errors.CacheMissError, match=r"index .* is gone"),
    ):
        leakage_safe_split(ds, {"train": 0.5, "test": 0.5})
    assert "Cannot keep the split" not in caplog.text  # the index is at fault, not the split's folder


def test_a_dataset_splits_as_its_table_does(folder, tmp_path):
    ds = VisualLayerDataset.from_export(folder, cache_dir=tmp_path / "cache", task=None, min_uniqueness=0.2)
    fractions = {"train": 0.7, "test": 0.3}
    assert leakage_safe_split(ds, fractions, seed=3) == leakage_safe_split(ds.table, fractions, seed=3)
    with pytest.raises(errors.ConfigurationError, match="takes a metadata table or a dataset, not list"):
        leakage_safe_split(ds.media_ids, fractions)
