"""A cache root on object storage: a real S3 API on loopback, or fsspec's memory filesystem."""

from __future__ import annotations

from vl_datasets import Client, fetch_export


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


def test_memory_filesystem_root_works_too(quick_vl, tmp_path, monkeypatch):
    client = Client(quick_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    quick_vl.clear_requests()
    entry = fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    assert entry.row_count == 8
    assert quick_vl.requests == []
