"""One retry loop and one place that turns a response into an error: what is retried, how long, and what is raised."""

from __future__ import annotations

import pytest

from tests.api.helpers import make_client
from vl_datasets import Client, errors
from vl_datasets.api.transport import parse_retry_after


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retryable_status_is_retried_honouring_retry_after(local_vl, client, fake_time):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=7)
    assert client.get_dataset("ds-ready").ready
    assert fake_time.sleeps == [7, 7]
    assert local_vl.count("dataset") == 3


def test_retries_are_capped(local_vl, fake_time):
    local_vl.faults.fail_next(
        "dataset", 502, times=50, body="<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"
    )
    with make_client(local_vl, fake_time, max_retries=3) as client, pytest.raises(errors.ServerError) as caught:
        client.get_dataset("ds-ready")
    assert local_vl.count("dataset") == 4
    assert len(fake_time.sleeps) == 3
    assert "502 Bad Gateway" in str(caught.value)
    delays = fake_time.sleeps
    assert all(0 < d <= 30 for d in delays), f"a retry delay is outside (0, 30] seconds: {delays}"
    assert delays[2] > delays[0]  # exponential, jittered


@pytest.mark.parametrize(
    "status,error",
    [
        (401, errors.AuthenticationError),
        (403, errors.PermissionDeniedError),
        (404, errors.DatasetNotFoundError),
        (409, errors.DatasetNotReadyError),
        (422, errors.BadRequestError),
    ],
)
def test_client_errors_are_never_retried(local_vl, client, fake_time, status, error):
    local_vl.faults.fail_next("export", status, times=5)
    with pytest.raises(error):
        client.start_export("ds-ready")
    assert local_vl.count("export") == 1
    assert fake_time.sleeps == []


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
    assert local_vl.count("export") == 2
    assert local_vl.count("selective_export") == 2
    assert fake_time.sleeps[0] == 3


def test_unreachable_api_raises_connection_error(fake_time):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = Client(f"http://127.0.0.1:{port}", sleep=fake_time.sleep, max_retries=2, progress=False, env={})
    with pytest.raises(errors.APIConnectionError) as caught:
        client.get_dataset("ds-ready")
    assert isinstance(caught.value, ConnectionError)
    assert len(fake_time.sleeps) == 2
    with pytest.raises(errors.APIConnectionError):  # never sent, so even an export start is retried
        client.start_export("ds-ready")
    assert len(fake_time.sleeps) == 4


def test_non_json_success_is_a_validation_error(local_vl, client):
    local_vl.faults.fail_next("dataset", 200, body="<html>login</html>", content_type="text/html")
    with pytest.raises(errors.ResponseValidationError):
        client.get_dataset("ds-ready")


def test_422_detail_list_is_kept_and_readable(local_vl, client):
    local_vl.faults.fail_next("dataset", 422, detail=[{"loc": ["path", "dataset_id"], "msg": "bad id", "type": "x"}])
    with pytest.raises(errors.BadRequestError) as caught:
        client.get_dataset("ds-ready")
    assert caught.value.detail[0]["msg"] == "bad id"
    assert "path.dataset_id: bad id" in str(caught.value)
