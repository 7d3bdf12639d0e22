"""The node's cache of a shared store's shards, against a local S3 server that counts requests: one
download per shard per node whatever the number of processes, a limit that holds with several,
nothing half-written taken after a kill, damage fetched again, failures typed and without secrets."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time

import filelock
import numpy as np
import pytest

from tests.loading.image_server import ImageServer
from tests.loading.shared_store_helpers import s3_bucket, shard_gets
from vl_datasets import errors
from vl_datasets.loading import shard_cache as shard_cache_module
from vl_datasets.loading.shard_cache import LOCKS, ShardCache
from vl_datasets.loading.sources import FsspecRoot

FORK = multiprocessing.get_context("fork")
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY"


def no_sleep(seconds: float) -> None:
    """The retry policy's sleep in tests: no waiting (a module-level function, so it pickles)."""


def shard_bytes(number: int, size: int) -> bytes:
    return np.random.default_rng(number).integers(0, 256, size, np.uint8).tobytes()


@pytest.fixture
def s3(monkeypatch):
    with s3_bucket(monkeypatch) as server:
        yield server


def upload(server, shards: dict[str, bytes]) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=server.endpoint, skip_instance_cache=True)
    for name, data in shards.items():
        fs.pipe_file(f"{server.bucket}/store/shards/{name}", data)


def make_cache(server, folder, limit=10**9, **options) -> ShardCache:
    opener = FsspecRoot(
        f"s3://{server.bucket}/store/shards", {"endpoint_url": server.endpoint, "key": "testing", "secret": SECRET}
    )
    opener.retry = opener.retry.replace(max_attempts=2, sleep=no_sleep)
    return ShardCache(folder, limit, opener, **options)


def fetch_in_child(cache, names, results, barrier=None):
    if barrier is not None:
        barrier.wait()
    for name, size in names:
        fd = cache.open(name, size)  # open at once: another process may evict it right after
        try:
            results.put((os.getpid(), name, os.pread(fd, size + 1, 0) == shard_bytes(int(name[1]), size)))
        finally:
            os.close(fd)


def run_children(target, args_of, count):
    children = [FORK.Process(target=target, args=args_of(i)) for i in range(count)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert child.exitcode == 0, f"a process fetching shards ended with {child.exitcode}"


def test_processes_asking_for_one_shard_download_it_once(s3, tmp_path):
    shards = {"a0-00000.pixels": shard_bytes(0, 200_000)}
    upload(s3, shards)
    s3.get_delay_s = 0.3  # every process asks while the first download is under way
    cache = make_cache(s3, tmp_path / "shards")
    barrier, results = FORK.Barrier(4), FORK.Queue()
    run_children(fetch_in_child, lambda i: (cache, [("a0-00000.pixels", 200_000)], results, barrier), 4)
    answers = [results.get(timeout=10) for _ in range(4)]
    assert all(ok for _, _, ok in answers), "a process read other bytes than the shard's"
    assert shard_gets(s3, "a0-00000.pixels") == 1, f"the node sent {s3.requests} for one shard"
    stats = cache.node_stats()
    assert (stats["misses"], stats["hits"] + stats["waits"]) == (1, 3)
    assert stats["bytes_downloaded"] == 200_000


def test_the_size_limit_holds_with_several_processes(s3, tmp_path):
    sizes = {f"a{n}-00000.pixels": 10_000 + n for n in range(8)}
    upload(s3, {name: shard_bytes(int(name[1]), size) for name, size in sizes.items()})
    limit = 35_000  # three shards
    cache = make_cache(s3, tmp_path / "shards", limit)
    orders = [list(sizes.items()), list(reversed(sizes.items())), list(sizes.items())[3:] + list(sizes.items())[:3]]
    results = FORK.Queue()
    run_children(fetch_in_child, lambda i: (cache, orders[i], results), 3)
    answers = [results.get(timeout=10) for _ in range(24)]
    assert all(ok for _, _, ok in answers), "a process read other bytes than the shard's"
    assert cache.size_bytes() <= limit, f"{cache.size_bytes()} bytes cached past the limit of {limit}"
    kept = [p.name for p in (tmp_path / "shards").iterdir() if not p.name.startswith(".")]
    assert 1 <= len(kept) <= 3
    # An evicted shard comes back whole when asked again.
    evicted = next(name for name in sizes if name not in kept)
    assert cache.path(evicted, sizes[evicted]).read_bytes() == shard_bytes(int(evicted[1]), sizes[evicted])
    assert cache.size_bytes() <= limit


def test_an_evicted_shard_stays_readable_to_a_process_that_has_it_open(s3, tmp_path):
    upload(s3, {"a0-00000.pixels": shard_bytes(0, 30_000), "a1-00000.pixels": shard_bytes(1, 30_000)})
    cache = make_cache(s3, tmp_path / "shards", limit=40_000)
    fd = cache.open("a0-00000.pixels", 30_000)
    try:
        cache.path("a1-00000.pixels", 30_000)  # over the limit: the older one goes
        assert not (tmp_path / "shards" / "a0-00000.pixels").exists()
        assert os.pread(fd, 30_000, 0) == shard_bytes(0, 30_000)
    finally:
        os.close(fd)


def download_slowly(cache, name, size):
    shard_cache_module.CHUNK_BYTES = 4096  # many ranges: the kill lands midway
    cache.path(name, size)


def test_a_download_killed_midway_leaves_nothing_a_reader_takes(s3, tmp_path):
    name, size = "a0-00000.pixels", 64 * 4096
    upload(s3, {name: shard_bytes(0, size)})
    s3.get_delay_s = 0.05
    cache = make_cache(s3, tmp_path / "shards")
    child = FORK.Process(target=download_slowly, args=(cache, name, size))
    child.start()
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in (tmp_path / "shards").glob(".*.tmp")):
        assert time.monotonic() < deadline and child.is_alive(), "the download never started writing"
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert not (tmp_path / "shards" / name).exists(), "a half-downloaded shard was put in place"
    s3.get_delay_s = 0.0
    # The dead process's lock is released with it: the next reader downloads the shard whole.
    assert cache.path(name, size).read_bytes() == shard_bytes(0, size)


