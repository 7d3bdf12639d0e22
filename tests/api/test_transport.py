"""One retry loop and one place that turns a response into an error: what is retried, how long, and what is raised."""

from __future__ import annotations

import pytest

from tests.api.helpers import make_client
from vl_datasets import Client, errors
from vl_datasets.backoff import parse_retry_after


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None  # a float to Python, and time.sleep refuses it
    assert parse_retry_after("-3") == 0.0


def test_retryable_status_is_retried_honouring_retry_after(local_vl, client, fake_time):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=7)
    assert client.get_dataset("ds-ready").ready
    assert fake_time.sleeps == [7, 7]
    assert local_vl.count("dataset") == 3


def test_a_retry_after_longer_than_the_client_waits_ends_the_attempts_naming_it(local_vl, client, fake_time):
    """Asked to come back in 10 minutes, the client came back after 2, three times, and was
    refused each time."""
    local_vl.faults.fail_next("dataset", 429, times=5, retry_after=600)
    with pytest.raises(errors.RateLimitError, match="asked to be retried in 600 s") as caught:
        client.get_dataset("ds-ready")
    assert caught.value.status_code == 429
    assert fake_time.sleeps == [] and local_vl.count("dataset") == 1


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


def test_export_start_is_resent_on_the_answers_the_contract_names_retryable(local_vl, client, fake_time):
    local_vl.faults.fail_next("export", 429, retry_after=3)
    local_vl.faults.fail_next("selective_export", 503)
    assert client.start_export("ds-ready").id
    assert client.start_selective_export("ds-ready", cluster_ids=["x"]).id
    assert local_vl.count("export") == 2
    assert local_vl.count("selective_export") == 2
    assert fake_time.sleeps[0] == 3
    for status in (502, 504):  # a gateway's: contract §2 says retry, a duplicate export is harmless
        page = f"<html><h1>{status} Gateway</h1></html>"
        local_vl.faults.fail_next("export", status, body=page, content_type="text/html")
        assert client.start_export("ds-ready").id
    assert local_vl.count("export") == 6


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


def _strings_reachable_from(error: BaseException, limit: int = 200_000) -> list[str]:
    """Every str/bytes an error reporter could reach from ``error``: its attributes, its
    __cause__/__context__ chain and everything those hold, frames and code aside."""
    import gc
    import types

    skip = (types.FrameType, types.TracebackType, types.ModuleType, types.FunctionType, types.CodeType, type)
    seen, found, stack = set(), [], [error]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, (str, bytes)):
            found.append(obj if isinstance(obj, str) else obj.decode("latin-1"))
            continue
        if isinstance(obj, BaseException):
            stack.extend(o for o in (obj.__cause__, obj.__context__) if o is not None)
        stack.extend(gc.get_referents(obj))
    return found


def test_no_token_or_secret_is_reachable_from_a_connection_error(fake_time):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "s3cret-value-0123456789abcdef0123456789"
    client = Client(
        f"http://127.0.0.1:{port}",
        api_key="k",
        api_secret=secret,
        sleep=fake_time.sleep,
        max_retries=1,
        progress=False,
        env={},
    )
    with pytest.raises(errors.APIConnectionError) as caught:
        client.get_dataset("ds-ready")
    assert caught.value.__context__ is None, "requests' exception (with the request's headers) rides along"
    leaked = [s for s in _strings_reachable_from(caught.value) if secret in s or "Bearer " in s or "eyJ" in s]
    assert leaked == [], f"the token or secret is reachable from the raised error: {leaked[:3]}"


def test_presigned_signatures_stay_out_of_urllib3_debug_lines(dataset_root, tmp_path, caplog):
    from vl_datasets.testing import LocalVisualLayer

    with LocalVisualLayer(dataset_root, export_polls=0, download_uri_style="absolute") as service:
        client = Client(service.url, progress=False, env={}, sleep=lambda s: None)
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        assert "Signature" in task.download_uri, "the service should hand out a presigned URL here"
        assert "Signature" not in repr(task), "repr(ExportTask) shows the presigned signature"
        with caplog.at_level("DEBUG"):
            client.download_export(task, tmp_path / "e.zip")
    storage_lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("GET" in line for line in storage_lines), "urllib3 logged no request line to check"
    assert not [line for line in storage_lines if "Signature" in line], "a signature reached a log line"


@pytest.mark.parametrize("status", [401, 403, 500])
@pytest.mark.parametrize("credentials", ["signed", "opaque token"])
def test_a_token_the_server_echoes_never_reaches_the_error(local_vl, fake_time, status, credentials):
    """Some servers and proxies repeat the request's Authorization header in their error: the
    detail reaches the message, ``detail``, a pickle and the CLI's output, so it is redacted."""
    import pickle

    secret, token = "s3cret-value-0123456789abcdef0123456789", "opaque-Tok3n-abcdefghijklmnop"
    kwargs = {"api_key": "k", "api_secret": secret} if credentials == "signed" else {"token": token}
    client = make_client(local_vl, fake_time, max_retries=0, **kwargs)
    times = 2 if (status, credentials) == (401, "signed") else 1  # a 401 renews a signed token once
    local_vl.faults.fail_next("dataset", status, times=times, detail="invalid token: {header:Authorization}")
    echoed = {"received": {"authorization": "{header:Authorization}"}}
    local_vl.faults.fail_next("dataset", status, times=times, detail=echoed)
    bare = "token {token} is not known"  # no pattern finds an opaque token without its scheme
    local_vl.faults.fail_next("dataset", status, times=times, detail=bare)
    local_vl.faults.fail_next("dataset", status, times=times, body="<p>{token}</p>", content_type="text/html")
    for _ in range(4):
        with pytest.raises(errors.APIStatusError) as caught:
            client.get_dataset("ds-ready")
        sent = local_vl.requests[-1].headers["Authorization"].removeprefix("Bearer ")
        assert len(sent) > 20, "no token was sent: the test would prove nothing"
        text = str(caught.value) + repr(caught.value.detail) + repr(pickle.loads(pickle.dumps(caught.value)).args)
        assert sent not in text and secret not in text, f"the token reached the error: {text}"
        assert "[redacted]" in text, "the detail should still say what the server answered"
        leaked = [s for s in _strings_reachable_from(caught.value) if sent in s]
        assert leaked == [], f"the token is reachable from the raised error: {leaked[:3]}"


