"""A cache root on object storage: a real S3 API on loopback, or fsspec's memory filesystem."""

from __future__ import annotations

import logging
import pickle
from datetime import timedelta

import pytest

from tests.helpers import change_dataset
from vl_datasets import Client, errors, fetch_export
from vl_datasets.cache import store as store_module


def test_shared_object_storage_root_serves_a_second_machine(quick_vl, s3_root, tmp_path, monkeypatch):
    client = Client(quick_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert str(first.path).startswith(str(tmp_path / "machine-a"))
    quick_vl.clear_requests()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    second = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert quick_vl.requests == []  # no export, no download: it came from object storage
    assert str(second.path).startswith(str(tmp_path / "machine-b"))
    assert second.task.id == first.task.id
    assert second.row_count == 8
    assert len(list(second.images_dir.rglob("*.jpg"))) == 8
    assert second.metadata_path.read_bytes() == first.metadata_path.read_bytes()


def test_a_node_whose_clock_ran_ahead_does_not_hide_a_later_refresh(
    quick_vl, s3_root, tmp_path, dataset_root, monkeypatch
):
    """Shared versions are ordered by the clocks of the machines that uploaded them. Machine A's
    clock runs an hour ahead when it exports; machine B, with the right time, refreshes later; a
    new machine C mirrors B's version, the newer export, not A's."""
    client = Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)
    real_clock = store_module._utcnow
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    monkeypatch.setattr(store_module, "_utcnow", lambda: real_clock() + timedelta(hours=1))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    monkeypatch.setattr(store_module, "_utcnow", real_clock)
    change_dataset(dataset_root, "ds-ready", remove=3)
    refreshed = fetch_export("ds-ready", client=client, cache_dir=s3_root, refresh=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-c"))
    mirrored = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert (first.row_count, refreshed.row_count) == (8, 5)
    assert mirrored.version == refreshed.version and mirrored.row_count == 5, "machine C mirrored the older export"


def test_a_node_opens_the_version_another_node_refreshed_since(quick_vl, s3_root, tmp_path, dataset_root, monkeypatch):
    """Machine B mirrored the first export; machine A then refreshes it. B's next open returns A's
    version, as a machine that starts later does, not its own older mirror: one job's machines read
    one export. It is mirrored once; offline, the mirror alone answers; a pinned version stays."""
    import fsspec.config

    client = Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    assert fetch_export("ds-ready", client=client, cache_dir=s3_root).version == first.version
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    change_dataset(dataset_root, "ds-ready", remove=3)
    refreshed = fetch_export("ds-ready", client=client, cache_dir=s3_root, refresh=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    quick_vl.clear_requests()
    opened = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert opened.version == refreshed.version and opened.row_count == 5, "machine B kept its older mirror"
    assert str(opened.path).startswith(str(tmp_path / "machine-b"))
    assert quick_vl.requests == []  # no export, no download from the API: it came from the shared root
    assert fetch_export("ds-ready", client=client, cache_dir=s3_root) == opened  # mirrored once
    pinned = fetch_export("ds-ready", client=client, cache_dir=s3_root, version=first.version)
    assert (pinned.version, pinned.row_count) == (first.version, 8)
    # Offline asks nothing of the shared root: its storage is out of reach now.
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": "http://127.0.0.1:9", "skip_instance_cache": True})
    assert fetch_export("ds-ready", client=client, cache_dir=s3_root, offline=True) == opened


def test_a_refresh_exports_anew_past_what_the_shared_root_holds(quick_vl, s3_root, tmp_path, monkeypatch):
    """A refresh on a machine whose disk is new (or was wiped) must not return the shared root's
    version, which it never held: it was there when the refresh was asked for."""
    client = Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-new"))
    quick_vl.clear_requests()
    refreshed = fetch_export("ds-ready", client=client, cache_dir=s3_root, refresh=True)
    assert refreshed.version != first.version
    assert sum(r.endpoint == "export" for r in quick_vl.requests) == 1
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    assert fetch_export("ds-ready", client=client, cache_dir=s3_root).version == refreshed.version


def test_a_refresh_adopts_the_version_another_node_publishes_while_it_waits(
    quick_vl, s3_root, tmp_path, dataset_root, monkeypatch
):
    """Machine B's refresh waits for its entry's lock (held here, as another process of B would);
    meanwhile machine A's refresh publishes a new version to the shared root. B takes A's version,
    as it would one that another process of B published, rather than export a third."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from vl_datasets import exports
    from vl_datasets.cache.store import CacheStore
    from vl_datasets.locks import hold_lock

    client = Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    fetch_export("ds-ready", client=client, cache_dir=s3_root)
    lock_path = CacheStore.mirror_of(s3_root).lock_path(CacheStore.mirror_of(s3_root).entry_dir(first.key))
    locking = threading.Event()  # B's refresh has listed what it supersedes, and goes for the lock
    real_hold_lock = exports.hold_lock

    def hold_lock_seen(*args, **kwargs):
        locking.set()
        return real_hold_lock(*args, **kwargs)

    monkeypatch.setattr(exports, "hold_lock", hold_lock_seen)
    with ThreadPoolExecutor(1) as pool:
        with hold_lock(lock_path, timeout_s=10, what="machine B's entry, for the test"):
            b_refresh = pool.submit(fetch_export, "ds-ready", client=client, cache_dir=s3_root, refresh=True)
            assert locking.wait(60)
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))  # B's call has its store already
            change_dataset(dataset_root, "ds-ready", remove=3)
            quick_vl.clear_requests()
            refreshed = fetch_export("ds-ready", client=client, cache_dir=s3_root, refresh=True)
        adopted = b_refresh.result(timeout=120)
    assert adopted.version == refreshed.version and adopted.row_count == 5
    assert str(adopted.path).startswith(str(tmp_path / "machine-b"))
    assert sum(r.endpoint == "export" for r in quick_vl.requests) == 1, "machine B exported again"


def test_memory_filesystem_root_works_too(quick_vl, tmp_path, monkeypatch):
    client = Client(quick_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    quick_vl.clear_requests()
    entry = fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    assert entry.row_count == 8
    assert quick_vl.requests == []


def test_a_shared_manifest_with_no_version_is_passed_over(quick_vl, tmp_path, monkeypatch):
    """Read as the newest, a manifest without its version failed every open with a KeyError."""
    import json

    import fsspec

    root = "memory://vl-damaged-manifest"
    client = Client(quick_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    first = fetch_export("ds-ready", client=client, cache_dir=root, include_images=False)
    fs = fsspec.filesystem("memory")
    [path] = fs.glob(f"{root}/**/*.manifest.json")
    damaged = json.loads(fs.cat_file(path))
    del damaged["version"]
    damaged["created_at"] = "2999-01-01T00:00:00+00:00"  # the newest, were it read
    fs.pipe_file(path.replace(first.version, "v-damaged"), json.dumps(damaged).encode())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert fetch_export("ds-ready", client=client, cache_dir=root, include_images=False).version == first.version


SECRET = "Q9zSECRET-sig-0123456789"


@pytest.mark.parametrize("where", ["signed https", "s3 user info"])
def test_a_shared_root_that_fails_is_a_cache_error_without_its_credentials(where, quick_vl, s3_root, tmp_path, caplog):
    """A storage failure (a 403 whose aiohttp error names the signed URL; botocore refusing the
    bucket of s3://KEY:SECRET@bucket) is a RemoteCacheError naming the root without the secret,
    and chains no error of the storage library's that holds it (error trackers record those)."""
    from tests.loading.image_server import ImageServer

    caplog.set_level(logging.DEBUG)
    client = Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)
    with ImageServer(tmp_path) as server:
        server.fail_next(10, 403)
        root, shown = {
            "signed https": (f"{server.url}/vl?sig={SECRET}", f"{server.url}/vl"),
            "s3 user info": (f"s3://AKIAEXAMPLE:{SECRET}@shared-bucket/vl", "s3://shared-bucket/vl"),
        }[where]
        with pytest.raises(errors.RemoteCacheError, match="Cannot list the shared cache") as caught:
            fetch_export("ds-ready", client=client, cache_dir=root)
    error = caught.value
    assert isinstance(error, errors.CacheError) and error.url == shown and shown in str(error)
    assert "403" in str(error) if where == "signed https" else "Invalid bucket name" in str(error)
    shown_text = f"{error} {error!r} {error.args!r} {vars(error)!r} {pickle.loads(pickle.dumps(error))!r}"
    assert SECRET not in shown_text
    assert error.__cause__ is None and error.__context__ is None, "the storage library's error travels with it"
    assert quick_vl.requests == [], "no export may start before the shared root was read"
    assert SECRET not in caplog.text


def test_a_message_about_a_root_blanks_its_password_not_its_user_name():
    """A remote cache's error is redacted with its root's own credentials: the user name (no secret,
    often one letter) was blanked too, wherever it stood, 'FileNotFo[redacted]ndError'."""
    from vl_datasets.redaction import redact_text_of

    message = "FileNotFoundError: cache not found for user u (password p4ssw0rd-x)"
    redacted = redact_text_of(message, "sftp://u:p4ssw0rd-x@host/cache")
    assert redacted == "FileNotFoundError: cache not found for user u (password [redacted])"
