"""The client against the local Visual Layer service over loopback: no mocks, faults switched on server-side."""

from __future__ import annotations

import io
import json
import pickle
import threading
import zipfile

import pyarrow.parquet as pq
import pytest

import vl_datasets
from tests.api.helpers import export_and_download, make_client
from vl_datasets import errors
from vl_datasets.records import ExportTask

# -- dataset status and errors ----------------------------------------------------------------


def test_get_dataset_returns_a_typed_record(client):
    info = client.get_dataset("ds-ready")
    assert isinstance(info, vl_datasets.DatasetInfo)
    assert info.id == "ds-ready"
    assert info.status == "READY"
    assert info.ready
    assert info.n_images == 8


def test_not_ready_dataset_reports_its_status_and_refuses_export(client):
    assert client.get_dataset("ds-indexing").status == "INDEXING"
    with pytest.raises(errors.DatasetNotReadyError) as caught:
        client.start_export("ds-indexing")
    assert caught.value.status_code == 409


def test_unknown_dataset_raises_not_found_with_server_detail(client):
    with pytest.raises(errors.DatasetNotFoundError) as caught:
        client.get_dataset("nope")
    exc = caught.value
    assert isinstance(exc, LookupError)
    assert exc.status_code == 404
    assert exc.detail
    assert "nope" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is errors.DatasetNotFoundError
    assert again.status_code == 404
    assert str(again) == str(exc)


def test_unknown_export_task_has_its_own_error(client):
    with pytest.raises(errors.ExportTaskNotFoundError) as caught:
        client.get_export_status("ds-ready", "no-such-task")
    error = caught.value
    assert isinstance(error, LookupError)
    assert isinstance(error, errors.APIStatusError)
    assert not isinstance(error, errors.DatasetNotFoundError), "an unknown task is not an unknown dataset"
    assert error.task_id == "no-such-task"
    assert error.dataset_id == "ds-ready"
    assert error.status_code == 404
    with pytest.raises(errors.DatasetNotFoundError):
        client.get_export_status("no-such-dataset", "no-such-task")


def test_invalid_arguments_fail_before_any_request(local_vl, client):
    with pytest.raises(errors.ConfigurationError):
        client.start_export("ds-ready", export_format="csv")
    with pytest.raises(errors.ConfigurationError):
        client.start_selective_export("ds-ready", media_ids=["a"], cluster_ids=["b"])
    with pytest.raises(errors.ConfigurationError):
        client.get_dataset("")
    assert local_vl.requests == []


# -- the export workflow ----------------------------------------------------------------------


@pytest.mark.parametrize("export_format,include_images", [("parquet", True), ("json", False)])
def test_full_export_round_trip(client, tmp_path, fake_time, export_format, include_images):
    seen: list[ExportTask] = []
    task = client.start_export("ds-ready", export_format=export_format, include_images=include_images)
    assert task.status in ("INIT", "IN_PROGRESS")
    assert task.dataset_id == "ds-ready"
    done = client.wait_for_export("ds-ready", task.id, on_progress=seen.append)
    assert done.succeeded
    assert done.entities_count == 8
    assert done.download_uri
    assert [t.status for t in seen][-1] == "COMPLETED"
    assert "IN_PROGRESS" in [t.status for t in seen]
    assert fake_time.sleeps, "waiting for the export never slept between polls"
    assert all(s > 0 for s in fake_time.sleeps), f"a poll interval is not positive: {fake_time.sleeps}"
    path = client.download_export(done, tmp_path / "out" / "export.zip")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert f"metadata.{export_format}" in names
        assert sum(n.startswith("images/") for n in names) == (8 if include_images else 0)
        if export_format == "parquet":
            assert pq.read_table(io.BytesIO(zf.read("metadata.parquet"))).num_rows == 8
    assert [p.name for p in path.parent.iterdir()] == ["export.zip"] or not [
        p for p in path.parent.iterdir() if p.name.endswith(".incomplete")
    ], f"the download left partial files beside export.zip: {sorted(p.name for p in path.parent.iterdir())}"


