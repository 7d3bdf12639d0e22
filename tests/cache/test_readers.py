"""A cached version a running job reads is left alone by ``cache prune`` and refused by ``cache rm``,
whichever process the job runs in, and goes once no job reads it; a job opening a version that a
prune removes meanwhile is told so."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time

import pytest

from tests.helpers import child_env
from tests.waits import Child
from vl_datasets import CacheMissError, VisualLayerDataset
from vl_datasets.cache.readers import reading_version, unread
from vl_datasets.cache.store import CacheStore
from vl_datasets.cli import main
from vl_datasets.testing import write_dataset

HOLD = """
import sys
from vl_datasets import VisualLayerDataset
ds = VisualLayerDataset.from_export(sys.argv[1], cache_dir=sys.argv[2], task=None)
print("open", ds.entry.version, flush=True)
sys.stdin.readline()  # reads on until told to stop
ds[0]
print("read", flush=True)
"""


@pytest.fixture
def export(tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")
    return write_dataset(tmp_path, "ds", n_items=6)


def open_files() -> list[str]:
    """What this process's file descriptors are open on (one closed meanwhile is left out)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def prune(cache, capsys, *options: str) -> str:
    assert main(["cache", "prune", *options, "--cache-dir", str(cache)]) == 0
    return capsys.readouterr().out


def test_prune_leaves_a_version_a_job_in_another_process_reads_then_takes_it_once_the_job_ends(
    export, tmp_path, capsys
):
    cache = tmp_path / "cache"
    command = [sys.executable, "-c", HOLD, str(export), str(cache)]
    with Child(command, env=child_env(), stdin=-1) as job:
        job.until(lambda: "open" in job.text(), "the job to open the export")
        version = job.text().split()[1]
        out = prune(cache, capsys, "--max-size", "0")
        assert f"a running job reads version {version}" in out and "pruned 0 of 1" in out, out
        assert main(["cache", "rm", "--dataset", "ds", "--cache-dir", str(cache)]) == 1
        assert f"a running job reads its version {version}" in capsys.readouterr().err
        job.process.stdin.write(b"go\n")
        job.process.stdin.close()
        assert job.wait("the job to read after the prune and the rm") == 0
        assert "read" in job.text(), job.report("the job's read after the prune")
    out = prune(cache, capsys, "--max-size", "0")
    assert "pruned 1 of 1" in out, out
    assert not list((cache).rglob("*.manifest.json"))


def test_a_superseded_version_is_pruned_once_the_dataset_reading_it_is_gone(export, tmp_path, capsys):
    cache = tmp_path / "cache"
    old = VisualLayerDataset.from_export(export, cache_dir=cache, task=None)
    metadata = old.entry.metadata_path
    later = metadata.stat().st_mtime + 10
    os.utime(metadata, (later, later))  # the folder's metadata changed: the next open is a new version
    new = VisualLayerDataset.from_export(export, cache_dir=cache, task=None)
    assert new.entry.version != old.entry.version
    out = prune(cache, capsys)
    reads = f"a running job reads version {old.entry.version}"
    assert f"skipped superseded version {old.entry.version} of {old.entry.entry_dir.name}" in out, out
    assert f"skipped items {old.entry.version}-" in out and out.count(reads) == 2, out
    assert old[0][0] is not None and len(old) == len(new)  # still read whole
    del old
    gc.collect()
    out = prune(cache, capsys)
    assert "removed superseded version" in out and "skipped" not in out, out
    assert [v.version for v in CacheStore(cache).versions(new.entry.entry_dir)] == [new.entry.version]
    assert new[0][0] is not None


def test_a_job_opening_a_version_a_prune_removes_meanwhile_is_told_so(export, tmp_path):
    cache = tmp_path / "cache"
    entry = VisualLayerDataset.from_export(export, cache_dir=cache, task=None).entry
    gc.collect()  # that dataset is gone: nothing reads the version
    raised: list[BaseException] = []

    def open_version() -> None:
        try:
            reading_version(entry)
        except BaseException as exc:
            raised.append(exc)

    with unread(entry.entry_dir, [entry.version]) as read:  # what a prune holds while it removes
        assert read == []
        opening = threading.Thread(target=open_version)
        opening.start()
        time.sleep(0.3)  # the opener waits on the prune's lock
        assert opening.is_alive(), "a job opened a version while a prune held it"
        CacheStore(cache).remove_version(entry)
    opening.join(timeout=60)
    assert not opening.is_alive(), "the opener still waits after the prune let go"
    assert len(raised) == 1 and isinstance(raised[0], CacheMissError), raised
    assert "was removed" in str(raised[0]) and "open the dataset again" in str(raised[0])


def test_a_dataset_pickles_without_the_lock_its_process_holds(export, tmp_path):
    import pickle

    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache", task=None)
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._reading is not None and "held=False" in repr(copy._reading)
    assert "held=True" in repr(ds._reading)


def test_datasets_of_one_version_in_a_process_share_one_readers_file(export, tmp_path, capsys):
    cache = tmp_path / "cache"
    datasets = [VisualLayerDataset.from_export(export, cache_dir=cache, task=None) for _ in range(5)]
    readers = str(datasets[0]._reading.path)
    assert open_files().count(readers) == 1, "each dataset of one version holds a descriptor of its own"
    del datasets[:4]
    gc.collect()
    assert "a running job reads version" in prune(cache, capsys, "--max-size", "0"), "the last dataset let go"
    datasets.clear()
    gc.collect()
    assert "pruned 1 of 1" in prune(cache, capsys, "--max-size", "0")


def test_the_readers_file_closes_without_the_modules_globals_as_at_the_interpreters_exit(export, tmp_path, monkeypatch):
    """At exit, Python may clear this module's globals before a dataset kept to the end goes:
    closing its readers file must not need them (before, each exit printed an ignored exception)."""
    from vl_datasets.cache import readers as readers_module

    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "cache", task=None)
    path = str(ds._reading.path)
    faults = []
    monkeypatch.setattr(sys, "unraisablehook", faults.append)
    monkeypatch.setattr(readers_module, "os", None)  # what the exit's teardown does to a module
    del ds
    gc.collect()
    monkeypatch.undo()
    assert not faults, f"closing the readers file raised: {faults[0].exc_value!r}"
    assert path not in open_files(), "the readers file stayed open"
