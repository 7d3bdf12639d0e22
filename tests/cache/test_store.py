"""The cache store: its layout, the versions it publishes, and what it refuses or collects."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle

import pytest

from vl_datasets import errors, fetch_export
from vl_datasets.cache.store import CacheStore, ExportKey
from vl_datasets.cli import main


def test_damaged_manifest_is_not_an_entry(quick_vl, quick_client, tmp_path):
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    manifest = entry.entry_dir / f"{entry.version}.manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert CacheStore(tmp_path).lookup(entry.key) is None
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path).row_count == 8
    assert quick_vl.count("export") == 2


def test_services_behind_one_host_at_two_paths_never_share_an_export():
    """A reverse proxy publishing two on-prem services at /a and /b: both keyed by the host alone,
    the second's dataset was served from the first's cache."""
    first, second = (ExportKey.build(f"http://gateway:8080/{path}", "ds", "parquet", True) for path in "ab")
    assert first.digest != second.digest
    assert (first.api_host, second.api_host) == ("gateway:8080/a", "gateway:8080/b")
    # A base URL without a path keys as it always has: the caches made so far stay warm.
    assert ExportKey.build("http://Gateway:8080", "ds", "parquet", True).api_host == "gateway:8080"


def test_row_count_must_match_the_task(quick_vl, quick_client, tmp_path):
    import shutil

    from vl_datasets.records import ExportTask

    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    store = CacheStore(tmp_path)
    task = ExportTask(id="t", dataset_id="ds-ready", status="COMPLETED", entities_count=9)
    with store.staging(entry.entry_dir) as staging:
        shutil.copytree(entry.path, staging, dirs_exist_ok=True)
        with pytest.raises(errors.CorruptArchiveError, match="announced 9"):
            store.publish(entry.entry_dir, staging, key=entry.key, task=task, expected_rows=task.entities_count)
    assert store.versions(entry.entry_dir) == [entry], "a refused version must not be published"


def test_a_manifest_keeps_the_task_without_its_secrets(quick_vl, quick_client, tmp_path):
    """The manifest records the server's task, but not its presigned download URI, nor the
    signed URL its result_message may quote."""
    import shutil

    from vl_datasets.records import ExportTask

    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    store = CacheStore(tmp_path)
    answer = {
        "id": "t",
        "status": "COMPLETED",
        "download_uri": "https://bucket/x.zip?X-Amz-Signature=Q9zSECRET-uri",
        "result_message": "done; its log: https://bucket/log?X-Amz-Signature=Q9zSECRET-log",
    }
    task = ExportTask.from_json(answer, dataset_id="ds-ready")
    with store.staging(entry.entry_dir) as staging:
        shutil.copytree(entry.path, staging, dirs_exist_ok=True)
        version = store.publish(entry.entry_dir, staging, key=entry.key, task=task)
    manifest = (entry.entry_dir / f"{version.version}.manifest.json").read_text()
    assert "Q9zSECRET" not in manifest and "done; its log: https://bucket/log?[redacted]" in manifest


def test_dataset_ids_cannot_take_reserved_names(quick_vl, quick_client, tmp_path, dataset_root):
    from vl_datasets.testing import write_dataset

    for name in ("opened", "mirrors", "exports", "CACHEDIR.TAG"):
        write_dataset(dataset_root, name, n_items=2)
        entry = fetch_export(name, client=quick_client, cache_dir=tmp_path, include_images=False)
        assert entry.path.is_relative_to(tmp_path / "exports"), f"dataset {name!r} landed outside exports/"
    assert (tmp_path / "CACHEDIR.TAG").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CACHEDIR.TAG", "exports"]


def test_killed_build_leftovers_are_listed_and_collected(quick_vl, quick_client, tmp_path, capsys):
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    orphan = entry.entry_dir / "v20990101T000000-deadbeef"  # moved into place, manifest never written
    orphan.mkdir()
    (orphan / "metadata.parquet").write_bytes(b"x")
    staging = entry.entry_dir / ".staging-1-abcdef12"
    staging.mkdir()
    assert CacheStore(tmp_path).lookup(entry.key) == entry, "an unmanifested version must not count"
    assert main(["cache", "list", "--all", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert str(orphan) in listing
    assert str(staging) in listing
    fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert not orphan.exists() and not staging.exists(), "the next build of the key must collect leftovers"
    staging.mkdir()
    assert main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert not staging.exists(), "cache prune must collect leftovers"


def test_a_task_record_is_read_back_only_for_its_own_key(tmp_path):
    from vl_datasets.cache.store import ExportKey

    store = CacheStore(tmp_path)
    parquet = ExportKey.build("http://vl", "ds", "parquet", True)
    record = store.task_record(parquet)
    assert record.read() is None
    record.write("task-1")
    assert store.task_record(parquet).read() == "task-1"
    json_key = ExportKey.build("http://vl", "ds", "json", True)
    other = store.task_record(json_key)
    other.path.parent.mkdir(parents=True, exist_ok=True)
    other.path.write_bytes(record.path.read_bytes())  # a record that names another key
    assert other.read() is None, "a task started for another key must not be resumed"
    chunk = store.task_record(parquet, chunk=3)
    chunk.write("task-2")
    assert chunk.read() == "task-2" and chunk.path.parent == store.work_area(parquet)
    record.clear()
    chunk.clear()
    assert record.read() is None and chunk.read() is None


@pytest.mark.parametrize("source", ["download", "folder"])
def test_a_versions_content_is_named_by_its_metadata_files_digest_read_once(
    quick_vl, quick_client, tmp_path, monkeypatch, source
):
    """The metadata's SHA-256 names the version's content on every machine, for the stores shared
    between them. It is read when first asked for, not at publish, and kept: every later process
    that asks reads it from the version's folder, not the whole metadata file again."""
    import hashlib

    from vl_datasets.cache import layout
    from vl_datasets.cache.opened import open_export

    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path / "cache")
    if source == "folder":
        entry = open_export(entry.path, cache_dir=tmp_path / "opened")
    digest = hashlib.sha256(entry.metadata_path.read_bytes()).hexdigest()
    assert entry.metadata_digest is None  # not read at publish
    assert layout.content_name(entry) == f"m{digest[:16]}"

    def read_again(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(layout, "file_sha256", read_again)
    store = CacheStore(tmp_path / ("opened" if source == "folder" else "cache"))
    again = store.read_version(store.manifest_of(entry))
    assert again is not None and layout.content_name(again) == f"m{digest[:16]}"


def test_a_version_whose_manifest_recorded_the_digest_is_named_by_it(quick_vl, quick_client, tmp_path):
    """Versions published while the digest was read at publish keep the name their stores have."""
    from dataclasses import replace

    from vl_datasets.cache.layout import content_name

    entry = _opened_folder(quick_client, tmp_path)
    assert content_name(replace(entry, metadata_digest="ab" * 32)) == "m" + "ab" * 8


def test_a_folders_metadata_changed_since_it_was_opened_is_not_named(quick_vl, quick_client, tmp_path):
    """An opened folder's metadata lies outside the cache: once it changed, its digest would name
    a state the version does not hold, so naming the version's content is refused."""
    import os

    from vl_datasets.cache.layout import content_name

    entry = _opened_folder(quick_client, tmp_path)
    stat = entry.metadata_path.stat()
    os.utime(entry.metadata_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(errors.CacheError, match="changed since version"):
        content_name(entry)
    assert not list(tmp_path.rglob(".vl_datasets_metadata.sha256")), "a digest of the changed file was kept"


def _opened_folder(client, tmp_path):
    """A version published from an export folder the user holds (one fetched, then opened)."""
    from vl_datasets.cache.opened import open_export

    fetched = fetch_export("ds-ready", client=client, cache_dir=tmp_path / "fetched")
    return open_export(fetched.path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("dataset_id", [".", "..", "...", ""])
def test_a_dataset_id_of_dots_keeps_its_entry_under_exports(tmp_path, dataset_id):
    """'exports/../<digest>' would put the entry beside exports/, where no listing looks for it."""
    from vl_datasets.cache.opened import local_store

    store = local_store(tmp_path / "cache")
    entry_dir = store.entry_dir(ExportKey.build("http://vl", dataset_id, "parquet", True)).resolve()
    assert entry_dir.parent.parent == (tmp_path / "cache" / "exports").resolve()


@pytest.mark.parametrize(
    "selection",
    [{}, {"media_ids": ["b", "a", "b"]}, {"cluster_ids": ["c"]}],
    ids=["whole", "media ids", "cluster ids"],
)
def test_an_entrys_name_is_the_one_earlier_versions_gave_it(selection):
    """Entries cached by earlier versions are found by the same name: the hash of the key's
    fields as sorted, compact JSON, whichever way the key is built or copied."""
    key = ExportKey.build("https://app.visual-layer.com", "ds-1", "parquet", True, **selection)
    blob = json.dumps(dataclasses.asdict(key), sort_keys=True, separators=(",", ":"))
    assert key.digest == hashlib.sha256(blob.encode()).hexdigest()[:20]
    copied = pickle.loads(pickle.dumps(key))
    assert copied == key and copied.digest == key.digest
    moved = key.on_host("other:1")
    assert moved.digest != key.digest and moved.on_host(key.api_host).digest == key.digest