def test_selective_export_by_media_and_cluster_ids(client, tmp_path, dataset_root):
    import json

    items = json.loads((dataset_root / "ds-ready" / "metadata.json").read_text())["media_items"]
    media_ids = [items[0]["media_id"], items[3]["media_id"]]
    task = client.start_selective_export("ds-ready", media_ids=media_ids, export_format="json")
    task = client.wait_for_export("ds-ready", task.id)
    assert task.entities_count == 2
    cluster = items[0]["cluster_id"]
    expected = sum(1 for i in items if i["cluster_id"] == cluster)
    task = client.start_selective_export("ds-ready", cluster_ids=[cluster])
    task = client.wait_for_export("ds-ready", task.id)
    assert task.entities_count == expected
    path = client.download_export(task, tmp_path / "sel.zip")
    with zipfile.ZipFile(path) as zf:
        assert pq.read_table(io.BytesIO(zf.read("metadata.parquet"))).num_rows == expected


def test_empty_selection_is_rejected_with_the_server_reason(client):
    task = client.start_selective_export("ds-ready", media_ids=["no-such-media"])
    with pytest.raises(errors.ExportFailedError) as caught:
        client.wait_for_export("ds-ready", task.id)
    assert caught.value.status == "REJECTED"
    assert caught.value.result_message
    assert caught.value.result_message in str(caught.value)


def test_failed_export_carries_result_message(local_vl, client):
    local_vl.faults.fail_exports(result_message="disk quota exceeded")
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ExportFailedError, match="disk quota exceeded") as caught:
        client.wait_for_export("ds-ready", task.id)
    assert caught.value.task_id == task.id
    assert caught.value.status == "FAILED"


def test_the_servers_free_text_is_redacted_wherever_it_is_shown(local_vl, fake_time):
    """A failed export's result_message and a dataset's fatal_error_msg are the server's words: a
    storage failure may quote the presigned URL it could not write, a proxy the token it got. What
    the chunking reads in them ("exceeds threshold of N") stays."""
    from vl_datasets.chunks import is_too_large, limit_named_in

    token = "opaque-Tok3n-abcdefghijklmnop"
    client = make_client(local_vl, fake_time, token=token)
    signed = "https://bucket.s3.amazonaws.com/x.zip?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=Q9zSECRET"
    secrets = ("AKIAEXAMPLE", "Q9zSECRET", token)
    message = f"Export exceeds threshold of 4 entities; upload to {signed} failed for token {token}"
    local_vl.faults.fail_exports(message, status="REJECTED")
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ExportFailedError) as caught:
        client.wait_for_export("ds-ready", task.id)
    error = caught.value
    shown = f"{error} {error!r} {error.args!r} {vars(error)!r} {vars(pickle.loads(pickle.dumps(error)))!r}"
    assert [secret for secret in secrets if secret in shown] == [], shown
    assert "upload to https://bucket.s3.amazonaws.com/x.zip?[redacted] failed for token [redacted]" in str(error)
    assert is_too_large(error) and limit_named_in(error) == 4
    fatal = {"id": "ds-ready", "status_new": "ERROR", "fatal_error_msg": f"indexing wrote {signed} with {{token}}"}
    local_vl.faults.fail_next("dataset", 200, body=json.dumps(fatal), content_type="application/json")
    info = client.get_dataset("ds-ready")
    assert [secret for secret in secrets if secret in repr(info)] == [], repr(info)
    assert info.fatal_error_msg == "indexing wrote https://bucket.s3.amazonaws.com/x.zip?[redacted] with [redacted]"


def test_wait_times_out_with_a_resumable_task_id(local_vl, client, tmp_path):
    local_vl.faults.hold_exports()
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ExportTimeoutError) as caught:
        client.wait_for_export("ds-ready", task.id, timeout_s=60)
    assert caught.value.task_id == task.id
    assert isinstance(caught.value, TimeoutError)
    assert task.id in str(caught.value)
    local_vl.faults.release_exports()
    done = client.wait_for_export("ds-ready", caught.value.task_id)
    assert done.succeeded
    assert local_vl.count("export") == 1


