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
import sys

import fsspec
import numpy as np
import psutil
import pytest

from tests.helpers import REPO, child_env
from tests.loading.shared_store_files import ITEMS, SECRET, SIZE, location_of, open_shared, read_store, same_store
from tests.waits import Child
from vl_datasets import ConfigurationError, ImageDecodeError, PreparedStoreError
from vl_datasets.cache.layout import content_name
from vl_datasets.cli import main
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import StoreSettings, keys_of
from vl_datasets.loading.prepared_source import prepare_pixels
from vl_datasets.loading.shard_packer import PACKING

JOB = REPO / "tests" / "loading" / "shared_build_job.py"


def test_every_image_is_published_with_the_pixels_prepare_makes(shared_export, tmp_path, shared_bucket):
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    summary = ds.prepare(num_workers=2, progress=False, shard_bytes=3000, share_images=6)
    store = read_store(location_of(ds, shared_bucket).url, shared_bucket[1])
    paths = ds.images.paths.to_pylist()
    assert (summary.images, summary.prepared, summary.skipped) == (ITEMS, ITEMS, [])
    assert summary.shares == store["manifest"]["shares"] == ["00000", "00001", "00002", "00003"]
    assert store["store"]["shares"] == 4 and store["manifest"]["format"] == "vl-prepared-shards/1"
    assert store["manifest"]["export"] == content_name(ds.entry) and store["manifest"]["version"] == ds.entry.version
    assert store["manifest"]["settings"] == StoreSettings(SIZE).as_json()
    assert set(store["pixels"]) == {tuple(key) for key in keys_of(paths).tolist()}
    for path, key in zip(paths, keys_of(paths).tolist()):
        expected = prepare_pixels((shared_export / "images" / path).read_bytes(), SIZE)
        assert np.array_equal(store["pixels"][tuple(key)], expected), f"{path} is published with other pixels"
    image_bytes = 24 * 32 * 3
    assert all(len(data) <= max(3000, image_bytes) for data in store["shards"].values())
    assert store["manifest"]["shards"] == len(store["shards"]) > 4, "shards were not cut at shard_bytes"


def test_an_image_larger_than_a_shard_gets_a_shard_of_its_own(shared_export, tmp_path, shared_bucket):
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    ds.prepare(num_workers=0, progress=False, shard_bytes=100, share_images=ITEMS)
    store = read_store(location_of(ds, shared_bucket).url, shared_bucket[1])
    assert len(store["shards"]) == ITEMS
    assert all(len(data) == 24 * 32 * 3 for data in store["shards"].values())


def test_machines_holding_the_same_export_find_the_same_store(quick_vl, s3_root, tmp_path, shared_bucket, monkeypatch):
    from vl_datasets import Client

    client = Client(quick_vl.url, progress=False, env={})
    opened, summaries = [], []
    # a and b mirror one export through a shared cache root; c exports for itself (another version name)
    for machine, cache_dir in (("a", s3_root), ("b", s3_root), ("c", str(tmp_path / "c-cache"))):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / machine))
        options = {"prepare": SIZE, "prepared_root": shared_bucket[0], "storage_options": shared_bucket[1]}
        opened.append(VisualLayerDataset("ds-ready", client=client, cache_dir=cache_dir, task=None, **options))
        summaries.append(opened[-1].prepare(num_workers=0, progress=False))
    assert opened[2].entry.version != opened[0].entry.version
    assert [(s.images, s.prepared, len(s.shares)) for s in summaries] == [(8, 8, 1), (8, 0, 0), (8, 0, 0)], (
        "another machine did not find the store the first published"
    )
    locations = {location_of(ds, shared_bucket).url for ds in opened}
    assert len(locations) == 1
    assert f"/{content_name(opened[0].entry)}-{StoreSettings(SIZE).digest}" in locations.pop()


def test_an_image_that_cannot_be_prepared_is_listed_in_its_share_and_raised_unless_skipped(
    shared_export, tmp_path, shared_bucket
):
    item = json.loads((shared_export / "metadata.json").read_text())["media_items"][3]
    (shared_export / "images" / item["file_path"]).write_bytes(b"not an image")
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    with pytest.raises(ImageDecodeError, match=item["media_id"]):
        ds.prepare(num_workers=0, progress=False, share_images=8)
    store = read_store(location_of(ds, shared_bucket).url, shared_bucket[1])  # published all the same
    failed = [path for share in store["shares"].values() for path in share["failed"]]
    assert failed == [item["file_path"]]
    assert (store["manifest"]["images"], store["manifest"]["failed"]) == (ITEMS - 1, 1)
    skipping = open_shared(shared_export, tmp_path / "cache", shared_bucket, on_error="skip")
    assert skipping.prepare(num_workers=0, progress=False).skipped == [], "a published store was built again"


