"""A shared prepared store (prepare=S, prepared_root=URL) built and published to S3 (moto, on
loopback): its files as a reader finds them, its place, its refusals, a killed build resumed, and
``vl-datasets prepare --to``. The stores are read back file by file (shared_store_files.py)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest

from tests.helpers import REPO, child_env
from tests.loading.shared_build_job import SIZE
from tests.loading.shared_store_files import read_store, same_store
from vl_datasets import ConfigurationError, PreparedStoreError
from vl_datasets.cli import main
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import StoreSettings, keys_of
from vl_datasets.loading.prepared_source import prepare_pixels
from vl_datasets.loading.shared_store_writer import store_location
from vl_datasets.testing import write_dataset

ITEMS = 20
SECRET = "wJalrXUtnFEMI-not-a-real-secret-K7MDENG"
JOB = REPO / "tests" / "loading" / "shared_build_job.py"
HANG_TIMEOUT_S = 180  # a cold child imports torch and s3fs on busy cores before its first upload


@pytest.fixture
def bucket(s3_root):
    """(a prefix in a bucket of the loopback S3, the storage options that reach it, with a secret)."""
    endpoint = fsspec.config.conf["s3"]["endpoint_url"]
    options = {"endpoint_url": endpoint, "key": "testing", "secret": SECRET, "skip_instance_cache": True}
    return "s3://shared-bucket/prepared", options


@pytest.fixture
def export(tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    return write_dataset(tmp_path, "ds", n_items=ITEMS, image_size=(80, 60))


def open_shared(export, cache, bucket, **options):
    root, storage_options = bucket
    return VisualLayerDataset.from_export(
        export, cache_dir=cache, task=None, prepare=SIZE, prepared_root=root, storage_options=storage_options, **options
    )


def location_of(ds, bucket):
    return store_location(bucket[0], bucket[1], ds.entry, StoreSettings(SIZE))


def test_every_image_is_published_with_the_pixels_prepare_makes(export, tmp_path, bucket):
    ds = open_shared(export, tmp_path / "cache", bucket)
    summary = ds.prepare(num_workers=2, progress=False, shard_bytes=3000, share_images=6)
    store = read_store(location_of(ds, bucket).url, bucket[1])
    paths = ds.images.paths.to_pylist()
    assert (summary.images, summary.prepared, summary.skipped) == (ITEMS, ITEMS, [])
    assert summary.shares == store["manifest"]["shares"] == ["00000", "00001", "00002", "00003"]
    assert store["store"]["shares"] == 4 and store["manifest"]["format"] == "vl-prepared-shards/1"
    assert store["manifest"]["version"] == ds.entry.version
    assert store["manifest"]["settings"] == StoreSettings(SIZE).as_json()
    assert set(store["pixels"]) == {tuple(key) for key in keys_of(paths).tolist()}
    for path, key in zip(paths, keys_of(paths).tolist()):
        expected = prepare_pixels((export / "images" / path).read_bytes(), SIZE)
        assert np.array_equal(store["pixels"][tuple(key)], expected), f"{path} is published with other pixels"
    image_bytes = 24 * 32 * 3
    assert all(len(data) <= max(3000, image_bytes) for data in store["shards"].values())
    assert store["manifest"]["shards"] == len(store["shards"]) > 4, "shards were not cut at shard_bytes"


def test_an_image_larger_than_a_shard_gets_a_shard_of_its_own(export, tmp_path, bucket):
    ds = open_shared(export, tmp_path / "cache", bucket)
    ds.prepare(num_workers=0, progress=False, shard_bytes=100, share_images=ITEMS)
    store = read_store(location_of(ds, bucket).url, bucket[1])
    assert len(store["shards"]) == ITEMS
    assert all(len(data) == 24 * 32 * 3 for data in store["shards"].values())


def test_two_machines_opening_the_same_export_version_find_the_same_store(quick_vl, s3_root, tmp_path, bucket):
    from vl_datasets import Client

    client = Client(quick_vl.url, progress=False, env={})
    opened = []
    for machine in ("a", "b"):  # each with its own local cache: the export comes through the shared root
        os.environ["XDG_CACHE_HOME"] = str(tmp_path / machine)
        ds = VisualLayerDataset(
            "ds-ready", client=client, cache_dir=s3_root, task=None, prepare=SIZE, prepared_root=bucket[0],
            storage_options=bucket[1],
        )  # fmt: skip
        opened.append(ds)
        summary = ds.prepare(num_workers=0, progress=False)
        assert summary.images == 8
    del os.environ["XDG_CACHE_HOME"]
    first, second = (location_of(ds, bucket) for ds in opened)
    assert first.url == second.url
    assert f"/{opened[0].entry.version}-{StoreSettings(SIZE).digest}" in first.url
    assert "/exports/ds-ready/" in first.url


def test_a_store_of_another_version_or_settings_is_refused_naming_it(export, tmp_path, bucket):
    ds = open_shared(export, tmp_path / "cache", bucket)
    location = location_of(ds, bucket)
    fs, base = fsspec.core.url_to_fs(location.url, **bucket[1])
    other = {"format": "vl-prepared-shards/1", "version": "v-other", "settings": StoreSettings(SIZE).as_json()}
    fs.pipe_file(f"{base}/store.json", json.dumps({**other, "shares": 1}).encode())
    with pytest.raises(PreparedStoreError, match=r"store\.json describes another store") as raised:
        ds.prepare(num_workers=0, progress=False)
    assert location.display in str(raised.value)
    fs.pipe_file(f"{base}/store.json", json.dumps({**other, "version": ds.entry.version, "shares": 1}).encode())
    fs.pipe_file(f"{base}/manifest.json", json.dumps({**other, "version": ds.entry.version, "settings": {}}).encode())
    with pytest.raises(PreparedStoreError, match=r"manifest\.json describes another store"):
        ds.prepare(num_workers=0, progress=False)


def test_secrets_stay_out_of_reprs_errors_and_logs(export, tmp_path, bucket, caplog):
    caplog.set_level(logging.DEBUG)
    ds = open_shared(export, tmp_path / "cache", bucket)
    summary = ds.prepare(num_workers=0, progress=False, share_images=8)
    broken = (bucket[0].replace("shared-bucket", "no-such-bucket"), bucket[1])
    with pytest.raises(PreparedStoreError) as raised:
        open_shared(export, tmp_path / "cache", broken).prepare(num_workers=0, progress=False)
    shown = [repr(ds), repr(ds.images.options), repr(summary), repr(location_of(ds, bucket)), str(raised.value)]
    assert SECRET not in "\n".join([*shown, caplog.text])


def test_prepared_root_needs_prepare_and_shard_sizes_need_a_prepared_root(export, tmp_path, bucket):
    with pytest.raises(ConfigurationError, match="give prepare=S"):
        VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", prepared_root=bucket[0])
    local = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", task=None, prepare=SIZE)
    with pytest.raises(ConfigurationError, match="shard_bytes apply to a store under a prepared_root"):
        local.prepare(progress=False, shard_bytes=1000)


def start_job(export, cache, bucket, marker, *, uploads):
    root, options = bucket
    url = root + "-killed"
    command = [sys.executable, str(JOB), str(export), str(cache), url, json.dumps(options), str(marker)]
    command += ["--uploads", str(uploads), "--shard-bytes", "3000", "--share-images", "4"]
    return url, subprocess.Popen(command, env=child_env(), cwd=REPO, start_new_session=True)


def wait_for(marker, process):
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not marker.exists():
        assert process.poll() is None, f"the build ended (rc {process.returncode}) before it hung mid-build"
        assert time.monotonic() < deadline, f"the build published nothing in {HANG_TIMEOUT_S} s"
        time.sleep(0.05)


def test_a_killed_build_resumes_with_only_the_missing_shares_and_equals_a_clean_one(export, tmp_path, bucket):
    cache = tmp_path / "cache"
    VisualLayerDataset.from_export(export, cache_dir=cache, task=None)  # the version both builds share
    marker = tmp_path / "hung"
    # Share 0's 3 shards, its index and share file, share 1's, then one shard of share 2: killed in share 2.
    url, process = start_job(export, cache, bucket, marker, uploads=11)
    try:
        wait_for(marker, process)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed = (url, bucket[1])
    ds = open_shared(export, cache, killed)
    fs, base = fsspec.core.url_to_fs(location_of(ds, killed).url, **bucket[1])
    published = sorted(path.rsplit("/", 1)[-1] for path in fs.ls(f"{base}/shares", detail=False))
    assert not fs.exists(f"{base}/manifest.json"), "a killed build left a manifest"
    assert 0 < len(published) < 5, f"the kill was not mid-build: {published}"
    before = {name: fs.info(f"{base}/shares/{name}")["LastModified"] for name in published}
    summary = ds.prepare(num_workers=0, progress=False, shard_bytes=3000, share_images=4)
    every = [f"{share:05d}" for share in range(5)]
    assert summary.shares == [share for share in every if f"{share}.json" not in published]
    assert {name: fs.info(f"{base}/shares/{name}")["LastModified"] for name in published} == before
    resumed = read_store(location_of(ds, killed).url, bucket[1])
    clean_cache = tmp_path / "clean-cache"
    shutil.copytree(cache, clean_cache)
    shutil.rmtree(next(clean_cache.rglob("derived")))  # nothing prepared: a clean build from the originals
    clean = open_shared(export, clean_cache, (bucket[0] + "-clean", bucket[1]))
    assert clean.entry.version == ds.entry.version
    assert clean.prepare(num_workers=0, progress=False, shard_bytes=3000, share_images=4).prepared == ITEMS
    same_store(resumed, read_store(location_of(clean, (bucket[0] + "-clean", bucket[1])).url, bucket[1]))


def test_the_command_publishes_the_store(export, tmp_path, bucket, capsys):
    root, options = bucket
    command = ["prepare", str(export), "--size", str(SIZE), "--to", root, "--cache-dir", str(tmp_path / "cache")]
    for key in ("endpoint_url", "key", "secret"):
        command += ["--storage-option", f"{key}={options[key]}"]
    assert main([*command, "--workers", "0", "--shard-size", "4K", "--share-images", "8"]) == 0
    out = capsys.readouterr().out
    assert f"{ITEMS} images at {SIZE}px ({ITEMS} prepared now" in out
    assert SECRET not in out
    ds = open_shared(export, tmp_path / "cache", bucket)
    store = read_store(location_of(ds, bucket).url, options)
    assert store["manifest"]["images"] == ITEMS and len(store["manifest"]["shares"]) == 3
    assert all(len(data) <= 4096 for data in store["shards"].values())