def test_a_damaged_local_shard_is_fetched_again(s3, tmp_path):
    name, data = "a0-00000.pixels", shard_bytes(0, 5000)
    upload(s3, {name: data})
    cache = make_cache(s3, tmp_path / "shards")
    local = cache.path(name, len(data))
    with open(local, "r+b") as handle:
        handle.truncate(100)  # cut short: the size tells
    assert cache.path(name, len(data)).read_bytes() == data
    assert shard_gets(s3, name) == 2


@pytest.mark.parametrize("range_bytes", [16 << 20, 1024])  # one range; five, fetched four at a time
def test_a_shard_that_differs_from_its_description_is_never_put_in_place(s3, tmp_path, monkeypatch, range_bytes):
    monkeypatch.setattr(shard_cache_module, "CHUNK_BYTES", range_bytes)
    name, data = "a0-00000.pixels", shard_bytes(0, 5000)
    upload(s3, {name: data})
    cache = make_cache(s3, tmp_path / "shards")
    with pytest.raises(
        errors.ShardReadError, match="holds more than 4000 bytes, where the shared store's files say 4000"
    ):
        cache.path(name, 4000)
    with pytest.raises(errors.ShardReadError, match="xxh3 differs"):
        cache.path(name, 5000, xxh3="0123456789abcdef")
    with pytest.raises(errors.ShardReadError, match="holds 5000 bytes, where the shared store's files say 6000"):
        cache.path(name, 6000)
    assert [p for p in (tmp_path / "shards").iterdir() if not p.name.startswith(".")] == []
    import xxhash

    assert cache.path(name, 5000, xxh3=xxhash.xxh3_64_hexdigest(data)).read_bytes() == data


def test_object_storage_failures_are_typed_and_without_secrets(s3, tmp_path, caplog):
    cache = make_cache(s3, tmp_path / "shards")
    with pytest.raises(errors.ShardReadError) as missing:
        cache.path("a9-00000.pixels", 10)
    assert "missing from the shared store" in str(missing.value)
    upload(s3, {"a0-00000.pixels": shard_bytes(0, 10)})
    s3.slow_down_next(100)
    with caplog.at_level(logging.DEBUG, logger="vl_datasets"), pytest.raises(errors.ShardReadError) as failing:
        cache.path("a0-00000.pixels", 10)
    assert failing.value.attempts == 2 and "gave up after 2 of 2 attempts" in str(failing.value)
    assert isinstance(failing.value, OSError) and isinstance(failing.value, errors.PreparedStoreError)
    assert failing.value.__context__ is None and failing.value.__cause__ is None
    assert failing.value.url == f"s3://{s3.bucket}/store/shards/a0-00000.pixels"
    shown = [
        str(missing.value),
        str(failing.value),
        repr(cache),
        caplog.text,
        repr(pickle.loads(pickle.dumps(failing.value))),
    ]
    assert not any(SECRET in text for text in shown)
    assert pickle.loads(pickle.dumps(cache)).opener.storage_options["secret"] == SECRET  # workers still get it


