"""The node-local copy of remote images: filled atomically, shared by processes, reused, evicted past its limit."""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.loading.helpers import split_export, swapped_images
from tests.loading.image_server import ImageServer
from vl_datasets.config import parse_size
from vl_datasets.errors import ConfigurationError
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.image_cache import LEDGER, TRAILER_SIZE, ImageCache


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


def test_roots_that_differ_only_in_their_query_or_user_info_have_caches_of_their_own(split_export, tmp_path):
    """An endpoint that picks a version of its images by query (``?set=B``): the root whose query,
    or user info, is another's reads its own images, never the copies cached for the other, and
    neither the query nor the password (tokens, often) is in any name or file of the cache."""
    export, source = split_export
    cache_dir = tmp_path / "cache"
    b_query = "set=B&sig=SECRET-B"
    with ImageServer(source, roots_by_query={b_query: swapped_images(source, tmp_path / "b")}) as server:
        host = server.url.removeprefix("http://")

        def images(root, **options):
            ds = VisualLayerDataset.from_export(export, images_root=root, image_size=8, cache_dir=cache_dir, **options)
            return [ds[i][0] for i in range(len(ds))]

        a = images(f"http://{host}/?set=A&sig=SECRET-A", image_cache="10M")
        b = images(f"http://{host}/?{b_query}")  # no cache: what B's images are
        assert not any(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        for root in (f"http://{host}/?{b_query}", f"http://user:SECRET-C@{host}/?{b_query}"):
            cached = images(root, image_cache="10M")
            assert all(torch.equal(x, y) for x, y in zip(cached, b, strict=True)), root
            assert all(torch.equal(x, y) for x, y in zip(images(root, image_cache="10M"), b, strict=True)), root
    assert len(list((cache_dir / "images").iterdir())) == 3, "a cache for each root"
    for path in cache_dir.rglob("*"):
        assert "SECRET" not in str(path)
        assert path.is_dir() or b"SECRET" not in path.read_bytes(), path


@pytest.fixture
def no_endpoint_configured(monkeypatch, tmp_path):
    """No S3 endpoint set anywhere s3fs or botocore would find one (fsspec's config, the environment,
    the AWS config file), whatever the machine running the tests has set."""
    import fsspec.config

    monkeypatch.delitem(fsspec.config.conf, "s3", raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))


def test_an_s3_roots_identity_is_worked_out_without_starting_a_thread(no_endpoint_configured):
    """Worked out by building an S3 filesystem, it started fsspec's IO thread in the process that
    forks the DataLoader's workers next."""
    import sys

    from tests.helpers import child_env
    from tests.waits import run_child

    code = (
        "import threading\n"
        "from vl_datasets.loading.sources import root_identity\n"
        "root_identity('s3://bucket/photos', 's3://bucket/photos', {'profile': None})\n"
        "print(sorted(t.name for t in threading.enumerate()))\n"
    )
    result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['MainThread']"


def test_a_roots_identity_tells_roots_apart_by_what_it_does_not_show(no_endpoint_configured):
    """Keyed by a digest of what the root's query and user name pick, never their text; a root
    without such parts keeps the identity it had (and its stores), and credentials (a password, a
    URL's signature, the endpoint's), which pick no other images, change nothing."""
    from vl_datasets.loading.shared_source import _store_digest
    from vl_datasets.loading.sources import root_identity

    assert json.loads(root_identity("s3://bucket/images/", "s3://bucket/images", None)) == {
        "root": "s3://bucket/images",
        "endpoint": None,
    }
    shown = "https://host/images"
    roots = [shown, f"{shown}?set=B&sig=SECRET1", f"{shown}?v=2", "https://u:SECRET3@host/images"]
    assert len({root_identity(root, shown, None) for root in roots}) == 4
    assert len({_store_digest(root, shown, None) for root in roots}) == 4
    for root in roots:
        assert "SECRET" not in root_identity(root, shown, {"endpoint_url": "https://k:SECRET4@s3.example"})
    # What signs a URL says who may read, not what: a token that rotates keeps the stores it built.
    same = [
        (f"{shown}?set=B&sig=SECRET1&se=2026-12-05", f"{shown}?se=2026-12-06&sig=SECRET2&set=B"),
        (f"{shown}?X-Amz-Signature=SECRET1&X-Amz-Date=1", f"{shown}?X-Amz-Signature=SECRET2&X-Amz-Date=2"),
        ("https://u:SECRET3@host/images", "https://u:SECRET5@host/images"),
        ("s3://AKIAOLD:SECRET6@bucket/images", "s3://AKIANEW:SECRET7@bucket/images"),  # keys rotate
    ]
    for one, other in same:
        display = "s3://bucket/images" if one.startswith("s3") else shown
        assert root_identity(one, display, None) == root_identity(other, display, None), (one, other)
    assert root_identity(f"{shown}?X-Amz-Signature=SECRET1", shown, None) == root_identity(shown, shown, None)