def test_a_store_of_another_export_or_settings_is_refused_naming_it(shared_export, tmp_path, shared_bucket):
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    location = location_of(ds, shared_bucket)
    fs, base = fsspec.core.url_to_fs(location.url, **shared_bucket[1])
    other = {"format": "vl-prepared-shards/1", "export": "m-other", "settings": StoreSettings(SIZE).as_json()}
    fs.pipe_file(f"{base}/store.json", json.dumps({**other, "shares": 1}).encode())
    with pytest.raises(PreparedStoreError, match=r"store\.json describes another store") as raised:
        ds.prepare(num_workers=0, progress=False)
    assert location.display in str(raised.value)
    fs.pipe_file(f"{base}/store.json", json.dumps({**other, "export": content_name(ds.entry), "shares": 1}).encode())
    fs.pipe_file(
        f"{base}/manifest.json", json.dumps({**other, "export": content_name(ds.entry), "settings": {}}).encode()
    )
    with pytest.raises(PreparedStoreError, match=r"manifest\.json describes another store"):
        ds.prepare(num_workers=0, progress=False)


def test_secrets_stay_out_of_reprs_errors_and_logs(shared_export, tmp_path, shared_bucket, caplog):
    caplog.set_level(logging.DEBUG)
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    summary = ds.prepare(num_workers=0, progress=False, share_images=8)
    broken = (shared_bucket[0].replace("shared-bucket", "no-such-bucket"), shared_bucket[1])
    with pytest.raises(PreparedStoreError) as raised:
        open_shared(shared_export, tmp_path / "cache", broken).prepare(num_workers=0, progress=False)
    shown = [repr(ds), repr(ds.images.options), repr(summary), repr(location_of(ds, shared_bucket)), str(raised.value)]
    assert SECRET not in "\n".join([*shown, caplog.text])


def test_bad_shared_options_are_refused_before_anything_is_published(shared_export, tmp_path, shared_bucket):
    with pytest.raises(ConfigurationError, match="it needs prepare=S"):
        VisualLayerDataset.from_export(shared_export, cache_dir=tmp_path / "c", prepared_root=shared_bucket[0])
    local = VisualLayerDataset.from_export(shared_export, cache_dir=tmp_path / "c", task=None, prepare=SIZE)
    with pytest.raises(ConfigurationError, match="shard_bytes apply to a store under a prepared_root"):
        local.prepare(progress=False, shard_bytes=1000)
    shared = open_shared(shared_export, tmp_path / "c", shared_bucket)
    for sizes in ({"shard_bytes": 0}, {"share_images": -1}, {"share_images": True}):
        with pytest.raises(ConfigurationError, match=f"{next(iter(sizes))} must be a positive int"):
            shared.prepare(progress=False, **sizes)
    fs, base = fsspec.core.url_to_fs(location_of(shared, shared_bucket).url, **shared_bucket[1])
    assert not fs.exists(base), "a refused build published something"


def start_job(shared_export, cache, shared_bucket, marker, *, uploads, launcher=(sys.executable,)):
    """The build of shared_build_job.py (under ``launcher``) to ``shared_bucket``'s prefix + "-killed"."""
    root, options = shared_bucket
    url = root + "-killed"
    command = [*launcher, str(JOB), str(shared_export), str(cache), url, json.dumps(options), str(marker)]
    command += ["--uploads", str(uploads), "--shard-bytes", "3000", "--share-images", "4"]
    return url, Child(command, env=child_env(), cwd=REPO, start_new_session=True)


def wait_for(markers, job: Child) -> None:
    """Until every one of ``markers`` is written: each process of the build hangs mid-build."""
    job.until(lambda: all(marker.exists() for marker in markers), "every process of the build hanging mid-build")