def test_a_waiter_downloads_itself_when_the_holder_makes_no_progress(s3, tmp_path, caplog):
    name, data = "a0-00000.pixels", shard_bytes(0, 1000)
    upload(s3, {name: data})
    cache = make_cache(s3, tmp_path / "shards", stall_s=0.5)
    (tmp_path / "shards" / LOCKS).mkdir(parents=True)
    held = filelock.FileLock(str(tmp_path / "shards" / LOCKS / f".{name}.lock"))
    held.acquire()  # a hung downloader: holds the lock, writes nothing
    try:
        got: list[bytes] = []
        waiter = threading.Thread(target=lambda: got.append(cache.path(name, len(data)).read_bytes()))
        with caplog.at_level(logging.WARNING, logger="vl_datasets"):
            waiter.start()
            waiter.join(60)
        assert not waiter.is_alive(), "the waiter waited on a download that made no progress"
        assert got == [data]
        assert "made no progress" in caplog.text
    finally:
        held.release()


def test_prefetch_downloads_in_the_background_once(s3, tmp_path):
    sizes = {f"a{n}-00000.pixels": 3000 + n for n in range(5)}
    upload(s3, {name: shard_bytes(int(name[1]), size) for name, size in sizes.items()})
    cache = make_cache(s3, tmp_path / "shards")
    cache.prefetch(sizes.items())
    cache.prefetch(sizes.items())  # a repeated hint is not a second download
    deadline = time.monotonic() + 60
    while not all((tmp_path / "shards" / name).exists() for name in sizes):
        assert time.monotonic() < deadline, "the prefetched shards never arrived"
        time.sleep(0.02)
    for name, size in sizes.items():
        assert cache.path(name, size).read_bytes() == shard_bytes(int(name[1]), size)
        assert shard_gets(s3, name) == 1
    assert cache.stats()["hits"] == 5


def test_a_prefetch_leaves_a_shard_another_process_is_downloading_and_goes_on(s3, tmp_path):
    sizes = {"a0-00000.pixels": 3000, "a1-00000.pixels": 3001}
    upload(s3, {name: shard_bytes(int(name[1]), size) for name, size in sizes.items()})
    cache = make_cache(s3, tmp_path / "shards", stall_s=600, prefetch_threads=1)
    (tmp_path / "shards" / LOCKS).mkdir(parents=True)
    held = filelock.FileLock(str(tmp_path / "shards" / LOCKS / ".a0-00000.pixels.lock"))
    held.acquire()  # another process's download of a0, under way
    try:
        cache.prefetch(sizes.items())  # one thread: had it waited for a0, a1 would wait behind it
        deadline = time.monotonic() + 60
        while not (tmp_path / "shards" / "a1-00000.pixels").exists():
            assert time.monotonic() < deadline, "the prefetch of a1 waited behind another process's download of a0"
            time.sleep(0.02)
        assert shard_gets(s3, "a0-00000.pixels") == 0, "the prefetch downloaded a shard another process was downloading"
    finally:
        held.release()
    assert cache.path("a0-00000.pixels", 3000).read_bytes() == shard_bytes(0, 3000)  # a read still gets it


def test_a_signed_https_style_root_s_token_stays_out_of_errors_and_logs(tmp_path, caplog):
    folder = tmp_path / "served" / "store" / "shards"
    folder.mkdir(parents=True)
    (folder / "a0-00000.pixels").write_bytes(shard_bytes(0, 300))
    signature = "sig=Zm9vYmFyYmF6cXV4c2VjcmV0c2lnbmF0dXJl"
    with ImageServer(tmp_path / "served") as server:
        opener = FsspecRoot(f"{server.url}/store/shards?sv=2024&{signature}")
        opener.retry = opener.retry.replace(max_attempts=2, sleep=no_sleep)
        cache = ShardCache(tmp_path / "cache", 10**9, opener)
        assert cache.path("a0-00000.pixels", 300).read_bytes() == shard_bytes(0, 300)
        assert server.requests[-1].endswith(f"/store/shards/a0-00000.pixels?sv=2024&{signature}")
        server.fail_next(2)  # the two attempts of one shard
        with caplog.at_level(logging.DEBUG), pytest.raises(errors.ShardReadError) as failing:
            cache.path("a1-00000.pixels", 300)
        with pytest.raises(errors.ShardReadError, match="missing from the shared store") as missing:
            cache.path("a2-00000.pixels", 300)
    assert failing.value.attempts == 2
    shown = [str(failing.value), str(missing.value), failing.value.url, repr(cache), caplog.text]
    assert not any(signature.split("=")[1] in text for text in shown), shown