def test_a_root_with_no_endpoint_set_anywhere_keeps_the_stores_it_had(no_endpoint_configured):
    """With no endpoint set anywhere, a root's identity and the cache folders named after it are
    what they were before endpoints were looked for outside storage_options: no cache goes cold."""
    from vl_datasets.loading.shared_source import _store_digest
    from vl_datasets.loading.sources import _root_digest, root_identity

    root = "s3://bucket/images"
    assert root_identity(root, root, None) == '{"endpoint": null, "root": "s3://bucket/images"}'
    assert _root_digest(root, root, None) == "7a57f9aa063d508652fa"
    assert _root_digest("https://host/images?set=B", "https://host/images", None) == "11b6c8b38629bb0a8ea5"
    shards = "s3://bucket/prepared/shards"
    assert _store_digest(shards, shards, None) == "4fd6d3a0f079c2c7097b"


def _set_s3_endpoint(where: str, endpoint: str, monkeypatch, tmp_path) -> None:
    import fsspec.config

    if where == "fsspec config":
        monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    elif where == "fsspec config client_kwargs":
        monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": endpoint}})
    elif where == "AWS config file":
        (tmp_path / "aws-config").write_text(f"[default]\nendpoint_url = {endpoint}\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    else:
        monkeypatch.setenv(where, endpoint)


@pytest.mark.parametrize(
    "where",
    ["fsspec config", "fsspec config client_kwargs", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS config file"],
)
def test_an_s3_endpoint_set_outside_storage_options_keys_the_roots_stores(
    where, no_endpoint_configured, monkeypatch, tmp_path
):
    """The endpoint s3fs and botocore will read from, wherever it was set, keys the image cache, the
    prepared store (``root_identity``) and the shard cache (``_store_digest``): the same bucket name
    on another service is another store, and one endpoint has one store wherever it is set. Its
    credentials (user info, a token) never join the identity."""
    from vl_datasets.loading.shared_source import _store_digest
    from vl_datasets.loading.sources import root_identity

    root = "s3://bucket/images"
    endpoint = "http://minio:SECRET1@10.0.0.7:9000/?X-Amz-Security-Token=SECRET2"

    def keys(options=None):
        return root_identity(root, root, options), _store_digest(root, root, options)

    nowhere, given = keys(), keys({"endpoint_url": endpoint})
    _set_s3_endpoint(where, endpoint, monkeypatch, tmp_path)
    assert keys() == given != nowhere
    assert json.loads(keys()[0])["endpoint"] == "http://10.0.0.7:9000/"
    assert keys({"endpoint_url": "http://10.0.0.8:9000"}) != given, "storage_options' endpoint comes first"


def test_an_endpoint_botocore_is_told_to_ignore_is_no_part_of_the_identity(no_endpoint_configured, monkeypatch):
    """AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: botocore reads the service's own endpoint, and so does the identity."""
    from vl_datasets.loading.sources import root_identity

    root = "s3://bucket/images"
    nowhere = root_identity(root, root, None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://10.0.0.7:9000")
    assert root_identity(root, root, None) != nowhere
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert root_identity(root, root, None) == nowhere


def test_the_same_bucket_on_another_endpoint_is_never_read_from_the_first_ones_cache(
    split_export, s3_root, monkeypatch, tmp_path
):
    """Two S3 services with a bucket of one name (staging and production MinIO, say), their endpoint
    set where s3fs and botocore find it rather than in storage_options: fsspec's config (as s3_root
    sets it), AWS_ENDPOINT_URL. A job on the second reads the second, never the first one's cached
    images; the second's endpoint given in storage_options finds the second's cache."""
    import fsspec
    import fsspec.config

    from tests.loading.s3_server import SlowDownS3

    export, source = split_export
    fsspec.filesystem("s3", skip_instance_cache=True).put(str(source), "shared-bucket/photos", recursive=True)
    cache_dir = tmp_path / "cache"

    def images(**options):
        root = "s3://shared-bucket/photos"
        ds = VisualLayerDataset.from_export(
            export, images_root=root, image_cache="10M", image_size=8, cache_dir=cache_dir, **options
        )
        return [ds[i][0] for i in range(len(ds))]

    first = images()  # on s3_root's endpoint, from fsspec's config
    # Another server: the same bucket (moto's backend is one per process), read through another endpoint.
    with SlowDownS3() as other:
        monkeypatch.setitem(fsspec.config.conf, "s3", {"skip_instance_cache": True})
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", other.endpoint)
        second = images()
        assert other.object_requests() >= len(second), "the job on the other endpoint was served the first's cache"
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        read = other.object_requests()
        again = images(storage_options={"endpoint_url": other.endpoint})
        assert all(torch.equal(x, y) for x, y in zip(again, second, strict=True))
        assert other.object_requests() == read, "the same endpoint, given in storage_options, has another cache"
    assert len(second) == len(first)
    assert len(list((cache_dir / "images").iterdir())) == 2, "a cache for each endpoint"


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


# -- a cache this process cannot write or touch ------------------------------------------------

NOBODY = 65534


@contextlib.contextmanager
def as_another_user():
    """Run the block as a user who owns none of the cache's files. Tests run as root in CI, where
    permission bits (chmod) stop nothing: the effective user becomes nobody for the block, so the
    cache's files are another user's (no access-time update) and its folders read-only to it."""
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root (CI runs as root)")
    # What the block imports lazily, imported as root: nobody may not read this interpreter's
    # files (it failed run alone; run after another test that had made a loader, it passed).
    importlib.import_module("multiprocessing.sharedctypes")  # the library loader's batch slots
    list(DataLoader(range(2), num_workers=1, multiprocessing_context="fork"))  # workers, queues, locks

    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_folder():
    """A folder nobody may read (pytest's tmp_path is root's alone), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="vl-image-cache-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_cache_another_user_owns_serves_its_images_and_warns_once(shared_folder, caplog):
    export, source = split_export(shared_folder, 12)
    cache_dir = shared_folder / "cache"
    with ImageServer(source) as server:
        options = {"images_root": server.url, "image_cache": "10M", "image_size": 8, "cache_dir": cache_dir}
        filled = VisualLayerDataset.from_export(export, **options)
        reference = [filled[i][0] for i in range(len(filled))]
        files = cached_files(cache_dir)
        assert len(files) == len(filled)
        for file in files:  # last used long ago: each hit would update its time
            os.utime(file, (time.time() - 3600, time.time() - 3600))
        ds = VisualLayerDataset.from_export(export, **options)
        skipping = VisualLayerDataset.from_export(export, on_error="skip", **options)
        fetched = server.count()
        with caplog.at_level(logging.WARNING, logger="vl_datasets"), as_another_user():
            images = [ds[i][0] for i in range(len(ds))]
            loader = skipping.dataloader(4, num_workers=2, shuffle=False, multiprocessing_context="fork")
            batches = [images for images, _ in loader]
        assert all(torch.equal(a, b) for a, b in zip(images, reference)), "a cached image came back different"
        assert loader.skipped == [], f"good images were skipped: {loader.skipped}"
        assert sum(len(batch) for batch in batches) == len(ds)
        assert server.count() == fetched, "copies the cache holds were read from the root again"
        touched = [r for r in caplog.records if "mark as recently used" in r.getMessage()]
        assert len(touched) == 1 and str(ds.images._source.cache.folder) in touched[0].getMessage(), caplog.text
        # Its persistent workers read ahead into the next epoch on threads: ended here, before the
        # copies go, none of those reads can reach the root and be counted below.
        del loader, batches
        gc.collect()

        for file in files:  # no copies left: every image comes from the root, none can be kept
            file.unlink()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vl_datasets"), as_another_user():
            images = [ds[i][0] for i in range(len(ds))]
        assert all(torch.equal(a, b) for a, b in zip(images, reference))
        assert server.count() == fetched + len(ds)
        assert caplog.records == [], f"the folder's failures were reported twice in one process: {caplog.text}"
        assert cached_files(cache_dir) == []


def test_a_cache_folder_that_cannot_be_made_falls_back_to_the_root(split_export, tmp_path, caplog):
    export, source = split_export
    cache_dir = tmp_path / "cache"
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_cache="10M", image_size=8, cache_dir=cache_dir
        )
        folder = ds.images._source.cache.folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.write_bytes(b"")  # a file where the cache's folder belongs: any user's writes fail
        with caplog.at_level(logging.WARNING, logger="vl_datasets"):
            images = [ds[i][0] for i in range(len(ds))] + [ds[i][0] for i in range(len(ds))]
        assert len(images) == 2 * len(ds)
    assert [r.getMessage().count(str(folder)) for r in caplog.records] == [1], caplog.text
    assert server.count() == 2 * len(ds)


def test_a_copy_changed_mid_file_is_fetched_again_never_served(split_export, tmp_path, caplog):
    export, source = split_export
    with ImageServer(source) as server:
        ds = VisualLayerDataset.from_export(
            export, images_root=server.url, image_cache="10M", image_size=8, cache_dir=tmp_path / "c"
        )
        expected = ds[0][0]
        copy = ds.images._source.cache.path(ds.table.column("file_path")[0].as_py())
        stored = bytearray(copy.read_bytes())
        stored[len(stored) // 2] ^= 0xFF  # one byte in the middle of the JPEG: it would still decode
        copy.write_bytes(bytes(stored))
        fetched = server.count()
        with caplog.at_level(logging.WARNING, logger="vl_datasets"):
            again = ds[0][0]
        assert server.count() == fetched + 1, "the damaged copy was served instead of fetched again"
        assert torch.equal(again, expected)
        assert f"damaged copy {copy}" in caplog.text
        replaced = ds.images._source.cache.get(ds.table.column("file_path")[0].as_py())
        assert replaced == copy.read_bytes()[:-TRAILER_SIZE], "the damaged copy was not replaced"
