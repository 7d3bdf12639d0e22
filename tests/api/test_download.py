"""Downloads resume, restart, renew expired URLs and check the disk first; they leave nothing half-written
at the destination, and their lock lives elsewhere."""

from __future__ import annotations

import http.server
import os
import re
import tempfile
import threading
import zipfile

import pytest
import requests

from tests.api.helpers import export_and_download, make_client
from vl_datasets import Client, errors, fetch_export
from vl_datasets.api.download import lock_path, partial_path
from vl_datasets.locks import hold_lock
from vl_datasets.records import ExportTask


@pytest.fixture
def reference_zip(local_vl, client, tmp_path) -> tuple[ExportTask, bytes]:
    task, data = export_and_download(client, tmp_path / "ref")
    local_vl.clear_requests()
    return task, data


def _range_headers(service) -> list[str | None]:
    return [
        {k.lower(): v for k, v in r.headers.items()}.get("range") for r in service.requests if r.origin == "storage"
    ]


def test_broken_download_resumes_with_range(local_vl, client, reference_zip, tmp_path):
    task, expected = reference_zip
    local_vl.faults.break_download_after(1000, times=2)
    path = client.download_export(task, tmp_path / "a.zip")
    assert path.read_bytes() == expected
    assert _range_headers(local_vl) == [None, "bytes=1000-", "bytes=2000-"]


def test_a_stopped_download_keeps_its_bytes_for_the_next_to_resume(local_vl, client, reference_zip, tmp_path):
    """``stop`` (a chunked export ending) ends a download after the block of bytes under way."""
    task, expected = reference_zip
    local_vl.faults.stall_download_after(200, 60)  # 200 bytes, then nothing for a minute
    stop = threading.Event()
    stop.set()
    dest = tmp_path / "s.zip"
    with pytest.raises(errors.DownloadError, match="stopped at byte"):
        client.download_export(task, dest, stop=stop)
    local_vl.faults.reset()  # wakes the stalled answer
    kept = partial_path(dest, task.id).stat().st_size
    assert 0 < kept <= 200 and not dest.exists()
    assert client.download_export(task, dest).read_bytes() == expected
    assert _range_headers(local_vl) == [None, f"bytes={kept}-"]


@pytest.mark.parametrize("whatever_asked", [False, True], ids=["gzip when accepted", "gzip whatever asked"])
def test_an_archive_compressed_on_its_way_arrives_as_its_own_bytes(
    local_vl, client, reference_zip, tmp_path, whatever_asked
):
    """requests asked for gzip by default; a compressing proxy's Content-Length counted compressed
    bytes, and the whole archive was discarded as "0 bytes, expected 1234"."""
    task, expected = reference_zip
    local_vl.faults.compress_downloads(whatever_asked=whatever_asked)
    assert client.download_export(task, tmp_path / "a.zip").read_bytes() == expected
    [request] = [r for r in local_vl.requests if r.origin == "storage"]
    assert {k.lower(): v for k, v in request.headers.items()}["accept-encoding"] == "identity"


class _PrefixProxy(http.server.BaseHTTPRequestHandler):
    """An on-prem service published under /vl by a reverse proxy: /vl/X is the service's /X, and
    anything else is not found."""

    upstream = ""

    def do_GET(self) -> None:
        if not self.path.startswith("/vl/"):
            self.send_error(404)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        answer = requests.get(self.upstream + self.path[3:], headers=headers, allow_redirects=False, timeout=30)
        self.send_response(answer.status_code)
        for name in ("Content-Type", "Location"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: object) -> None:
        pass


def test_a_relative_download_uri_goes_after_the_whole_base_url_as_the_docs_clients_join_it(local_vl, tmp_path):
    """Behind a proxy at /vl, the on-prem "/cdn/..." was asked at the host's root: 404."""
    handler = type("Proxy", (_PrefixProxy,), {"upstream": local_vl.url})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{proxy.server_address[1]}/vl"
            client = Client(url, progress=False, env={}, sleep=lambda s: None)
            entry = fetch_export("ds-ready", client=client, cache_dir=tmp_path / "cache")
        finally:
            proxy.shutdown()
    assert entry.row_count == 8
    assert any(r.path.startswith("/cdn/") for r in local_vl.requests), "the download went elsewhere"


def test_ignored_range_restarts_from_zero(local_vl, client, reference_zip, tmp_path):
    task, expected = reference_zip
    local_vl.faults.break_download_after(1000, times=1)
    local_vl.faults.ignore_range()
    assert client.download_export(task, tmp_path / "b.zip").read_bytes() == expected


