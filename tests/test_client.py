"""The client against the local Visual Layer service over loopback: no mocks, faults switched on server-side."""

from __future__ import annotations

import io
import pickle
import zipfile

import jwt
import pyarrow.parquet as pq
import pytest

import vl_datasets
from vl_datasets import Client, errors
from vl_datasets.records import ExportTask


class FakeTime:
    """Sleep and clocks that advance instantly, so no test waits for real."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.wall = 1_700_000_000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make_client(service, fake_time, **kwargs) -> Client:
    return Client(service.url, sleep=fake_time.sleep, clock=fake_time.clock, progress=False, env={}, **kwargs)


@pytest.fixture
def client(local_vl, fake_time):
    with make_client(local_vl, fake_time) as c:
        yield c


def export_and_download(client: Client, tmp_path, dataset_id="ds-ready", **kwargs) -> tuple[ExportTask, bytes]:
    task = client.start_export(dataset_id, **kwargs)
    task = client.wait_for_export(dataset_id, task.id)
    path = client.download_export(task, tmp_path / "export.zip")
    return task, path.read_bytes()


# -- dataset status and errors -----------------------------------------------------------------


def test_get_dataset_returns_a_typed_record(client):
    info = client.get_dataset("ds-ready")
    assert isinstance(info, vl_datasets.DatasetInfo)
    assert info.id == "ds-ready" and info.status == "READY" and info.ready
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
    assert isinstance(exc, LookupError) and exc.status_code == 404 and exc.detail
    assert "nope" in str(exc)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is errors.DatasetNotFoundError and again.status_code == 404 and str(again) == str(exc)


def test_unknown_export_task_has_its_own_error(client):
    with pytest.raises(errors.ExportTaskNotFoundError) as caught:
        client.get_export_status("ds-ready", "no-such-task")
    error = caught.value
    assert isinstance(error, LookupError) and isinstance(error, errors.APIStatusError)
    assert not isinstance(error, errors.DatasetNotFoundError), "an unknown task is not an unknown dataset"
    assert error.task_id == "no-such-task" and error.dataset_id == "ds-ready" and error.status_code == 404
    with pytest.raises(errors.DatasetNotFoundError):
        client.get_export_status("no-such-dataset", "no-such-task")


def test_error_families_group_the_leaves():
    families = {errors.APIError: [errors.AuthenticationError, errors.APITimeoutError, errors.ResponseValidationError],
                errors.ExportError: [errors.ExportFailedError, errors.InsufficientDiskSpaceError],
                errors.CacheError: [errors.CacheMissError, errors.CorruptArchiveError, errors.LockTimeoutError],
                errors.DataError: [errors.SchemaError, errors.ImageDecodeError, errors.CurationError]}
    for family, leaves in families.items():
        for leaf in leaves:
            assert issubclass(leaf, family), f"{leaf.__name__} is not caught by {family.__name__}"
    # Each leaf keeps its keyword fields across pickling, as DataLoader workers need.
    error = errors.ImageDecodeError("bad", media_id="m1", path="/x.jpg")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.media_id, again.path) == (errors.ImageDecodeError, "bad", "m1", "/x.jpg")
    with pytest.raises(TypeError):
        errors.ImageDecodeError("bad", media=1)  # keywords are explicit: a misspelt one is refused


def test_422_detail_list_is_kept_and_readable(local_vl, client):
    local_vl.faults.fail_next("dataset", 422, detail=[{"loc": ["path", "dataset_id"], "msg": "bad id", "type": "x"}])
    with pytest.raises(errors.BadRequestError) as caught:
        client.get_dataset("ds-ready")
    assert caught.value.detail[0]["msg"] == "bad id"
    assert "path.dataset_id: bad id" in str(caught.value)


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
    assert task.status in ("INIT", "IN_PROGRESS") and task.dataset_id == "ds-ready"
    done = client.wait_for_export("ds-ready", task.id, on_progress=seen.append)
    assert done.succeeded and done.entities_count == 8 and done.download_uri
    assert [t.status for t in seen][-1] == "COMPLETED" and "IN_PROGRESS" in [t.status for t in seen]
    assert fake_time.sleeps and all(s > 0 for s in fake_time.sleeps)
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
    ]


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
    assert caught.value.status == "REJECTED" and caught.value.result_message
    assert caught.value.result_message in str(caught.value)


def test_failed_export_carries_result_message(local_vl, client):
    local_vl.faults.fail_exports(result_message="disk quota exceeded")
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ExportFailedError, match="disk quota exceeded") as caught:
        client.wait_for_export("ds-ready", task.id)
    assert caught.value.task_id == task.id and caught.value.status == "FAILED"


def test_wait_times_out_with_a_resumable_task_id(local_vl, client, tmp_path):
    local_vl.faults.hold_exports()
    task = client.start_export("ds-ready")
    with pytest.raises(errors.ExportTimeoutError) as caught:
        client.wait_for_export("ds-ready", task.id, timeout_s=60)
    assert caught.value.task_id == task.id and isinstance(caught.value, TimeoutError)
    assert task.id in str(caught.value)
    local_vl.faults.release_exports()
    done = client.wait_for_export("ds-ready", caught.value.task_id)
    assert done.succeeded
    assert local_vl.count("export") == 1


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
    percent = _ProgressScale()
    assert percent.percent(task(40.0)) == 40.0 and percent.percent(task(1.0)) == 1.0
    assert percent.percent(task(None, "COMPLETED")) == 100.0


# -- retries --------------------------------------------------------------------------------


def test_retryable_status_is_retried_honouring_retry_after(local_vl, client, fake_time):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=7)
    assert client.get_dataset("ds-ready").ready
    assert fake_time.sleeps == [7, 7]
    assert local_vl.count("dataset") == 3


def test_retries_are_capped(local_vl, fake_time):
    local_vl.faults.fail_next("dataset", 502, times=50, body="<html><h1>502 Bad Gateway</h1></html>",
                              content_type="text/html")
    with make_client(local_vl, fake_time, max_retries=3) as client, pytest.raises(errors.ServerError) as caught:
        client.get_dataset("ds-ready")
    assert local_vl.count("dataset") == 4 and len(fake_time.sleeps) == 3
    assert "502 Bad Gateway" in str(caught.value)
    delays = fake_time.sleeps
    assert all(0 < d <= 30 for d in delays) and delays[2] > delays[0]  # exponential, jittered


@pytest.mark.parametrize("status,error", [(401, errors.AuthenticationError), (403, errors.PermissionDeniedError),
                                          (404, errors.DatasetNotFoundError), (409, errors.DatasetNotReadyError),
                                          (422, errors.BadRequestError)])
def test_client_errors_are_never_retried(local_vl, client, fake_time, status, error):
    local_vl.faults.fail_next("export", status, times=5)
    with pytest.raises(error):
        client.start_export("ds-ready")
    assert local_vl.count("export") == 1 and fake_time.sleeps == []


def test_export_start_is_not_resent_when_the_server_may_have_acted(local_vl, client):
    local_vl.faults.fail_next("export", 500)
    with pytest.raises(errors.ServerError):
        client.start_export("ds-ready")
    assert local_vl.count("export") == 1


def test_export_start_is_resent_when_the_server_did_not_act(local_vl, client, fake_time):
    local_vl.faults.fail_next("export", 429, retry_after=3)
    local_vl.faults.fail_next("selective_export", 503)
    assert client.start_export("ds-ready").id
    assert client.start_selective_export("ds-ready", cluster_ids=["x"]).id
    assert local_vl.count("export") == 2 and local_vl.count("selective_export") == 2
    assert fake_time.sleeps[0] == 3


def test_unreachable_api_raises_connection_error(fake_time):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", sleep=fake_time.sleep, max_retries=2, progress=False, env={})
    with pytest.raises(errors.APIConnectionError) as caught:
        client.get_dataset("ds-ready")
    assert isinstance(caught.value, ConnectionError) and len(fake_time.sleeps) == 2
    with pytest.raises(errors.APIConnectionError):  # never sent, so even an export start is retried
        client.start_export("ds-ready")
    assert len(fake_time.sleeps) == 4


def test_non_json_success_is_a_validation_error(local_vl, client):
    local_vl.faults.fail_next("dataset", 200, body="<html>login</html>", content_type="text/html")
    with pytest.raises(errors.ResponseValidationError):
        client.get_dataset("ds-ready")


# -- authentication -------------------------------------------------------------------------


def _bearer(record) -> str | None:
    value = {k.lower(): v for k, v in record.headers.items()}.get("authorization")
    return value.split(" ", 1)[1] if value else None


def test_signed_token_has_the_contract_claims(local_vl_auth, fake_time):
    with make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789") as client:
        assert client.get_dataset("ds-ready").ready
    token = _bearer(local_vl_auth.requests[-1])
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, "secret-456-0123456789abcdef0123456789", algorithms=["HS256"], options={"verify_exp": False})
    assert header["alg"] == "HS256" and header["kid"] == "key-123"
    assert claims["sub"] == "key-123" and claims["iss"] == "sdk" and claims["exp"] - claims["iat"] == 600


def test_credentials_come_from_the_environment_at_construction(local_vl_auth, fake_time):
    env = {"VL_API_URL": local_vl_auth.url, "VL_API_KEY": "key-123", "VL_API_SECRET": "secret-456-0123456789abcdef0123456789"}
    client = Client(env=env, progress=False, sleep=fake_time.sleep)
    assert client.base_url == local_vl_auth.url and client.get_dataset("ds-ready").ready


def test_wrong_secret_is_an_authentication_error_after_one_renewal(local_vl_auth, fake_time):
    with make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="wrong") as client:
        with pytest.raises(errors.AuthenticationError) as caught:
            client.get_dataset("ds-ready")
    assert isinstance(caught.value, PermissionError) and caught.value.status_code == 401
    assert local_vl_auth.count("dataset") == 2


def test_a_401_renews_the_token_once(local_vl_auth, fake_time):
    local_vl_auth.faults.fail_next("dataset", 401)
    with make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789") as client:
        assert client.get_dataset("ds-ready").ready
    assert local_vl_auth.count("dataset") == 2 and fake_time.sleeps == []


def test_token_is_renewed_before_it_expires(local_vl_auth, fake_time):
    import time

    wall = [time.time() - 560]  # the first token expires 40 s from now: inside the renewal margin
    client = make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789",
                         wall_clock=lambda: wall[0])
    client.get_dataset("ds-ready")
    wall[0] += 100  # 460 s before expiry as far as the client knows: reused
    client.get_dataset("ds-ready")
    wall[0] = time.time()
    client.get_dataset("ds-ready")
    tokens = [_bearer(r) for r in local_vl_auth.requests]
    assert tokens[0] == tokens[1] != tokens[2]


def test_on_prem_sends_no_authorization_header(local_vl, client, tmp_path):
    export_and_download(client, tmp_path)
    assert local_vl.requests and all(_bearer(r) is None for r in local_vl.requests)


def test_token_never_leaks(local_vl_auth, fake_time, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789") as client:
        export_and_download(client, tmp_path)
        local_vl_auth.faults.fail_next("dataset", 500, times=10)
        with pytest.raises(errors.ServerError) as caught:
            client.get_dataset("ds-ready")
        text = repr(client) + str(caught.value) + repr(caught.value) + repr(client.settings)
    tokens = {_bearer(r) for r in local_vl_auth.requests if r.origin == "api"} - {None}
    assert tokens
    secrets = tokens | {"secret-456-0123456789abcdef0123456789"}
    storage = [r for r in local_vl_auth.requests if r.origin == "storage"]
    assert storage and all(_bearer(r) is None for r in storage)
    for secret in secrets:
        assert secret not in text and secret not in caplog.text
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes()


def test_fixed_token_is_sent_as_is(local_vl_auth, fake_time):
    import time

    now = int(time.time())
    token = jwt.encode({"sub": "key-123", "iat": now, "exp": now + 600, "iss": "sdk"}, "secret-456-0123456789abcdef0123456789",
                       algorithm="HS256", headers={"kid": "key-123"})
    with make_client(local_vl_auth, fake_time, token=token) as client:
        assert client.get_dataset("ds-ready").ready
        assert "key" not in repr(client).replace("auth=token", "")
    assert _bearer(local_vl_auth.requests[-1]) == token


# -- downloads ------------------------------------------------------------------------------


@pytest.fixture
def reference_zip(local_vl, client, tmp_path) -> tuple[ExportTask, bytes]:
    task, data = export_and_download(client, tmp_path / "ref")
    local_vl.clear_requests()
    return task, data


def _range_headers(service) -> list[str | None]:
    return [{k.lower(): v for k, v in r.headers.items()}.get("range") for r in service.requests if r.origin == "storage"]


def test_broken_download_resumes_with_range(local_vl, client, reference_zip, tmp_path):
    task, expected = reference_zip
    local_vl.faults.break_download_after(1000, times=2)
    path = client.download_export(task, tmp_path / "a.zip")
    assert path.read_bytes() == expected
    assert _range_headers(local_vl) == [None, "bytes=1000-", "bytes=2000-"]


def test_ignored_range_restarts_from_zero(local_vl, client, reference_zip, tmp_path):
    task, expected = reference_zip
    local_vl.faults.break_download_after(1000, times=1)
    local_vl.faults.ignore_range()
    assert client.download_export(task, tmp_path / "b.zip").read_bytes() == expected


def test_download_that_keeps_breaking_leaves_nothing_at_dest_and_resumes_later(local_vl, fake_time, reference_zip,
                                                                                 tmp_path):
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

    with LocalVisualLayer(dataset_root, download_uri_style="absolute") as service, \
            make_client(service, fake_time) as client:
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

    with LocalVisualLayer(dataset_root, download_uri_style="absolute") as service, \
            make_client(service, fake_time) as client:
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        service.faults.fail_next("storage", 403, times=20)
        with pytest.raises(errors.DownloadError):
            client.download_export(task, tmp_path / "e.zip")
    assert not (tmp_path / "e.zip").exists()


def test_client_pickles_without_its_session(local_vl, client):
    client.get_dataset("ds-ready")
    copy = pickle.loads(pickle.dumps(client))
    assert copy.get_dataset("ds-ready").ready
