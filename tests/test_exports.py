"""fetch_export against the local service: cold and warm fetches, the key, refresh, offline, resumes, many processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import change_dataset, child_env
from tests.waits import Child, run_child
from vl_datasets import Client, errors, fetch_export
from vl_datasets.cache import store as store_module
from vl_datasets.cache.store import CacheStore, ExportKey
from vl_datasets.cli import main
from vl_datasets.locks import hold_lock


def downloads(service) -> int:
    return sum(1 for r in service.requests if r.origin == "storage" and r.status in (200, 206))


def test_cold_fetch_publishes_a_complete_entry(quick_vl, quick_client, tmp_path):
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert entry.metadata_path == entry.path / "metadata.parquet"
    assert entry.metadata_path.is_file()
    assert len(list(entry.images_dir.rglob("*.jpg"))) == 8
    assert entry.task.id
    assert entry.task.entities_count == 8
    assert entry.row_count == 8
    assert entry.library_version
    assert entry.created_at is not None
    manifest = json.loads((entry.entry_dir / f"{entry.version}.manifest.json").read_text())
    assert manifest["key"]["dataset_id"] == "ds-ready"
    assert "download_uri" not in manifest["task"]
    assert quick_vl.count("export") == 1
    assert downloads(quick_vl) == 1
    leftovers = [p.name for p in entry.entry_dir.iterdir() if p.name.startswith((".staging", ".download"))]
    assert leftovers == [], "the build left work files behind"
    assert entry.index_path is not None and entry.index_path.is_file(), "the entry was published without its index"
    assert (tmp_path / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_an_entities_count_other_than_the_rows_is_kept_and_said(quick_vl, quick_client, tmp_path, caplog):
    """The contract does not say what a task's entities_count counts (objects too? the ids asked
    for?): a good export whose count differs is cached, with a warning naming both, not refused."""
    quick_vl.faults.miscount_entities(by=3)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert entry.row_count == 8 and entry.task.entities_count == 11
    assert "announced 11 entities; its metadata holds 8 media items" in caplog.text
    quick_vl.clear_requests()
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path) == entry and quick_vl.requests == []


def test_warm_hit_makes_no_request(quick_vl, quick_client, tmp_path):
    first = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.clear_requests()
    again = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert again == first
    assert quick_vl.requests == []


def test_key_covers_format_images_and_selection(quick_vl, quick_client, tmp_path, dataset_root):
    items = json.loads((dataset_root / "ds-ready" / "metadata.json").read_text())["media_items"]
    ids = [items[1]["media_id"], items[2]["media_id"]]
    full = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    as_json = fetch_export(
        "ds-ready", client=quick_client, cache_dir=tmp_path, export_format="json", include_images=False
    )
    picked = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, media_ids=ids)
    assert len({full.path, as_json.path, picked.path}) == 3
    assert as_json.metadata_path.name == "metadata.json"
    assert as_json.images_dir is None
    assert picked.row_count == 2
    quick_vl.clear_requests()
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, media_ids=ids[::-1] + ids) == picked
    assert quick_vl.requests == []


def test_refresh_replaces_the_entry_only_when_complete(quick_vl, quick_client, tmp_path):
    old = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.faults.fail_exports(result_message="export service down")
    with pytest.raises(errors.ExportFailedError):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path) == old  # untouched
    quick_vl.faults.reset()
    new = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert new.task.id != old.task.id
    assert new.path != old.path
    assert quick_vl.count("export") == 3
    # The refresh published a new version; a job reading the old one keeps its files until a prune.
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path) == new
    assert old.metadata_path.is_file() and len(list(old.images_dir.rglob("*.jpg"))) == 8, (
        "refresh deleted the old version"
    )
    assert CacheStore(tmp_path).lookup(old.key, version=old.version) == old
    assert main(["cache", "prune", "--cache-dir", str(tmp_path)]) == 0
    assert not old.path.exists() and new.metadata_path.is_file(), "prune must drop only the superseded version"


def test_a_refresh_never_resumes_a_task_recorded_before_it(tmp_path):
    from vl_datasets.testing import LocalVisualLayer, write_dataset

    write_dataset(tmp_path / "datasets", "ds", n_items=8)
    with LocalVisualLayer(tmp_path / "datasets", export_polls=0) as service:
        client = Client(service.url, progress=False, env={}, sleep=lambda s: None)
        old = fetch_export("ds", client=client, cache_dir=tmp_path / "cache")
        service.faults.fail_next("export_status", 503, times=50)  # a refresh starts its task, then its polls fail
        with pytest.raises(errors.ServerError):
            fetch_export("ds", client=client, cache_dir=tmp_path / "cache", refresh=True)
        service.faults.reset()
        change_dataset(tmp_path / "datasets", "ds", remove=3)
        new = fetch_export("ds", client=client, cache_dir=tmp_path / "cache", refresh=True)
    assert old.row_count == 8 and new.row_count == 5, "the refresh resumed a task started before it was asked for"


def test_a_refresh_is_not_judged_by_a_clock_that_ran_ahead(quick_vl, quick_client, tmp_path, dataset_root, monkeypatch):
    """A version published while this machine's clock ran an hour ahead (NTP stepped it back since,
    or the cache came from another machine) is still the one a refresh replaces: the refresh exports
    anew, and its version, not the old one, is the newest from then on."""
    real_clock = store_module._utcnow
    monkeypatch.setattr(store_module, "_utcnow", lambda: real_clock() + timedelta(hours=1))
    old = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    monkeypatch.setattr(store_module, "_utcnow", real_clock)
    change_dataset(dataset_root, "ds-ready", remove=3)
    new = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert quick_vl.count("export") == 2, "the refresh returned the old version without exporting"
    assert (old.row_count, new.row_count) == (8, 5)
    assert new.created_at > old.created_at, "a new version ranks below the one it replaces"
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path) == new


def test_offline_hit_and_miss(quick_vl, quick_client, tmp_path, monkeypatch):
    with pytest.raises(errors.CacheMissError) as caught:
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, offline=True)
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.key in str(caught.value)
    assert "ds-ready" in str(caught.value)
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.clear_requests()
    monkeypatch.setenv("VL_DATASETS_OFFLINE", "1")
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path) == entry
    with pytest.raises(errors.CacheMissError):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, export_format="json")
    assert quick_vl.requests == []


def test_offline_with_refresh_is_refused_as_contradictory(quick_vl, quick_client, tmp_path):
    """It said 'It is cached from <the very host asked>: set VL_API_URL to that host'."""
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.clear_requests()
    with pytest.raises(errors.ConfigurationError, match="refresh=True starts a new export, which offline=True"):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, offline=True, refresh=True)
    assert quick_vl.requests == []
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, offline=True) == entry


def test_refresh_with_the_api_down_keeps_the_entry(quick_vl, quick_client, tmp_path):
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.faults.fail_next("export", 503, times=50)
    with pytest.raises(errors.ServerError):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True)
    assert CacheStore(tmp_path).lookup(entry.key) == entry


@pytest.mark.parametrize("status", [404, 410, 422])
def test_a_recorded_task_the_server_forgot_is_started_again(quick_vl, quick_client, tmp_path, status):
    quick_vl.faults.fail_next("export_status", 503, times=50)  # the task starts, then its polls fail
    with pytest.raises(errors.ServerError):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert quick_vl.count("export") == 1
    quick_vl.faults.reset()
    quick_vl.faults.fail_next("export_status", status)  # the recorded task is gone
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path).row_count == 8
    assert quick_vl.count("export") == 2, "the forgotten task should be started again, once"


def test_a_recorded_task_is_resumed_while_the_server_has_it(quick_vl, quick_client, tmp_path):
    quick_vl.faults.fail_next("export_status", 503, times=50)
    with pytest.raises(errors.ServerError):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.faults.reset()
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path).row_count == 8
    assert quick_vl.count("export") == 1, "the recorded task should be resumed, not started again"


def test_broken_download_resumes_and_ignored_range_restarts(quick_vl, quick_client, tmp_path):
    quick_vl.faults.break_download_after(3000, times=2)
    entry = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert entry.row_count == 8
    ranges = [r.header("range") for r in quick_vl.requests if r.origin == "storage"]
    assert ranges == [None, "bytes=3000-", "bytes=6000-"]
    quick_vl.faults.break_download_after(3000)
    quick_vl.faults.ignore_range()
    assert fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, refresh=True).row_count == 8


def test_lock_wait_times_out_with_a_clear_error(quick_vl, quick_client, tmp_path):
    key = ExportKey.build(quick_client.base_url, "ds-ready", "parquet", True)
    store = CacheStore(tmp_path)
    store.entry_dir(key).mkdir(parents=True)
    with hold_lock(store.lock_path(store.entry_dir(key)), timeout_s=1, what="test"):
        code = (
            "import sys; from vl_datasets import Client, fetch_export\n"
            f"fetch_export('ds-ready', client=Client({quick_vl.url!r}, progress=False), "
            f"cache_dir={str(tmp_path)!r}, lock_timeout_s=0.3)"
        )
        result = run_child([sys.executable, "-c", code], env=child_env())
    assert result.returncode != 0, "the fetch did not give up waiting for the held lock"
    assert "LockTimeoutError" in result.stderr
    assert ".lock" in result.stderr
    assert quick_vl.count("export") == 0


def test_offline_finds_an_entry_from_any_host_when_none_is_asked_for(
    quick_vl, quick_client, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("VL_API_URL", raising=False)
    filled = fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    quick_vl.clear_requests()
    assert fetch_export("ds-ready", cache_dir=tmp_path, offline=True) == filled, (
        "an offline lookup with no host asked for must find the entry cached from 127.0.0.1"
    )
    # Asked for another host explicitly: a miss that names the host that has it, and VL_API_URL.
    monkeypatch.setenv("VL_API_URL", quick_vl.url.replace("127.0.0.1", "localhost"))
    with pytest.raises(errors.CacheMissError) as caught:
        fetch_export("ds-ready", cache_dir=tmp_path, offline=True)
    assert "VL_API_URL" in str(caught.value)
    assert filled.key.api_host in str(caught.value)
    # Filled from a second host too: the newest wins, and a warning names both hosts.
    fetch_export("ds-ready", client=Client(os.environ["VL_API_URL"], progress=False, env={}), cache_dir=tmp_path)
    monkeypatch.delenv("VL_API_URL")
    with caplog.at_level("WARNING", logger="vl_datasets"):
        newest = fetch_export("ds-ready", cache_dir=tmp_path, offline=True)
    assert newest.key.api_host.startswith("localhost")
    assert "127.0.0.1" in caplog.text
    assert "localhost" in caplog.text
    assert quick_vl.count("export") == 1, "offline lookups must not call the API"


# -- many processes ---------------------------------------------------------------------------


def _fetch_code(url: str, cache_dir: Path) -> str:
    return (
        "from vl_datasets import Client, fetch_export\n"
        f"entry = fetch_export('ds-ready', client=Client({url!r}, progress=False), cache_dir={str(cache_dir)!r})\n"
        "print(entry.path, flush=True)\n"
    )


def test_concurrent_processes_share_one_export(quick_vl, tmp_path):
    quick_vl.faults.hold_exports(seconds=1.0)  # keep the export running while the others arrive
    fetches = [Child([sys.executable, "-c", _fetch_code(quick_vl.url, tmp_path)], env=child_env()) for _ in range(4)]
    try:
        codes = [fetch.wait("a concurrent fetch's end") for fetch in fetches]
        outputs = [(fetch.text(), fetch.text("stderr")) for fetch in fetches]
    finally:
        for fetch in fetches:
            fetch.close()
    assert codes == [0, 0, 0, 0], [err for _, err in outputs]
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert Path(paths.pop()).is_dir()
    assert quick_vl.count("export") == 1
    assert downloads(quick_vl) == 1


def test_killed_fetch_resumes_its_export_and_download(quick_vl, tmp_path):
    quick_vl.faults.stall_download_after(2000, seconds=30)
    with Child([sys.executable, "-c", _fetch_code(quick_vl.url, tmp_path)], env=child_env()) as fetch:

        def got_2000_bytes() -> bool:
            partials = list(tmp_path.rglob("*.incomplete"))
            return bool(partials) and partials[0].stat().st_size >= 2000

        fetch.until(got_2000_bytes, "the first 2000 bytes of the download")
        os.kill(fetch.pid, signal.SIGKILL)
        fetch.wait("the fetch's end after SIGKILL")
    quick_vl.faults.reset()
    client = Client(quick_vl.url, progress=False, env={})
    entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path)
    assert entry.row_count == 8
    assert quick_vl.count("export") == 1  # the killed run's export was resumed, not restarted
    ranges = [r.header("range") for r in quick_vl.requests if r.origin == "storage"]
    assert ranges == [None, "bytes=2000-"]


@pytest.mark.parametrize("value", [float("nan"), "3", True])
@pytest.mark.parametrize("setting", ["export_timeout_s", "lock_timeout_s"])
def test_a_timeout_that_is_no_number_is_refused_before_an_export_starts(
    quick_vl, quick_client, tmp_path, setting, value
):
    """Every comparison with NaN is false: the wait it bounds would never end. A str would fail
    only at the wait, once the export had started."""
    with pytest.raises(errors.ConfigurationError, match=setting):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path, **{setting: value})
    assert quick_vl.count("export") == 0