def kill_job(job: Child) -> None:
    """Kill every process of the build at once, as a lost node would: its session, and any process
    of it in a session of its own (torchrun starts each rank in one)."""
    tree = psutil.Process(job.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(job.pid, signal.SIGKILL)
    for process in tree:
        with contextlib.suppress(psutil.Error):  # killed with the session already
            process.kill()
    job.close()


def test_a_killed_build_resumes_with_only_the_missing_shares_and_equals_a_clean_one(
    shared_export, tmp_path, shared_bucket
):
    cache = tmp_path / "cache"
    VisualLayerDataset.from_export(shared_export, cache_dir=cache, task=None)  # the version both builds share
    marker = tmp_path / "hung"
    # store.json, two whole shares (a shard per image, the index, the share file), a shard of the third.
    url, job = start_job(shared_export, cache, shared_bucket, marker, uploads=11)
    try:
        wait_for([marker], job)
    finally:
        kill_job(job)
    killed = (url, shared_bucket[1])
    before = killed_mid_build(shared_export, cache, killed)
    assert len(packing(cache)) == 1, "the killed build was not packing a shard"
    ds = open_shared(shared_export, cache, killed)
    summary = ds.prepare(num_workers=0, progress=False, shard_bytes=3000, share_images=4)
    assert packing(cache) == [], "the killed build's shard was left in the node's cache"
    assert summary.shares == [share for share in ALL_SHARES if share not in before]
    resumed_only_the_missing_shares(shared_export, cache, killed, before)
    resumed = read_store(location_of(ds, killed).url, shared_bucket[1])
    same_store(resumed, clean_build(shared_export, tmp_path, cache, shared_bucket))


ALL_SHARES = [f"{share:05d}" for share in range(5)]


def packing(cache) -> list:
    """The shards being packed (or left by a killed packer) in the node's prepared stores under ``cache``."""
    return sorted(cache.rglob(f"{PACKING}/*"))


def share_files(export, cache, bucket) -> tuple[dict, bool]:
    """({share: when its share file was written}, whether the store has a manifest) under ``bucket``."""
    ds = open_shared(export, cache, bucket)
    fs, base = fsspec.core.url_to_fs(location_of(ds, bucket).url, **bucket[1])
    names = [path.rsplit("/", 1)[-1].removesuffix(".json") for path in fs.ls(f"{base}/shares", detail=False)]
    shares = {name: fs.info(f"{base}/shares/{name}.json")["LastModified"] for name in sorted(names)}
    return shares, fs.exists(f"{base}/manifest.json")


def killed_mid_build(export, cache, bucket) -> dict:
    """The shares a killed build published (when), checked to be some of them, with no manifest."""
    shares, complete = share_files(export, cache, bucket)
    assert not complete, "a killed build left a manifest"
    assert 0 < len(shares) < len(ALL_SHARES), f"the kill was not mid-build: {sorted(shares)}"
    return shares


def resumed_only_the_missing_shares(export, cache, bucket, before: dict) -> None:
    shares, complete = share_files(export, cache, bucket)
    assert complete and list(shares) == ALL_SHARES, f"the resumed build left {sorted(shares)}, manifest: {complete}"
    assert {name: shares[name] for name in before} == before, "shares published before the kill were built again"


def clean_build(export, tmp_path, cache, bucket) -> dict:
    """The store built by one process from the originals (cache's export version, nothing prepared), read back."""
    clean_cache = tmp_path / "clean-cache"
    shutil.copytree(cache, clean_cache)
    shutil.rmtree(next(clean_cache.rglob("derived")))
    clean = (bucket[0] + "-clean", bucket[1])
    ds = open_shared(export, clean_cache, clean)
    assert ds.prepare(num_workers=0, progress=False, shard_bytes=3000, share_images=4).prepared == ITEMS
    return read_store(location_of(ds, clean).url, bucket[1])


def test_the_command_publishes_the_store(shared_export, tmp_path, shared_bucket, capsys, caplog):
    root, options = shared_bucket
    command = ["prepare", str(shared_export), "--size", str(SIZE), "--to", root, "--cache-dir", str(tmp_path / "cache")]
    for key in ("endpoint_url", "key", "secret"):
        command += ["--storage-option", f"{key}={options[key]}"]
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        assert main([*command, "--workers", "0", "--shard-size", "4K", "--share-images", "8"]) == 0
    # That no store is there yet is what a training job is warned of, not the command that builds it.
    assert "No finished shared prepared store" not in caplog.text
    out = capsys.readouterr().out
    assert f"{ITEMS} images at {SIZE}px ({ITEMS} prepared now" in out
    assert SECRET not in out
    ds = open_shared(shared_export, tmp_path / "cache", shared_bucket)
    store = read_store(location_of(ds, shared_bucket).url, options)
    assert store["manifest"]["images"] == ITEMS and len(store["manifest"]["shares"]) == 3
    assert all(len(data) <= 4096 for data in store["shards"].values())