def test_a_signature_the_storage_echoes_never_reaches_the_download_error(dataset_root, tmp_path):
    """S3's SignatureDoesNotMatch repeats the signature it was sent and the request it signed."""
    from vl_datasets.testing import LocalVisualLayer

    with LocalVisualLayer(dataset_root, export_polls=0, download_uri_style="absolute") as service:
        client = Client(service.url, progress=False, env={}, sleep=lambda s: None, max_retries=0)
        task = client.wait_for_export("ds-ready", client.start_export("ds-ready").id)
        body = (
            "<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code>"
            "<SignatureProvided>{query}</SignatureProvided><CanonicalRequest>GET /x?{query}</CanonicalRequest>"
            "<Message>refused {query}</Message></Error>"
        )
        service.faults.fail_next("storage", 400, body=body, content_type="application/xml", times=10)
        with pytest.raises(errors.VLDatasetsError) as caught:
            client.download_export(task, tmp_path / "e.zip")
    signature = task.download_uri.split("Signature=")[1].split("&")[0]
    assert len(signature) > 10, "the service should hand out a presigned URL here"
    text = str(caught.value) + repr(getattr(caught.value, "detail", None))
    assert signature not in text, f"the signature reached the error: {text}"
    assert "SignatureDoesNotMatch" in text, "the error should still say what the storage answered"


def test_plain_words_in_a_detail_are_not_taken_for_credentials(local_vl, client):
    detail = (
        "Basic checks failed: bearer tokens expire (Bearer token_expired); fix the basic setup.py first. "
        "Signature: mismatch at 10:30, x-amz-security-token header missing; mail ops@example.com, see C:/a@2x.png"
    )
    local_vl.faults.fail_next("dataset", 400, detail=detail)
    with pytest.raises(errors.BadRequestError) as caught:
        client.get_dataset("ds-ready")
    assert caught.value.detail == detail and detail in str(caught.value)


def test_an_answer_that_trickles_in_is_cut_at_the_timeout(local_vl):
    """The read timeout bounds each wait for the next bytes; timeout_s bounds the whole answer."""
    import json

    body = json.dumps({"id": "ds-ready", "status": "READY", "padding": "x" * 200})
    local_vl.faults.fail_next("dataset", 200, body=body, content_type="application/json", drip_s=0.05)
    with Client(local_vl.url, progress=False, env={}, timeout_s=1, max_retries=0) as client:
        with pytest.raises(errors.APITimeoutError, match="gave up after 1 of 1 attempts"):
            client.get_dataset("ds-ready")  # ~12 s of bytes at 0.05 s each
        assert client.get_dataset("ds-ready").ready, "the next request should go through"


@pytest.mark.parametrize("odd", ["\n", "\u2013"])
def test_a_token_no_header_may_hold_is_refused_without_sending_or_retrying(local_vl, fake_time, odd):
    """A token read from a file keeps its newline: requests refuses it before sending anything,
    which the retries took for an unreachable API (six attempts, then 'could not reach'); a dash
    pasted from outside latin-1 raised a UnicodeEncodeError holding the whole header."""
    token = "opaque-Tok3n-abcdefghijklmnop"
    client = make_client(local_vl, fake_time, token=token + odd)
    with pytest.raises(errors.ConfigurationError, match="token holds a character") as caught:
        client.get_dataset("ds-ready")
    assert token not in str(caught.value)
    assert local_vl.count("dataset") == 0 and fake_time.sleeps == []


@pytest.mark.parametrize("credentials", ["signed", "opaque token"])
def test_a_token_echoed_in_an_answer_that_is_not_json_never_rides_with_the_error(local_vl, fake_time, credentials):
    """A 200 page that repeats the token (a portal or proxy's login page) is no answer: the
    decoder's error holds the whole page, so it must not travel as the raised error's context."""
    secret, token = "s3cret-value-0123456789abcdef0123456789", "opaque-Tok3n-abcdefghijklmnop"
    kwargs = {"api_key": "k", "api_secret": secret} if credentials == "signed" else {"token": token}
    client = make_client(local_vl, fake_time, max_retries=0, **kwargs)
    local_vl.faults.fail_next("dataset", 200, body="<html>session {token}</html>", content_type="text/html")
    with pytest.raises(errors.ResponseValidationError, match="not JSON") as caught:
        client.get_dataset("ds-ready")
    sent = local_vl.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    assert len(sent) > 20, "no token was sent: the test would prove nothing"
    leaked = [s for s in _strings_reachable_from(caught.value) if sent in s or secret in s]
    assert leaked == [], f"the token is reachable from the raised error: {leaked[:3]}"
