"""VisualLayerDataset(prepare=S, prepared_root=URL): prepared pixels read from a shared store on a
local S3 server through a fresh node cache, equal to the node-local prepared path's, each shard
downloaded once per node while it fits the limit; images the store lacks prepared from their
originals, and said so."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from tests.loading.shared_store_helpers import s3_bucket, shard_gets, write_shared_store
from vl_datasets import ConfigurationError
from vl_datasets.cache.layout import content_name
from vl_datasets.cache.opened import open_export
from vl_datasets.loading import shared_source
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import StoreSettings, keys_of
from vl_datasets.loading.prepared_source import prepare_pixels
from vl_datasets.loading.shared_location import shared_store_url
from vl_datasets.loading.shared_source import resolve_cache_limit
from vl_datasets.testing import write_dataset

ITEMS, SIZE = 24, 48


@pytest.fixture
def export(tmp_path):
    return write_dataset(tmp_path, "ds", n_items=ITEMS, image_size=(80, 60))


@pytest.fixture
def s3(monkeypatch):
    with s3_bucket(monkeypatch) as server:
        yield server


def local_prepared(export, tmp_path):
    return VisualLayerDataset.from_export(export, cache_dir=tmp_path / "local", prepare=SIZE, image_size=32)


def publish(export, server, cache_dir, *, leave_out=0, shard_bytes=30_000):
    """The shared store of ``export`` at SIZE under the bucket's ``prepared/`` (where a dataset opened
    with ``cache_dir`` looks), less its last ``leave_out`` images; its shards (name, bytes)."""
    reference = VisualLayerDataset.from_export(export, cache_dir=cache_dir, image_size=32)
    paths = [reference.items.image_file(i) for i in range(len(reference))]
    images = {p: prepare_pixels(reference.read_image(reference.image_path(i)), SIZE) for i, p in enumerate(paths)}
    for path in paths[len(paths) - leave_out :]:
        del images[path]
    root = f"s3://{server.bucket}/prepared"
    url = shared_store_url(root, open_export(export, cache_dir=cache_dir), StoreSettings(SIZE))
    options = {"endpoint_url": server.endpoint}
    shards = write_shared_store(
        url,
        images,
        settings=StoreSettings(SIZE),
        export=content_name(reference.entry),
        storage_options=options,
        shard_bytes=shard_bytes,
    )
    return root, shards


def open_shared(export, server, root, cache_dir, **options):
    return VisualLayerDataset.from_export(
        export,
        cache_dir=cache_dir,
        prepare=SIZE,
        image_size=32,
        prepared_root=root,
        storage_options={"endpoint_url": server.endpoint},
        **options,
    )


def epochs(ds, count=2):
    loader = ds.dataloader(batch_size=5, num_workers=2, shuffle=False, persistent_workers=True)
    return [[images for images, _ in loader] for _ in range(count)]


def test_training_reads_the_shared_store_once_per_node_with_the_local_path_s_pixels(export, s3, tmp_path, caplog):
    root, shards = publish(export, s3, tmp_path / "node")
    assert len(shards) > 4
    with caplog.at_level(logging.INFO, logger="vl_datasets"):
        ds = open_shared(export, s3, root, tmp_path / "node", prepared_cache_limit="1G")
    assert f"All {ITEMS} images are read from the shared store" in caplog.text
    got = epochs(ds)
    expected = epochs(local_prepared(export, tmp_path))
    for epoch, (mine, theirs) in enumerate(zip(got, expected)):
        assert len(mine) == len(theirs)
        for batch, (a, b) in enumerate(zip(mine, theirs)):
            assert torch.equal(a, b), f"epoch {epoch} batch {batch} differs from the node-local prepared path's"
    for name, _ in shards:
        assert shard_gets(s3, name) == 1, f"shard {name} was downloaded {shard_gets(s3, name)} times in 2 epochs"
    stats = ds.images.shard_cache_stats()
    assert stats is not None and stats["misses"] == len(shards)
    assert stats["bytes_downloaded"] == sum(size for _, size in shards)
    assert stats["hit_rate"] >= 1 - len(shards) / (2 * ITEMS), stats  # one miss per shard, in two epochs
    # The node-local store was not filled: every image came from the shared one.
    assert ds.images._source.store.counts()[0] == 0


def test_images_the_shared_store_lacks_are_prepared_locally_and_said_so(export, s3, tmp_path, caplog):
    root, _ = publish(export, s3, tmp_path / "node", leave_out=3)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        ds = open_shared(export, s3, root, tmp_path / "node")
    assert f"3 of the {ITEMS} images are not in the shared store s3://{s3.bucket}/prepared/" in caplog.text
    reference = local_prepared(export, tmp_path)
    for i in range(len(ds)):
        assert torch.equal(ds[i][0], reference[i][0]), f"image {i} differs from the node-local prepared path's"
    assert ds.images._source.store.counts()[0] == 3  # those three, prepared here


def test_without_a_shared_store_every_image_is_prepared_here_with_a_warning(export, s3, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        ds = open_shared(export, s3, f"s3://{s3.bucket}/nothing", tmp_path / "node")
    assert "No finished shared prepared store at" in caplog.text and f"All {ITEMS} images are prepared" in caplog.text
    assert torch.equal(ds[0][0], local_prepared(export, tmp_path)[0][0])


@pytest.mark.parametrize("damage", [None, "short", "out of range"])
def test_the_items_shard_numbers_are_worked_out_once_per_node(export, s3, tmp_path, monkeypatch, damage):
    root, _ = publish(export, s3, tmp_path / "node", leave_out=2, shard_bytes=5_000)
    first = open_shared(export, s3, root, tmp_path / "node")
    expected = first.item_shards().copy()
    [kept] = (first.items.list_folder / shared_source.ITEM_SHARDS).iterdir()
    if damage == "short":
        kept.write_bytes(kept.read_bytes()[:-4])
    elif damage == "out of range":
        kept.write_bytes(np.full(ITEMS, len(first.images._source.shared.shards), np.int32).tobytes())
    if damage is None:  # the next open maps them: it keys no item's path

        def keyed(paths):
            raise AssertionError(f"the open keyed {len(paths)} paths again")

        monkeypatch.setattr(shared_source, "keys_of", keyed)
    again = open_shared(export, s3, root, tmp_path / "node")
    assert again.item_shards().tolist() == expected.tolist()
    assert (expected == -1).sum() == 2 and (expected >= 0).sum() == ITEMS - 2
    assert np.fromfile(kept, np.int32).tolist() == expected.tolist()  # what was damaged is worked out again


@pytest.mark.parametrize("hint", ["next_indices", "ahead_indices"])
def test_the_shards_of_the_batches_named_download_while_this_one_loads(export, s3, tmp_path, hint):
    root, _ = publish(export, s3, tmp_path / "node", shard_bytes=5_000)
    ds = open_shared(export, s3, root, tmp_path / "node")
    last = len(ds) - 1
    shared = ds.images._source.shared
    shard = shared.shards[int(shared.shard_numbers(keys_of([ds.items.image_file(last)]))[0])]
    folder = shared.cache.local_dir
    ds.load_batch([0], **{hint: [last]})
    deadline = time.monotonic() + 60
    while not (folder / shard.name).exists():
        assert time.monotonic() < deadline, f"the next batch's shard {shard.name} was never prefetched"
        time.sleep(0.02)


def test_prepared_root_options_are_checked(export, tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="needs prepare=S"):
        VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", prepared_root="s3://b/p")
    with pytest.raises(ConfigurationError, match="prepared_cache_limit must be a positive size"):
        VisualLayerDataset.from_export(
            export, cache_dir=tmp_path / "c", prepare=48, prepared_root="s3://b/p", prepared_cache_limit="lots"
        )
    with pytest.raises(ConfigurationError, match="applies to a prepared_root"):
        VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", prepare=48, prepared_cache_limit="1G")
    monkeypatch.setenv("VL_DATASETS_PREPARED_CACHE_LIMIT", "2G")
    assert resolve_cache_limit(None) == 2 << 30 and resolve_cache_limit("3G") == 3 << 30
    monkeypatch.delenv("VL_DATASETS_PREPARED_CACHE_LIMIT")
    assert resolve_cache_limit(None) == 50 << 30


def test_a_shared_store_that_fails_under_a_job_changes_speed_never_results(export, s3, tmp_path, caplog):
    root, _ = publish(export, s3, tmp_path / "node")
    ds = open_shared(export, s3, root, tmp_path / "node")
    shared = ds.images._source.shared
    shared.cache.opener.retry = shared.cache.opener.retry.replace(max_attempts=1)
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3.endpoint, skip_instance_cache=True)
    fs.rm(f"{shared.url.removeprefix('s3://')}/shards", recursive=True)  # gone after the store was opened
    reference = local_prepared(export, tmp_path)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        for i in range(len(ds)):
            assert torch.equal(ds[i][0], reference[i][0]), f"image {i} differs from the node-local prepared path's"
    warnings = [r for r in caplog.records if "preparing images from their originals instead" in r.getMessage()]
    assert len(warnings) == 1 and "is missing from the shared store" in warnings[0].getMessage()