def test_a_resume_answered_from_another_byte_starts_the_whole_archive_again(local_vl, client, reference_zip, tmp_path):
    """A 206 from byte 100 to a 'bytes=1000-' was written as a fresh file: the right size, the
    wrong bytes (a ZIP that would not open)."""
    task, expected = reference_zip
    local_vl.faults.break_download_after(1000)
    local_vl.faults.misplace_range(100)
    path = client.download_export(task, tmp_path / "a.zip")
    assert path.read_bytes() == expected
    assert _range_headers(local_vl) == [None, "bytes=1000-", None]


@pytest.mark.parametrize("cut", [None, 2000])
def test_an_answer_that_is_no_zip_archive_is_not_saved_as_one(local_vl, client, reference_zip, tmp_path, cut):
    """An HTML page answered 200 (a proxy's login page), or an archive cut short with no length
    announced, was renamed into place as the archive and blamed on it at unpacking."""
    task, _ = reference_zip
    if cut is None:
        local_vl.faults.fail_next("storage", 200, body="<html>Sign in</html>", content_type="text/html")
    else:
        local_vl.faults.fail_next("storage", 200, body=reference_zip[1][:cut], content_type="application/zip")
    folder = tmp_path / "downloads"
    folder.mkdir()
    with pytest.raises(errors.DownloadError, match="is no ZIP archive") as caught:
        client.download_export(task, folder / "a.zip")
    assert ("sent as text/html" if cut is None else "sent as application/zip") in str(caught.value)
    assert os.listdir(folder) == [], "the answer was kept"


def test_download_that_keeps_breaking_leaves_nothing_at_dest_and_resumes_later(
    local_vl, fake_time, reference_zip, tmp_path
):
    task, expected = reference_zip
    dest = tmp_path / "c.zip"
    local_vl.faults.break_download_after(0, times=100)
    with make_client(local_vl, fake_time, max_retries=2) as client, pytest.raises(errors.DownloadError):
        client.download_export(task, dest)
    assert not dest.exists()
    local_vl.faults.reset()
    local_vl.faults.break_download_after(500)
    with make_client(local_vl, fake_time, max_retries=0) as client, pytest.raises(errors.DownloadError):
        client.download_export(task, dest)
    assert not dest.exists()
    local_vl.faults.reset()
    local_vl.clear_requests()
    with make_client(local_vl, fake_time) as client:  # a later run picks up the partial file
        assert client.download_export(task, dest).read_bytes() == expected
    assert _range_headers(local_vl) == ["bytes=500-"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".incomplete")]


def test_expired_presigned_url_is_renewed(dataset_root, fake_time, tmp_path):
    from vl_datasets.testing import LocalVisualLayer

    with (
        LocalVisualLayer(dataset_root, download_uri_style="absolute") as service,
        make_client(service, fake_time) as client,
    ):
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        assert task.download_uri.startswith(service.storage_url)
        service.faults.expire_urls(times=1)
        task = client.get_export_status("ds-ready", task.id)  # now holds an expired URL
        path = client.download_export(task, tmp_path / "d.zip")
        assert zipfile.ZipFile(path).testzip() is None
        statuses = [r.status for r in service.requests if r.origin == "storage"]
        assert statuses == [403, 200]


def test_relative_download_uri_is_joined_to_the_base_url(local_vl, client, reference_zip):
    task, _ = reference_zip
    assert task.download_uri.startswith("/")
    assert local_vl.count("cdn") == 0
    assert any(r.endpoint == "cdn" for r in local_vl.requests) is False


def test_download_refused_for_good_leaves_nothing(dataset_root, fake_time, tmp_path):
    from vl_datasets.testing import LocalVisualLayer

    with (
        LocalVisualLayer(dataset_root, download_uri_style="absolute") as service,
        make_client(service, fake_time) as client,
    ):
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        service.faults.fail_next("storage", 403, times=20)
        with pytest.raises(errors.DownloadError):
            client.download_export(task, tmp_path / "e.zip")
    assert not (tmp_path / "e.zip").exists()


def test_not_enough_disk_space_fails_before_downloading(quick_client, tmp_path, monkeypatch):
    import shutil as real_shutil

    from vl_datasets.api import download

    usage = real_shutil.disk_usage(tmp_path)
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage._replace(free=100))
    with pytest.raises(errors.InsufficientDiskSpaceError, match="needs"):
        fetch_export("ds-ready", client=quick_client, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.incomplete")) or all(
        p.stat().st_size == 0 for p in tmp_path.rglob("*.incomplete")
    ), (
        "bytes were downloaded before the disk check: "
        f"{[(p.name, p.stat().st_size) for p in tmp_path.rglob('*.incomplete')]}"
    )
    assert not list(tmp_path.rglob("*.manifest.json")), "an entry was published although the download was refused"


# -- the destination folder and the download lock ---------------------------------------------


@pytest.fixture
def task(quick_client):
    return quick_client.wait_for_export("ds-ready", quick_client.start_export("ds-ready").id)