def test_a_stopped_wait_ends_at_once_as_a_timeout(quick_vl):
    """``stop``, set by another thread (a chunked export ending), cuts the wait between two polls short."""
    client = vl_datasets.Client(quick_vl.url, progress=False, env={})  # real sleeps: 2 s to the next poll
    quick_vl.faults.hold_exports()
    task = client.start_export("ds-ready")
    stop = threading.Event()
    with pytest.raises(errors.ExportTimeoutError, match="until stopped; it keeps running") as caught:
        client.wait_for_export("ds-ready", task.id, on_progress=lambda polled: stop.set(), stop=stop)
    assert caught.value.task_id == task.id and quick_vl.count("export_status") == 1
    quick_vl.faults.release_exports()
    assert client.wait_for_export("ds-ready", task.id).succeeded


def test_a_stop_ends_the_retries_of_a_poll_too(local_vl, fake_time):
    stop = threading.Event()

    def sleep(seconds: float) -> None:  # the stop comes while the first retry waits
        fake_time.sleep(seconds)
        stop.set()

    client = vl_datasets.Client(local_vl.url, sleep=sleep, clock=fake_time.clock, progress=False, env={})
    task = client.start_export("ds-ready")
    local_vl.faults.fail_next("export_status", 503, times=100)
    with pytest.raises(errors.ExportTimeoutError, match="until stopped"):
        client.wait_for_export("ds-ready", task.id, stop=stop)
    assert local_vl.count("export_status") == 1, "a stopped wait retried its poll"


@pytest.mark.parametrize("retry_after", [30, 2])
def test_the_wait_s_deadline_bounds_the_retries_of_its_polls(local_vl, client, fake_time, retry_after):
    """A status poll answered 503 is retried, but never past the wait's own timeout_s: the
    retries' waits (a Retry-After of 30 s, six times) once held a 10 s wait for minutes."""
    task = client.start_export("ds-ready")
    local_vl.faults.hold_exports()
    local_vl.faults.fail_next("export_status", 503, times=100, retry_after=retry_after)
    start = fake_time.now
    with pytest.raises(errors.ExportTimeoutError) as caught:
        client.wait_for_export("ds-ready", task.id, timeout_s=10)
    assert caught.value.task_id == task.id and "HTTP 503" in str(caught.value)
    assert fake_time.now - start <= 10, f"the wait went on {fake_time.now - start:g} s past its start"
    assert local_vl.count("export_status") >= (1 if retry_after > 10 else 4), "the polls were not retried"


def test_a_wait_waits_out_a_long_retry_after_within_its_timeout(local_vl, client, fake_time):
    """A poll told to come back in 300 s gave up at once (longer than an API call waits), ending a
    two-hour wait in its first minutes with an APIStatusError."""
    task = client.start_export("ds-ready")
    local_vl.faults.fail_next("export_status", 503, times=2, retry_after=300)
    assert client.wait_for_export("ds-ready", task.id, timeout_s=7200).succeeded
    assert fake_time.sleeps[:2] == [300, 300]


def test_a_wait_polls_a_last_time_at_its_deadline(local_vl, fake_time):
    """It gave up an interval early (2 s into a 4 s wait, saying "after 4s"), while the export
    finished at 2.5 s: the last sleep now ends at the deadline, and the poll there decides."""
    task_started = make_client(local_vl, fake_time).start_export("ds-ready")
    local_vl.faults.hold_exports()
    start, sleep = fake_time.now, fake_time.sleep

    def sleep_then_finish_at_the_deadline(seconds: float) -> None:
        sleep(seconds)
        if fake_time.now - start >= 4:
            local_vl.faults.release_exports()

    fake_time.sleep = sleep_then_finish_at_the_deadline  # type: ignore[method-assign]
    with make_client(local_vl, fake_time) as client:
        assert client.wait_for_export("ds-ready", task_started.id, timeout_s=4).succeeded
    assert fake_time.now - start == pytest.approx(4), "the last poll was not at the deadline"


