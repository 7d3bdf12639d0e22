"""fetch_export and the cache against the local service (and a real S3 API on loopback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from vl_datasets import Client, errors, fetch_export
from vl_datasets.cache.archive import ArchiveLimits, extract_archive
from vl_datasets.cache.store import CacheStore, ExportKey
from vl_datasets.cli import main
from vl_datasets.locks import hold_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_vl(quick_vl):
    """Subprocesses and the CLI wait with real sleeps: use the service whose exports finish at once."""
    return quick_vl


@pytest.fixture
def client(quick_client):
    return quick_client


def downloads(service) -> int:
    return sum(1 for r in service.requests if r.origin == "storage" and r.status in (200, 206))


def test_cold_fetch_publishes_a_complete_entry(local_vl, client, tmp_path):
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert entry.metadata_path == entry.path / "metadata.parquet" and entry.metadata_path.is_file()
    assert len([p for p in entry.images_dir.rglob("*.jpg")]) == 8
    assert entry.task.id and entry.task.entities_count == 8 and entry.row_count == 8
    assert entry.library_version and entry.created_at is not None
    manifest = json.loads((entry.entry_dir / f"{entry.version}.manifest.json").read_text())
    assert manifest["key"]["dataset_id"] == "ds-ready" and "download_uri" not in manifest["task"]
    assert local_vl.count("export") == 1 and downloads(local_vl) == 1
    leftovers = [p.name for p in entry.entry_dir.iterdir() if p.name.startswith((".staging", ".download"))]
    assert leftovers == [], "the build left work files behind"
    assert entry.index_path is not None and entry.index_path.is_file(), "the entry was published without its index"
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_warm_hit_makes_no_request(local_vl, client, tmp_path):
    first = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    local_vl.clear_requests()
    again = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert again == first and local_vl.requests == []


def test_key_covers_format_images_and_selection(local_vl, client, tmp_path, dataset_root):
    items = json.loads((dataset_root / "ds-ready" / "metadata.json").read_text())["media_items"]
    ids = [items[1]["media_id"], items[2]["media_id"]]
    full = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    as_json = fetch_export("ds-ready", client=client, cache_dir=tmp_path, export_format="json", include_images=False)
    picked = fetch_export("ds-ready", client=client, cache_dir=tmp_path, media_ids=ids)
    assert len({full.path, as_json.path, picked.path}) == 3
    assert as_json.metadata_path.name == "metadata.json" and as_json.images_dir is None
    assert picked.row_count == 2
    local_vl.clear_requests()
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path, media_ids=ids[::-1] + ids) == picked
    assert local_vl.requests == []


def test_refresh_replaces_the_entry_only_when_complete(local_vl, client, tmp_path):
    old = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    local_vl.faults.fail_exports(result_message="export service down")
    with pytest.raises(errors.ExportFailedError):
        fetch_export("ds-ready", client=client, cache_dir=tmp_path, refresh=True)
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path) == old  # untouched
    local_vl.faults.reset()
    new = fetch_export("ds-ready", client=client, cache_dir=tmp_path, refresh=True)
    assert new.task.id != old.task.id and new.path != old.path
    assert local_vl.count("export") == 3
    # The refresh published a new version; a job reading the old one keeps its files until a prune.
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path) == new
    assert old.metadata_path.is_file() and len(list(old.images_dir.rglob("*.jpg"))) == 8, "refresh deleted the old version"
    assert CacheStore(tmp_path).lookup(old.key, version=old.version) == old
    assert main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert not old.path.exists() and new.metadata_path.is_file(), "prune must drop only the superseded version"


def test_offline_hit_and_miss(local_vl, client, tmp_path, monkeypatch):
    with pytest.raises(errors.CacheMissError) as caught:
        fetch_export("ds-ready", client=client, cache_dir=tmp_path, offline=True)
    assert isinstance(caught.value, FileNotFoundError) and caught.value.key in str(caught.value)
    assert "ds-ready" in str(caught.value)
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    local_vl.clear_requests()
    monkeypatch.setenv("VL_DATASETS_OFFLINE", "1")
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path) == entry
    with pytest.raises(errors.CacheMissError):
        fetch_export("ds-ready", client=client, cache_dir=tmp_path, export_format="json")
    assert local_vl.requests == []


def test_refresh_with_the_api_down_keeps_the_entry(local_vl, client, tmp_path):
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    local_vl.faults.fail_next("export", 503, times=50)
    with pytest.raises(errors.ServerError):
        fetch_export("ds-ready", client=client, cache_dir=tmp_path, refresh=True)
    assert CacheStore(tmp_path).lookup(entry.key) == entry


def test_broken_download_resumes_and_ignored_range_restarts(local_vl, client, tmp_path):
    local_vl.faults.break_download_after(3000, times=2)
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert entry.row_count == 8
    ranges = [r.header("range") for r in local_vl.requests if r.origin == "storage"]
    assert ranges == [None, "bytes=3000-", "bytes=6000-"]
    local_vl.faults.break_download_after(3000)
    local_vl.faults.ignore_range()
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path, refresh=True).row_count == 8


def test_not_enough_disk_space_fails_before_downloading(local_vl, client, tmp_path, monkeypatch):
    import shutil as real_shutil

    from vl_datasets.api import download

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=100))
    with pytest.raises(errors.InsufficientDiskSpaceError, match="needs"):
        fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.incomplete")) or all(p.stat().st_size == 0 for p in tmp_path.rglob("*.incomplete"))
    assert not list(tmp_path.rglob("*.manifest.json"))


def test_lock_wait_times_out_with_a_clear_error(local_vl, client, tmp_path):
    key = ExportKey.build(client.base_url, "ds-ready", "parquet", True)
    store = CacheStore(tmp_path)
    store.entry_dir(key).mkdir(parents=True)
    with hold_lock(store.lock_path(store.entry_dir(key)), timeout_s=1, what="test"):
        code = ("import sys; from vl_datasets import Client, fetch_export\n"
                f"fetch_export('ds-ready', client=Client({local_vl.url!r}, progress=False), "
                f"cache_dir={str(tmp_path)!r}, lock_timeout_s=0.3)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                env=_child_env())
    assert result.returncode != 0 and "LockTimeoutError" in result.stderr and ".lock" in result.stderr
    assert local_vl.count("export") == 0


def test_damaged_manifest_is_not_an_entry(local_vl, client, tmp_path):
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    manifest = entry.entry_dir / f"{entry.version}.manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert CacheStore(tmp_path).lookup(entry.key) is None
    assert fetch_export("ds-ready", client=client, cache_dir=tmp_path).row_count == 8
    assert local_vl.count("export") == 2


def test_row_count_must_match_the_task(local_vl, client, tmp_path):
    import shutil

    from vl_datasets.records import ExportTask

    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    store = CacheStore(tmp_path)
    task = ExportTask(id="t", dataset_id="ds-ready", status="COMPLETED", entities_count=9)
    with store.staging(entry.entry_dir) as staging:
        shutil.copytree(entry.path, staging, dirs_exist_ok=True)
        with pytest.raises(errors.CorruptArchiveError, match="announced 9"):
            store.publish(entry.entry_dir, staging, key=entry.key, task=task, expected_rows=task.entities_count)
    assert store.versions(entry.entry_dir) == [entry], "a refused version must not be published"


# -- many processes ---------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _fetch_code(url: str, cache_dir: Path) -> str:
    return ("from vl_datasets import Client, fetch_export\n"
            f"entry = fetch_export('ds-ready', client=Client({url!r}, progress=False), cache_dir={str(cache_dir)!r})\n"
            "print(entry.path, flush=True)\n")


def test_concurrent_processes_share_one_export(local_vl, tmp_path):
    local_vl.faults.hold_exports(seconds=1.0)  # keep the export running while the others arrive
    procs = [subprocess.Popen([sys.executable, "-c", _fetch_code(local_vl.url, tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_child_env()) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1 and Path(paths.pop()).is_dir()
    assert local_vl.count("export") == 1 and downloads(local_vl) == 1


def test_killed_fetch_resumes_its_export_and_download(local_vl, tmp_path):
    local_vl.faults.stall_download_after(2000, seconds=30)
    proc = subprocess.Popen([sys.executable, "-c", _fetch_code(local_vl.url, tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_child_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        partials = list(tmp_path.rglob("*.incomplete"))
        if partials and partials[0].stat().st_size >= 2000:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail(f"the fetch never got 2000 bytes in: {proc.communicate()}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    local_vl.faults.reset()
    client = Client(local_vl.url, progress=False, env={})
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert entry.row_count == 8
    assert local_vl.count("export") == 1  # the killed run's export was resumed, not restarted
    ranges = [r.header("range") for r in local_vl.requests if r.origin == "storage"]
    assert ranges == [None, "bytes=2000-"]


# -- unsafe and corrupt archives --------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize("members,symlink", [
    ({"/abs/evil.txt": b"x"}, None),
    ({"../evil.txt": b"x"}, None),
    ({"images/../../evil.txt": b"x"}, None),
    ({"C:/evil.txt": b"x"}, None),
    ({"metadata.json": b"{}"}, "images/link.jpg"),
])
def test_unsafe_archives_are_refused_and_write_nothing(tmp_path, members, symlink):
    archive = _zip(tmp_path / "bad.zip", members, symlink=symlink)
    staging = tmp_path / "work" / "staging"
    with pytest.raises(errors.UnsafeArchiveError):
        extract_archive(archive, staging)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert not staging.exists() or not any(staging.rglob("*"))


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"metadata.json": b"\0" * 2_000_000})
    with pytest.raises(errors.UnsafeArchiveError, match="bomb"):
        extract_archive(bomb, tmp_path / "a", limits=ArchiveLimits(ratio_applies_above_bytes=1_000_000))
    many = _zip(tmp_path / "many.zip", {f"images/{i}.jpg": b"x" for i in range(5)})
    with pytest.raises(errors.UnsafeArchiveError, match="members"):
        extract_archive(many, tmp_path / "b", limits=ArchiveLimits(max_members=3))
    with pytest.raises(errors.UnsafeArchiveError, match="unpack"):
        extract_archive(many, tmp_path / "c", limits=ArchiveLimits(max_total_bytes=2))


def test_corrupt_archives_raise_a_typed_error_naming_the_file(tmp_path):
    good = _zip(tmp_path / "good.zip", {"metadata.json": b'{"media_items": []}' * 100})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(errors.CorruptArchiveError, match="truncated.zip"):
        extract_archive(truncated, tmp_path / "t")
    stored = tmp_path / "crc.zip"
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", b"A" * 1000)
    data = bytearray(stored.read_bytes())
    data[data.index(b"AAAA") + 10] = ord("B")  # flip a byte of the member's data
    stored.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptArchiveError, match="crc.zip"):
        extract_archive(stored, tmp_path / "c")


# -- a cache root on object storage -----------------------------------------------------------


@pytest.fixture
def s3_root(monkeypatch):
    import fsspec.config
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "skip_instance_cache": True})
    assert requests.put(f"{endpoint}/shared-bucket", timeout=10).status_code == 200
    yield "s3://shared-bucket/vl-cache"
    server.stop()


def test_shared_object_storage_root_serves_a_second_machine(local_vl, s3_root, tmp_path, monkeypatch):
    client = Client(local_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-a"))
    first = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert str(first.path).startswith(str(tmp_path / "machine-a"))
    local_vl.clear_requests()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine-b"))
    second = fetch_export("ds-ready", client=client, cache_dir=s3_root)
    assert local_vl.requests == []  # no export, no download: it came from object storage
    assert str(second.path).startswith(str(tmp_path / "machine-b"))
    assert second.task.id == first.task.id and second.row_count == 8
    assert len(list(second.images_dir.rglob("*.jpg"))) == 8
    assert second.metadata_path.read_bytes() == first.metadata_path.read_bytes()


def test_memory_filesystem_root_works_too(local_vl, tmp_path, monkeypatch):
    client = Client(local_vl.url, progress=False, env={})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a"))
    fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    local_vl.clear_requests()
    entry = fetch_export("ds-ready", client=client, cache_dir="memory://vl-test-cache", include_images=False)
    assert entry.row_count == 8 and local_vl.requests == []


# -- command line -----------------------------------------------------------------------------


def test_cli_export_list_rm_prune(local_vl, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VL_API_URL", local_vl.url)
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    cache = str(tmp_path / "cache")
    assert main(["export", "ds-ready", "--cache-dir", cache]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert (path / "metadata.parquet").is_file()
    assert main(["export", "ds-ready", "--format", "json", "--no-images", "--cache-dir", cache]) == 0
    capsys.readouterr()
    assert main(["cache", "list", "--cache-dir", cache]) == 0
    listing = capsys.readouterr().out
    assert listing.count("ds-ready") == 2 and "parquet" in listing and "json" in listing
    key = ExportKey.build(local_vl.url, "ds-ready", "json", False).digest
    assert main(["cache", "rm", key[:8], "--cache-dir", cache]) == 0
    assert main(["cache", "rm", "--dataset", "ds-ready", "--cache-dir", cache]) == 0
    assert main(["export", "ds-ready", "--cache-dir", cache]) == 0
    assert main(["cache", "prune", "--max-size", "0", "--cache-dir", cache]) == 0
    assert "pruned 1 of 1" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "1", "--cache-dir", cache]) == 0


@pytest.mark.parametrize("args,setup,code", [
    (["export", "nope"], None, 4),
    (["export", "ds-indexing"], None, 5),
    (["export", "ds-ready", "--offline"], None, 7),
    (["export", "ds-ready"], "fail", 6),
    (["cache", "rm", "nokey"], None, 2),
])
def test_cli_exit_codes_and_hints(local_vl, tmp_path, monkeypatch, capsys, args, setup, code):
    monkeypatch.setenv("VL_API_URL", local_vl.url)
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    if setup == "fail":
        local_vl.faults.fail_exports(result_message="too many entities")
    assert main(args + ["--cache-dir", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint: " in err and "Traceback" not in err


def test_cli_bad_credentials_and_unreachable_api(local_vl_auth, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VL_API_URL", local_vl_auth.url)
    monkeypatch.setenv("VL_API_KEY", "key-123")
    monkeypatch.setenv("VL_API_SECRET", "not-the-secret-0123456789abcdef0123")
    assert main(["export", "ds-ready", "--cache-dir", str(tmp_path)]) == 3
    assert "not-the-secret" not in capsys.readouterr().err
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VL_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("VL_API_KEY")
    monkeypatch.delenv("VL_API_SECRET")
    monkeypatch.setenv("VL_API_MAX_RETRIES", "0")
    assert main(["-v", "export", "ds-ready", "--cache-dir", str(tmp_path)]) == 8
    assert "Traceback" in capsys.readouterr().err


def test_lock_falls_back_to_a_soft_lock_without_flock(tmp_path, monkeypatch):
    import filelock

    from vl_datasets import locks

    class NoFlock(filelock.FileLock):
        def _acquire(self):
            raise NotImplementedError("flock not supported on this filesystem")

    monkeypatch.setattr(locks.filelock, "FileLock", NoFlock)
    path = tmp_path / "entry.lock"
    with locks.hold_lock(path, timeout_s=5, what="test"):
        assert Path(str(path) + ".soft").exists()
        with pytest.raises(errors.LockTimeoutError, match="entry.lock"):
            with locks.hold_lock(path, timeout_s=0.2, what="test"):
                pass
    assert not Path(str(path) + ".soft").exists()


# -- layout, versions, hosts ------------------------------------------------------------------


def test_offline_finds_an_entry_from_any_host_when_none_is_asked_for(local_vl, client, tmp_path, monkeypatch,
                                                                     caplog):
    monkeypatch.delenv("VL_API_URL", raising=False)
    filled = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    local_vl.clear_requests()
    assert fetch_export("ds-ready", cache_dir=tmp_path, offline=True) == filled, \
        "an offline lookup with no host asked for must find the entry cached from 127.0.0.1"
    # Asked for another host explicitly: a miss that names the host that has it, and VL_API_URL.
    monkeypatch.setenv("VL_API_URL", local_vl.url.replace("127.0.0.1", "localhost"))
    with pytest.raises(errors.CacheMissError) as caught:
        fetch_export("ds-ready", cache_dir=tmp_path, offline=True)
    assert "VL_API_URL" in str(caught.value) and filled.key.api_host in str(caught.value)
    # Filled from a second host too: the newest wins, and a warning names both hosts.
    fetch_export("ds-ready", client=Client(os.environ["VL_API_URL"], progress=False, env={}), cache_dir=tmp_path)
    monkeypatch.delenv("VL_API_URL")
    with caplog.at_level("WARNING", logger="vl_datasets"):
        newest = fetch_export("ds-ready", cache_dir=tmp_path, offline=True)
    assert newest.key.api_host.startswith("localhost")
    assert "127.0.0.1" in caplog.text and "localhost" in caplog.text
    assert local_vl.count("export") == 1, "offline lookups must not call the API"


def test_dataset_ids_cannot_take_reserved_names(local_vl, client, tmp_path, dataset_root):
    from vl_datasets.testing import write_dataset

    for name in ("opened", "mirrors", "exports", "CACHEDIR.TAG"):
        write_dataset(dataset_root, name, n_items=2)
        entry = fetch_export(name, client=client, cache_dir=tmp_path, include_images=False)
        assert entry.path.is_relative_to(tmp_path / "exports"), f"dataset {name!r} landed outside exports/"
    assert (tmp_path / "CACHEDIR.TAG").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CACHEDIR.TAG", "exports"]


def test_killed_build_leftovers_are_listed_and_collected(local_vl, client, tmp_path, capsys):
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    orphan = entry.entry_dir / "v20990101T000000-deadbeef"  # moved into place, manifest never written
    orphan.mkdir()
    (orphan / "metadata.parquet").write_bytes(b"x")
    staging = entry.entry_dir / ".staging-1-abcdef12"
    staging.mkdir()
    assert CacheStore(tmp_path).lookup(entry.key) == entry, "an unmanifested version must not count"
    assert main(["cache", "list", "--all", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    assert str(orphan) in listing and str(staging) in listing
    fetch_export("ds-ready", client=client, cache_dir=tmp_path, refresh=True)
    assert not orphan.exists() and not staging.exists(), "the next build of the key must collect leftovers"
    staging.mkdir()
    assert main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert not staging.exists(), "cache prune must collect leftovers"


def test_cache_list_shows_hosts_and_mirrored_entries(local_vl, s3_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "machine"))
    monkeypatch.delenv("VL_DATASETS_CACHE", raising=False)
    client = Client(local_vl.url, progress=False, env={})
    fetch_export("ds-ready", client=client, cache_dir=s3_root, include_images=False)
    fetch_export("ds-ready", client=client, cache_dir=tmp_path / "machine" / "vl_datasets")
    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    host = ExportKey.build(local_vl.url, "ds-ready", "parquet", True).api_host
    assert listing.count(host) == 2, f"the local and the mirrored entry should both be listed:\n{listing}"
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert "pruned 2 of 2" in capsys.readouterr().out


def test_opening_a_folder_writes_nothing_into_it(tmp_path):
    from vl_datasets.cache.opened import open_export
    from vl_datasets.testing import write_dataset

    folder = tmp_path / "export"
    write_dataset(folder.parent, folder.name, n_items=4)
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    entry = open_export(folder, cache_dir=tmp_path / "cache")
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before, "open_export wrote into the folder"
    assert entry.path == folder and entry.index_path.is_relative_to(tmp_path / "cache" / "opened")
    assert open_export(folder, cache_dir=tmp_path / "cache") == entry, "a second open must reuse the index"
    # The user edits the metadata: the stale index is not reused.
    metadata = folder / "metadata.json"
    metadata.write_text(metadata.read_text().replace('"media_items"', '"media_items" '))
    assert open_export(folder, cache_dir=tmp_path / "cache").version != entry.version


def test_side_imports_run_one_way(tmp_path):
    """import vl_datasets loads no network library; opening a local export loads none either."""
    from vl_datasets.testing import write_dataset

    write_dataset(tmp_path, "export", n_items=3)
    # tqdm is not checked after the open: torch itself imports it.
    network = ("requests", "urllib3", "jwt", "fsspec", "vl_datasets.api.client", "vl_datasets.api.transport")
    code = ("import sys\n"
            "import vl_datasets\n"
            f"print(sorted(m for m in {network + ('tqdm', 'torch')!r} if m in sys.modules))\n"
            "from vl_datasets import VisualLayerDataset\n"
            f"ds = VisualLayerDataset.from_export({str(tmp_path / 'export')!r}, cache_dir={str(tmp_path / 'c')!r})\n"
            "assert len(ds) == 3\n"
            f"print(sorted(m for m in {network!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=_child_env())
    assert result.returncode == 0, result.stderr
    after_import, after_open = result.stdout.split("\n")[:2]
    assert after_import == "[]", f"import vl_datasets loaded {after_import}"
    assert after_open == "[]", f"opening a local export loaded {after_open}"


def test_a_cached_dataset_opens_without_the_api_side(local_vl, client, tmp_path):
    fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    code = ("import sys\n"
            "from vl_datasets import VisualLayerDataset\n"
            f"ds = VisualLayerDataset('ds-ready', cache_dir={str(tmp_path)!r})\n"
            "assert len(ds) == 8\n"
            "print(sorted(m for m in ('requests', 'urllib3', 'jwt', 'vl_datasets.api.client') if m in sys.modules))\n")
    env = {**_child_env(), "VL_API_URL": local_vl.url}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"a cache hit loaded the API side: {result.stdout}"
    assert local_vl.count("export") == 1


def test_metadata_and_loading_never_import_the_api_side():
    """Imports run one way: the metadata and loading sides may import the cache, never the API."""
    import ast

    package = REPO / "vl_datasets"
    offenders = []
    for side in ("metadata", "loading", "cache"):
        for module in (package / side).glob("*.py"):
            tree = ast.parse(module.read_text())
            # Names imported for type checking only never load at run time.
            typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                           and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and (node.module or "").startswith("api"):
                    offenders.append(f"{side}/{module.name}: from {'.' * node.level}{node.module}")
    assert offenders == [], f"these modules import the API side: {offenders}"
