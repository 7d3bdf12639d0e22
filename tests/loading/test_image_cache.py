"""The node-local copy of remote images: filled atomically, shared by processes, reused, evicted past its limit."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.loading.image_server import ImageServer
from vl_datasets.config import parse_size
from vl_datasets.errors import ConfigurationError
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.image_cache import LEDGER, ImageCache


def cached_files(cache_dir):
    """The cached images: files in the two-letter shard folders (not the ledger or the lock)."""
    return sorted(p for p in (cache_dir / "images").glob("*/??/*") if p.is_file())


def test_the_second_epoch_reads_nothing_from_the_network(split_export, tmp_path):
    export, source = split_export
    cache_dir = tmp_path / "cache"
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_cache="10M", image_size=8, cache_dir=cache_dir
        )
        loader = ds.dataloader(3, num_workers=2, seed=0, multiprocessing_context="fork")
        first = [images for images, _ in loader]
        # The workers run ahead into the next epoch: its first reads may miss what this epoch
        # has not stored yet. Once an epoch is over, every image is on the node.
        list(loader)
        fetched = server.count()
        second = [images for images, _ in loader]
        other_rank = VisualLayerDataset.from_export(
            export, images_root=server.url, image_cache="10M", image_size=8, cache_dir=cache_dir
        )
        third = other_rank.__getitems__(list(range(len(ds))))
        assert server.count() == fetched, "a later epoch, or another process on the node, read from the network"
        other_rank.prefetch(range(3))
        assert other_rank.images._reads.pending() == 3
        assert other_rank.images._reads._pool is None, "copies on this machine were read through threads"
    assert len(ds) <= fetched < 2 * len(ds)
    assert sum(len(batch) for batch in second) == len(ds)
    assert sorted(x.sum().item() for batch in first for x in batch) == sorted(
        x.sum().item() for batch in second for x in batch
    )
    assert all(torch.equal(image, ds[i][0]) for i, (image, _) in enumerate(third))
    files = cached_files(cache_dir)
    assert len(files) == len(ds)
    assert not [f for f in files if f.name.endswith(".tmp")], "a temp file was left behind"
    cache = ds.images._source.cache
    stored = [cache.get(ds.table.column("file_path")[i].as_py()) for i in range(len(ds))]
    assert sorted(stored) == sorted(p.read_bytes() for p in source.rglob("*.jpg"))


def test_past_its_limit_the_least_recently_used_images_go(split_export, tmp_path):
    export, source = split_export
    sizes = sorted(p.stat().st_size for p in source.rglob("*.jpg"))
    limit = sum(sizes[:4])
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_cache=limit, image_size=8, cache_dir=tmp_path / "c"
        )
        for i in range(len(ds)):
            ds[i]
            time.sleep(0.002)  # distinct mtimes: the order of use
    files = cached_files(tmp_path / "c")
    assert 0 < sum(f.stat().st_size for f in files) <= limit
    cache = ds.images._source.cache
    kept = {cache.path(ds.table.column("file_path")[i].as_py()) for i in range(len(ds))} & set(files)
    newest = [cache.path(ds.table.column("file_path")[i].as_py()) for i in range(len(ds))][-len(kept) :]
    assert kept == set(newest), "an image used more recently was evicted before an older one"


def test_a_hit_makes_an_image_recent(tmp_path):
    cache = ImageCache(tmp_path / "c", limit_bytes=340)  # three images of 100 bytes and their trailers
    cache.touch_after_s = 0.0
    for age, key in ((30, "a"), (20, "b"), (10, "c")):
        cache.put(key, b"x" * 100)
        os.utime(cache.path(key), (time.time() - age, time.time() - age))
    assert cache.get("a") == b"x" * 100  # "a" is now the most recent
    cache.put("d", b"x" * 100)  # over the limit: the oldest go, down to 90% of it
    assert [cache.get(k) is not None for k in "abcd"] == [True, False, False, True]
    assert cache.size_bytes() <= 340


def test_concurrent_writers_of_one_image_leave_it_whole(tmp_path):
    cache = ImageCache(tmp_path / "c", limit_bytes=1 << 30)
    data = os.urandom(1 << 20)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: cache.put("same/key.jpg", data), range(32)))
    assert cache.get("same/key.jpg") == data
    assert [p.name for p in cache.path("same/key.jpg").parent.iterdir()] == [cache.path("same/key.jpg").name]
    assert (tmp_path / "c" / LEDGER).stat().st_size == 32 * 256  # a byte per 4 KiB written, by every writer


def test_what_a_crash_leaves_is_a_miss_or_collected(tmp_path):
    cache = ImageCache(tmp_path / "c", limit_bytes=1000)
    cache.put("k", b"abcdefgh")
    whole = cache.path("k").read_bytes()
    for torn in (b"", whole[:5], whole[:-1], b"\0" * len(whole)):  # renames whose data never all reached the disk
        cache.path("k").write_bytes(torn)
        assert cache.get("k") is None, torn
    cache.put("k", b"abcdefgh")
    assert cache.get("k") == b"abcdefgh"
    stale = cache.path("k").with_name(".x.123.abcd.tmp")
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cache.evict()
    assert not stale.exists()


def test_the_cache_pickles_to_its_settings(tmp_path):
    import pickle

    cache = ImageCache(tmp_path / "c", limit_bytes=100)
    cache.put("k", b"1")
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.folder, copy.limit_bytes, copy._ledger) == (cache.folder, 100, None)
    assert copy.get("k") == b"1"


@pytest.mark.parametrize(
    ("text", "size"), [("1024", 1024), ("500M", 500 << 20), ("1.5G", 3 << 29), ("20gib", 20 << 30)]
)
def test_sizes_read_as_the_cli_reads_them(text, size):
    assert parse_size(text) == size


def test_a_size_that_is_not_one_is_refused():
    with pytest.raises(ConfigurationError, match="not a size"):
        parse_size("lots")