def test_a_wait_on_a_server_answering_408_ends_in_its_timeout(local_vl, client, fake_time):
    """A 408 is retried like a 503; at the deadline it was raised as a plain APIStatusError."""
    task = client.start_export("ds-ready")
    local_vl.faults.fail_next("export_status", 408, times=100, retry_after=3)
    with pytest.raises(errors.ExportTimeoutError) as caught:
        client.wait_for_export("ds-ready", task.id, timeout_s=5)
    assert caught.value.task_id == task.id and "HTTP 408" in str(caught.value)


def test_a_polled_task_the_server_forgets_is_told_within_the_wait_s_deadline(local_vl, client, fake_time):
    """A 404 on the task asks the dataset which is missing: that request spent the client's whole
    retry policy (six 100 s Retry-Afters inside a 5 s wait) and ended in the dataset's 503."""
    task = client.start_export("ds-ready")
    local_vl.faults.fail_next("export_status", 404)
    local_vl.faults.fail_next("dataset", 503, times=100, retry_after=100)
    start = fake_time.now
    with pytest.raises(errors.ExportTimeoutError):
        client.wait_for_export("ds-ready", task.id, timeout_s=5)
    assert fake_time.now - start <= 5, f"the wait went on {fake_time.now - start:g} s past its start"


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("inf")])
def test_a_wait_with_no_time_left_or_no_limit_still_polls_once(quick_vl, quick_client, timeout_s):
    """timeout_s=0 asks for the state now: an export already done is returned, not a timeout."""
    task = quick_client.start_export("ds-ready")
    assert quick_client.wait_for_export("ds-ready", task.id, timeout_s=timeout_s).succeeded
    assert quick_vl.count("export_status") == 1


def test_a_nan_timeout_is_refused_before_anything_waits(local_vl, client):
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ConfigurationError, match="timeout_s"):
        client.wait_for_export("ds-ready", task.id, timeout_s=float("nan"))
    assert local_vl.count("export_status") == 0


@pytest.mark.parametrize("server_kwargs", [{"minimal_start_response": True}, {"progress_scale": 1}])
def test_contract_variants_of_the_task(dataset_root, fake_time, tmp_path, server_kwargs):
    from vl_datasets.testing import LocalVisualLayer

    with LocalVisualLayer(dataset_root, **server_kwargs) as service, make_client(service, fake_time) as client:
        _, data = export_and_download(client, tmp_path)
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None


def test_progress_scale_is_inferred():
    from vl_datasets.api.client import _ProgressScale

    def task(progress, status="IN_PROGRESS"):
        return ExportTask(id="t", dataset_id="d", status=status, progress=progress)

    fraction = _ProgressScale()
    assert fraction.percent(task(0.25)) == 25.0
    assert fraction.percent(task(1.0)) == 99.0, "an unfinished export showed 100%"
    percent = _ProgressScale()
    assert percent.percent(task(40.0)) == 40.0
    assert percent.percent(task(1.0)) == 1.0
    assert percent.percent(task(None, "COMPLETED")) == 100.0


def test_client_pickles_without_its_session(local_vl, client):
    client.get_dataset("ds-ready")
    copy = pickle.loads(pickle.dumps(client))
    assert copy.get_dataset("ds-ready").ready


def test_entity_type_and_vql_pass_through_to_the_export_start(local_vl, client):
    """Contract §2: optional parameters an SDK written at Visual Layer sends; accepted, never required."""
    filters = [{"id": "label_filter", "labels": {"op": "one_of", "value": ["cat"]}}]
    assert client.start_export("ds-ready", entity_type="IMAGES", vql=filters).id
    sent = local_vl.requests[-1].query
    assert sent["entity_type"] == "IMAGES" and json.loads(sent["vql"]) == filters
    assert client.start_export("ds-ready", vql=json.dumps(filters)).id
    sent = local_vl.requests[-1].query
    assert json.loads(sent["vql"]) == filters and "entity_type" not in sent
    with pytest.raises(errors.ConfigurationError, match="entity_type"):
        client.start_export("ds-ready", entity_type="")