def test_a_finished_download_leaves_only_the_archive_in_the_folder(quick_client, task, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    dest = quick_client.download_export(task, folder / "e.zip")
    assert os.listdir(folder) == ["e.zip"]
    assert zipfile.ZipFile(dest).testzip() is None


def test_a_download_waits_for_another_to_the_same_file(quick_client, task, tmp_path):
    dest = tmp_path / "e.zip"
    with (
        hold_lock(lock_path(dest), timeout_s=5, what="a test's download"),
        pytest.raises(errors.LockTimeoutError) as caught,
    ):
        quick_client.download_export(task, dest, lock_timeout_s=0.2)
    assert os.path.dirname(caught.value.lock_path) != str(tmp_path)
    assert os.listdir(tmp_path) == []  # the waiter wrote nothing
    assert quick_client.download_export(task, dest, lock_timeout_s=0.2) == dest  # free once released


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX owners and modes")
def test_a_lock_folder_others_can_write_to_is_refused(quick_client, task, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"vl_datasets-locks-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(errors.ConfigurationError, match=re.escape(str(shared))):
        quick_client.download_export(task, tmp_path / "out" / "e.zip")
    assert not (tmp_path / "out" / "e.zip").exists()


def test_a_redirect_without_location_is_named_as_such(tmp_path):
    import http.server
    import threading

    class NoLocation(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoLocation)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/export.zip?X-Signature=abc"
        task = ExportTask(id="t1", dataset_id="ds", status="COMPLETED", download_uri=url)
        from vl_datasets import Client

        client = Client(f"http://127.0.0.1:{server.server_port}", progress=False, env={}, sleep=lambda s: None)
        with pytest.raises(errors.DownloadError, match="without a Location") as caught:
            client.download_export(task, tmp_path / "e.zip")
        assert "X-Signature" not in str(caught.value), "the error shows the presigned signature"
    finally:
        server.shutdown()
    assert not (tmp_path / "e.zip").exists(), "a redirect's empty body was saved as the archive"


def test_a_task_id_that_is_no_file_name_still_downloads(client, tmp_path):
    from vl_datasets.api.download import partial_path

    for task_id in ("a/b", "../up", "x" * 300):
        path = partial_path(tmp_path / "e.zip", task_id)
        assert path.parent == tmp_path, f"task id {task_id!r} moved the partial file out of the folder"
        assert len(path.name) < 200
    assert partial_path(tmp_path / "e.zip", "a/b") != partial_path(tmp_path / "e.zip", "a_b"), "two ids collide"
    task, _ = export_and_download(client, tmp_path / "ref")
    odd = ExportTask(
        id=f"{task.id}/1",
        dataset_id=task.dataset_id,
        status=task.status,
        download_uri=task.download_uri,
        entities_count=task.entities_count,
    )
    assert client.download_export(odd, tmp_path / "odd.zip").is_file()


def test_failed_requests_and_broken_streams_spend_one_count_of_attempts(local_vl, fake_time, reference_zip, tmp_path):
    """A storage that answers 503 twice, then breaks every stream: 4 requests for 4 attempts, not
    the transport's 4 for each of the download's 4 tries."""
    task, _ = reference_zip
    local_vl.faults.fail_next("storage", 503, times=2)
    local_vl.faults.break_download_after(0, times=100)
    waits_before = len(fake_time.sleeps)  # the export's polls
    with make_client(local_vl, fake_time, max_retries=3) as client, pytest.raises(errors.DownloadError) as caught:
        client.download_export(task, tmp_path / "d.zip")
    assert len(_range_headers(local_vl)) == 4, "the download's retries multiplied the transport's"
    assert len(fake_time.sleeps) - waits_before == 3
    assert "gave up after 4 of 4 attempts" in str(caught.value)


def test_a_download_that_keeps_moving_is_never_given_up(local_vl, fake_time, reference_zip, tmp_path):
    """Bytes received give the count back: more breaks than attempts, each after new bytes, still finish."""
    task, expected = reference_zip
    local_vl.faults.break_download_after(200, times=4)
    with make_client(local_vl, fake_time, max_retries=2) as client:
        assert client.download_export(task, tmp_path / "e.zip").read_bytes() == expected


def test_a_storage_that_hangs_mid_download_costs_the_attempts_each_cut_at_the_timeout(
    local_vl, fake_time, reference_zip, tmp_path
):
    task, _ = reference_zip
    local_vl.faults.stall_download_after(0, 60, times=100)  # headers, then nothing
    with (
        make_client(local_vl, fake_time, max_retries=2, timeout_s=0.5) as client,
        pytest.raises(errors.DownloadError) as caught,
    ):
        client.download_export(task, tmp_path / "f.zip")
    local_vl.faults.reset()  # wakes the stalled answers
    assert len(_range_headers(local_vl)) == 3
    assert "gave up after 3 of 3 attempts" in str(caught.value)
