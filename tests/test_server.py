"""The local Visual Layer service itself, spoken to with plain HTTP: does it keep the contract?"""

from __future__ import annotations

import ast
import dataclasses
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import jwt
import pyarrow.parquet as pq
import pytest
import requests

import vl_datasets.server
from vl_datasets.testing import LocalVisualLayer, write_dataset

KEY, SECRET = "key-123", "secret-456-0123456789abcdef0123456789"
TASK_FIELDS = {"id", "dataset_id", "created_at", "download_uri", "progress", "status", "entities_count",
               "result_message"}


def api(service, path: str) -> str:
    return f"{service.url}/api/v1/dataset/{path}"


def items_of(root: Path, dataset_id: str = "ds-ready") -> list[dict]:
    return json.loads((root / dataset_id / "metadata.json").read_text())["media_items"]


def poll(service, task_id: str, dataset_id: str = "ds-ready", **kwargs) -> dict:
    answer = requests.get(api(service, f"{dataset_id}/export_status"), params={"export_task_id": task_id}, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished(service, start: requests.Response, **kwargs) -> dict:
    """Poll a started export until it ends: a bounded loop, no sleeping."""
    assert start.status_code == 200, start.text
    for _ in range(50):
        task = poll(service, start.json()["id"], **kwargs)
        if task["status"] not in ("INIT", "IN_PROGRESS"):
            return task
    raise AssertionError("the export never finished")


def start_full(service, **params) -> requests.Response:
    return requests.get(api(service, "ds-ready/export_context_async"), params={"file_name": "export.zip", **params})


def start_selective(service, body, **params) -> requests.Response:
    return requests.post(api(service, "ds-ready/export_entities_async"), params=params, json=body)


def download(service, task: dict, **kwargs) -> requests.Response:
    url = task["download_uri"]
    return requests.get(url if url.startswith("http") else service.url + url, **kwargs)


def open_zip(service, task: dict) -> zipfile.ZipFile:
    answer = download(service, task)
    assert answer.status_code == 200, answer.text
    return zipfile.ZipFile(io.BytesIO(answer.content))


def token(now: float | None = None, *, kid=KEY, sub=KEY, secret=SECRET, iss="sdk", life=600, drop=()) -> str:
    now = int(time.time() if now is None else now)
    claims = {k: v for k, v in {"sub": sub, "iat": now, "exp": now + life, "iss": iss}.items() if k not in drop}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})


# -- datasets ---------------------------------------------------------------------------------


def test_dataset_object_has_the_contract_fields(local_vl):
    answer = requests.get(api(local_vl, "ds-ready"))
    body = answer.json()
    assert answer.headers["Content-Type"] == "application/json"
    assert set(body) >= {"id", "display_name", "description", "created_at", "status_new", "status", "progress",
                         "n_images", "n_videos", "n_objects", "fatal_error_msg"}
    assert body["id"] == "ds-ready" and body["status_new"] == "READY" and body["n_images"] == 8
    assert body["n_videos"] == 0 and body["n_objects"] == 0 and body["progress"] == 100
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", body["created_at"])  # no time zone
    assert requests.get(api(local_vl, "ds-indexing")).json()["status_new"] == "INDEXING"


def test_dataset_json_fields_win_and_changes_are_seen(local_vl, dataset_root):
    (dataset_root / "ds-indexing" / "dataset.json").write_text(json.dumps({"display_name": "birds",
                                                                           "status_new": "READ ONLY"}))
    body = requests.get(api(local_vl, "ds-indexing")).json()
    assert body["display_name"] == "birds" and body["status_new"] == "READ ONLY"
    assert requests.get(api(local_vl, "ds-indexing/export_context_async")).status_code == 409
    (dataset_root / "ds-indexing" / "dataset.json").write_text(json.dumps({"status_new": "ready"}))
    assert requests.get(api(local_vl, "ds-indexing/export_context_async")).status_code == 200


def test_unreadable_dataset_is_a_500_and_the_service_goes_on(local_vl, dataset_root):
    (dataset_root / "broken").mkdir()
    (dataset_root / "broken" / "metadata.json").write_text("{not json")
    broken = requests.get(api(local_vl, "broken"))
    assert broken.status_code == 500 and isinstance(broken.json()["detail"], str)
    assert requests.get(api(local_vl, "ds-ready")).status_code == 200


# -- error shapes -----------------------------------------------------------------------------


def test_404_409_405_are_json_details(local_vl):
    for answer in (requests.get(api(local_vl, "nope")), requests.get(api(local_vl, "nope/export_context_async")),
                   requests.get(f"{local_vl.url}/api/v2/anything"), requests.get(api(local_vl, "../../etc"))):
        assert answer.status_code == 404 and isinstance(answer.json()["detail"], str)
        assert answer.headers["Content-Type"] == "application/json"
    busy = requests.get(api(local_vl, "ds-indexing/export_context_async"))
    assert busy.status_code == 409 and "READY" in busy.json()["detail"]
    wrong = requests.post(api(local_vl, "ds-ready"))
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET" and wrong.json()["detail"]
    assert requests.delete(api(local_vl, "ds-ready/export_entities_async")).status_code == 405
    unknown_task = requests.get(api(local_vl, "ds-ready/export_status"), params={"export_task_id": "x"})
    assert unknown_task.status_code == 404 and "x" in unknown_task.json()["detail"]


@pytest.mark.parametrize("params,body,loc", [
    ({"export_format": "csv"}, {"media_ids": ["a"]}, ["query", "export_format"]),
    ({"include_images": "True"}, {"media_ids": ["a"]}, ["query", "include_images"]),
    ({}, None, ["body"]),
    ({}, {"media_ids": ["a"], "cluster_ids": ["b"]}, ["body"]),
    ({}, {"other": ["a"]}, ["body"]),
    ({}, ["a"], ["body"]),
    ({}, {"media_ids": "a"}, ["body", "media_ids"]),
    ({}, {"cluster_ids": ["a", 3]}, ["body", "cluster_ids", 1]),
])
def test_422_details_are_fastapi_lists(local_vl, params, body, loc):
    answer = start_selective(local_vl, body, **params)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc and set(detail[0]) >= {"loc", "msg", "type"}


def test_422_for_a_body_that_is_not_json_and_a_missing_task_id(local_vl):
    garbage = requests.post(api(local_vl, "ds-ready/export_entities_async"), data=b"{nope",
                            headers={"Content-Type": "application/json"})
    assert garbage.status_code == 422 and garbage.json()["detail"][0]["type"] == "json_invalid"
    missing = requests.get(api(local_vl, "ds-ready/export_status"))
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "export_task_id"]
    assert start_full(local_vl, export_format="xml").json()["detail"][0]["loc"] == ["query", "export_format"]


# -- exports ----------------------------------------------------------------------------------


def test_export_progresses_deterministically(local_vl):
    start = start_full(local_vl)
    assert set(start.json()) == TASK_FIELDS
    assert start.json()["status"] == "INIT" and start.json()["download_uri"] is None
    seen = [poll(local_vl, start.json()["id"]) for _ in range(4)]
    assert [t["status"] for t in seen] == ["IN_PROGRESS", "IN_PROGRESS", "COMPLETED", "COMPLETED"]
    progress = [t["progress"] for t in seen]
    assert progress == sorted(progress) and 0 < progress[0] < progress[1] < 100 == progress[2]
    assert seen[1]["download_uri"] is None
    assert seen[2]["download_uri"] == f"/cdn/ds-ready/images/{start.json()['id']}/{start.json()['id']}.zip"
    assert seen[2]["entities_count"] == 8 and seen[2]["dataset_id"] == "ds-ready"


@pytest.mark.parametrize("options,first,end", [({"export_polls": 0}, "COMPLETED", 100),
                                               ({"progress_scale": 1, "export_polls": 1}, "IN_PROGRESS", 1)])
def test_progress_variants(dataset_root, options, first, end):
    with LocalVisualLayer(dataset_root, **options) as service:
        start = start_full(service)
        assert poll(service, start.json()["id"])["status"] == first
        assert finished(service, start)["progress"] == end


def test_full_json_export_with_images(local_vl, dataset_root):
    task = finished(local_vl, start_full(local_vl, export_format="json", include_images="true"))
    assert task["status"] == "COMPLETED"
    with open_zip(local_vl, task) as zf:
        payload = json.loads(zf.read("metadata.json"))
        images = {n for n in zf.namelist() if n.startswith("images/")}
        first = zf.read(f"images/{payload['media_items'][0]['file_path']}")
    items = items_of(dataset_root)
    assert payload["media_items"] == items
    assert set(payload["info"]) >= {"schema_version", "dataset", "description", "dataset_url", "export_time",
                                    "dataset_creation_time", "exported_by", "total_media_items"}
    assert payload["info"]["schema_version"] == "1.1" and payload["info"]["total_media_items"] == 8
    assert images == {f"images/{m['file_path']}" for m in items}
    assert first == (dataset_root / "ds-ready" / "images" / items[0]["file_path"]).read_bytes()


def test_full_parquet_export_without_images(local_vl, dataset_root):
    task = finished(local_vl, start_full(local_vl, export_format="parquet", include_images="false"))
    with open_zip(local_vl, task) as zf:
        assert zf.namelist() == ["metadata.parquet"]
        table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
    assert set(table.column_names) == {"media_id", "media_type", "file_name", "file_path", "file_size", "height",
                                       "width", "uniqueness_score", "url", "cluster_id", "metadata_items"}
    items = items_of(dataset_root)
    assert table.column("media_id").to_pylist() == [m["media_id"] for m in items]
    assert [json.loads(v) for v in table.column("metadata_items").to_pylist()] == [m["metadata_items"] for m in items]


@pytest.mark.parametrize("layout,nested", [("file_path", False), ("file_name", True), ("media_id", False)])
def test_selective_export_by_media_ids_holds_only_those(dataset_root, layout, nested):
    items = items_of(dataset_root)
    wanted = [items[0]["media_id"], items[5]["media_id"]]
    with LocalVisualLayer(dataset_root, image_layout=layout,
                          parquet_metadata_items="nested" if nested else "json") as service:
        task = finished(service, start_selective(service, {"media_ids": wanted}, export_format="parquet",
                                                 include_images="true"))
        assert task["entities_count"] == 2 and task["progress"] == 100
        with open_zip(service, task) as zf:
            table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
            images = sorted(n for n in zf.namelist() if n.startswith("images/"))
    assert table.column("media_id").to_pylist() == wanted
    expected = {"file_path": f"images/{items[0]['file_path']}", "file_name": f"images/{items[0]['file_name']}",
                "media_id": f"images/{items[0]['media_id']}.jpg"}[layout]
    assert expected in images and len(images) == 2
    first = table.column("metadata_items")[0].as_py()
    entries = first if nested else json.loads(first)
    assert entries[0]["type"] == "image_label" and entries[0]["properties"]["category_name"]


def test_selective_export_by_cluster_ids(local_vl, dataset_root):
    cluster = items_of(dataset_root)[0]["cluster_id"]
    task = finished(local_vl, start_selective(local_vl, {"cluster_ids": [cluster]}, export_format="json"))
    with open_zip(local_vl, task) as zf:
        assert zf.namelist() == ["metadata.json"]
        payload = json.loads(zf.read("metadata.json"))
    expected = [m for m in items_of(dataset_root) if m["cluster_id"] == cluster]
    assert payload["media_items"] == expected and task["entities_count"] == len(expected) < 8


def test_empty_selection_is_rejected(local_vl):
    start = start_selective(local_vl, {"media_ids": ["none"]})
    assert start.json()["status"] == "INIT"
    task = poll(local_vl, start.json()["id"])
    assert task["status"] == "REJECTED" and "empty" in task["result_message"] and task["download_uri"] is None


def test_minimal_start_response_variant(dataset_root):
    with LocalVisualLayer(dataset_root, minimal_start_response=True) as service:
        start = start_full(service)
        assert list(start.json()) == ["id"]
        assert finished(service, start)["status"] == "COMPLETED"


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize("header,ok", [
    (lambda: f"Bearer {token()}", True),
    (lambda: f"bearer {token()}", True),
    (lambda: None, False),
    (lambda: token(), False),
    (lambda: f"Bearer {token(secret='wrong-secret-0123456789abcdef01234')}", False),
    (lambda: f"Bearer {token(kid='other-key')}", False),
    (lambda: f"Bearer {token(sub='other-key')}", False),
    (lambda: f"Bearer {token(iss='someone')}", False),
    (lambda: f"Bearer {token(drop=('iat',))}", False),
    (lambda: f"Bearer {token(drop=('exp',))}", False),
    (lambda: f"Bearer {token(time.time() - 700)}", False),
])
def test_jwt_is_verified(local_vl_auth, header, ok):
    value = header()
    answer = requests.get(api(local_vl_auth, "ds-ready"), headers={"Authorization": value} if value else {})
    assert answer.status_code == (200 if ok else 401)
    if not ok:
        assert isinstance(answer.json()["detail"], str) and answer.headers["WWW-Authenticate"] == "Bearer"


def test_every_api_endpoint_needs_the_token_but_cdn_does_not(local_vl_auth):
    assert start_full(local_vl_auth).status_code == 401
    assert start_selective(local_vl_auth, {"media_ids": ["a"]}).status_code == 401
    auth = {"Authorization": f"Bearer {token()}"}
    start = requests.get(api(local_vl_auth, "ds-ready/export_context_async"), headers=auth)
    assert requests.get(api(local_vl_auth, "ds-ready/export_status"),
                        params={"export_task_id": start.json()["id"]}).status_code == 401
    task = finished(local_vl_auth, start, headers=auth)
    answer = download(local_vl_auth, task)  # no token: /cdn redirects, storage serves
    assert answer.status_code == 200 and answer.history[0].status_code == 302


def test_repr_hides_the_secret(dataset_root):
    with LocalVisualLayer(dataset_root, api_key=KEY, api_secret=SECRET) as service:
        assert SECRET not in repr(service) and KEY in repr(service) and service.url in repr(service)
        assert SECRET not in repr(vars(service))


# -- storage origin ---------------------------------------------------------------------------


@pytest.fixture
def cloud_vl(dataset_root):
    with LocalVisualLayer(dataset_root, download_uri_style="absolute") as service:
        yield service


def test_absolute_download_uri_is_presigned_afresh_at_each_poll(cloud_vl):
    start = start_full(cloud_vl)
    task = finished(cloud_vl, start)
    again = poll(cloud_vl, start.json()["id"])
    assert task["download_uri"].startswith(f"{cloud_vl.storage_url}/exports/ds-ready/")
    assert "X-Signature=" in task["download_uri"] and "X-Expires=" in task["download_uri"]
    assert download(cloud_vl, task).content == download(cloud_vl, again).content
    # The presigned host is the one the client used for the API.
    local = cloud_vl.url.replace("127.0.0.1", "localhost")
    by_name = requests.get(f"{local}/api/v1/dataset/ds-ready/export_status",
                           params={"export_task_id": start.json()["id"]}).json()
    assert urlsplit(by_name["download_uri"]).hostname == "localhost"


def test_storage_refuses_tokens_bad_signatures_and_expired_urls(cloud_vl):
    task = finished(cloud_vl, start_full(cloud_vl))
    url = task["download_uri"]
    with_token = requests.get(url, headers={"Authorization": "Bearer abc"})
    assert with_token.status_code == 400 and b"<Code>InvalidArgument</Code>" in with_token.content
    assert b"Only one auth mechanism allowed" in with_token.content
    for bad in (url.replace("X-Signature=", "X-Signature=0"), url.split("?")[0],
                url.replace("/exports/ds-ready/", "/exports/ds-indexing/")):
        refused = requests.get(bad)
        assert refused.status_code == 403 and refused.headers["Content-Type"] == "application/xml"
        assert b"<Code>AccessDenied</Code>" in refused.content
    cloud_vl.faults.expire_urls()
    expired = poll(cloud_vl, task["id"])["download_uri"]
    refused = requests.get(expired)
    assert refused.status_code == 403 and b"<Message>Request has expired</Message>" in refused.content
    assert requests.get(poll(cloud_vl, task["id"])["download_uri"]).status_code == 200
    assert requests.post(url).status_code == 405


def test_storage_ranges(cloud_vl):
    url = finished(cloud_vl, start_full(cloud_vl))["download_uri"]
    whole = requests.get(url)
    size = len(whole.content)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    assert int(whole.headers["Content-Length"]) == size and whole.headers["Content-Type"] == "application/zip"
    cases = {"bytes=10-19": (10, 19), "bytes=100-": (100, size - 1), "bytes=-30": (size - 30, size - 1),
             f"bytes=5-{size + 50}": (5, size - 1)}
    for asked, (first, last) in cases.items():
        part = requests.get(url, headers={"Range": asked})
        assert part.status_code == 206 and part.content == whole.content[first:last + 1]
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert int(part.headers["Content-Length"]) == last - first + 1 and part.headers["Accept-Ranges"] == "bytes"
    beyond = requests.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    assert requests.get(url, headers={"Range": "bytes=9-3"}).status_code == 200  # invalid: ignored
    head = requests.head(url)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size and head.content == b""


# -- faults -----------------------------------------------------------------------------------


def test_fail_next_answers_the_status_then_recovers(local_vl):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=4)
    answers = [requests.get(api(local_vl, "ds-ready")) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "4" and "Retry-After" not in answers[2].headers
    local_vl.faults.fail_next("export", 502, body="<html>bad gateway</html>", content_type="text/html")
    proxy = start_full(local_vl)
    assert proxy.status_code == 502 and proxy.headers["Content-Type"] == "text/html"
    assert proxy.text == "<html>bad gateway</html>"
    local_vl.faults.fail_next("selective_export", 422, detail=[{"loc": ["body"], "msg": "m", "type": "t"}])
    assert start_selective(local_vl, {"media_ids": ["a"]}).json()["detail"][0]["msg"] == "m"
    local_vl.faults.fail_next("storage", 503)
    local_vl.faults.fail_next("cdn", 500)
    local_vl.faults.fail_next("export_status", 429, retry_after=1)
    task_id = start_full(local_vl).json()["id"]
    assert requests.get(api(local_vl, "ds-ready/export_status"),
                        params={"export_task_id": task_id}).status_code == 429
    task = finished(local_vl, start_full(local_vl))
    assert download(local_vl, task).status_code == 500
    slow = download(local_vl, task)
    assert slow.status_code == 503 and slow.headers["Content-Type"] == "application/xml"
    assert download(local_vl, task).status_code == 200
    with pytest.raises(ValueError, match="endpoint"):
        local_vl.faults.fail_next("datasets", 500)


def test_break_download_after(local_vl):
    task = finished(local_vl, start_full(local_vl, include_images="true"))
    size = len(download(local_vl, task).content)
    local_vl.faults.break_download_after(100)
    location = download(local_vl, task, allow_redirects=False).headers["Location"]
    parts = urlsplit(location)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {size}".encode() in head and len(body) == 100
    assert len(download(local_vl, task).content) == size  # times=1: the next one is whole


def test_ignore_range_until_reset(local_vl):
    task = finished(local_vl, start_full(local_vl))
    local_vl.faults.ignore_range(times=1)
    assert download(local_vl, task, headers={"Range": "bytes=5-"}).status_code == 200
    assert download(local_vl, task, headers={"Range": "bytes=5-"}).status_code == 206
    local_vl.faults.ignore_range()
    assert [download(local_vl, task, headers={"Range": "bytes=5-"}).status_code for _ in range(3)] == [200] * 3
    local_vl.faults.reset()
    assert download(local_vl, task, headers={"Range": "bytes=5-"}).status_code == 206


def test_expire_urls_on_the_cdn_redirect(local_vl):
    task = finished(local_vl, start_full(local_vl))
    local_vl.faults.expire_urls(times=1)
    expired = download(local_vl, task)
    assert expired.status_code == 403 and b"expired" in expired.content
    assert download(local_vl, task).status_code == 200


def test_fail_exports(local_vl):
    local_vl.faults.fail_exports(result_message="boom", times=1)
    failed = finished(local_vl, start_full(local_vl))
    assert failed["status"] == "FAILED" and failed["result_message"] == "boom" and failed["download_uri"] is None
    assert finished(local_vl, start_full(local_vl))["status"] == "COMPLETED"
    local_vl.faults.fail_exports(result_message="too many entities", status="REJECTED")
    assert [finished(local_vl, start_full(local_vl))["status"] for _ in range(2)] == ["REJECTED"] * 2
    with pytest.raises(ValueError):
        local_vl.faults.fail_exports(status="COMPLETED")


def test_hold_exports_until_released_or_for_seconds(local_vl):
    local_vl.faults.hold_exports()
    task_id = start_full(local_vl).json()["id"]
    assert {poll(local_vl, task_id)["status"] for _ in range(6)} == {"IN_PROGRESS"}
    local_vl.faults.release_exports()
    assert poll(local_vl, task_id)["status"] == "COMPLETED"
    local_vl.faults.hold_exports(seconds=600)
    task_id = start_full(local_vl).json()["id"]
    assert {poll(local_vl, task_id)["status"] for _ in range(5)} == {"IN_PROGRESS"}
    local_vl.faults.reset()
    assert poll(local_vl, task_id)["status"] == "COMPLETED"


def test_a_stalled_download_is_released_by_reset(local_vl):
    task = finished(local_vl, start_full(local_vl))
    whole = download(local_vl, task).content
    local_vl.faults.stall_download_after(10, seconds=60)
    with download(local_vl, task, stream=True) as answer:
        head = answer.raw.read(10)  # the server now sits in the stall
        local_vl.faults.reset()
        assert head + answer.raw.read() == whole


# -- request log ------------------------------------------------------------------------------


def test_request_log_records_what_was_received(local_vl_auth):
    bearer = f"Bearer {token()}"
    requests.post(api(local_vl_auth, "ds-ready/export_entities_async"), params={"export_format": "json"},
                  json={"media_ids": ["x"]}, headers={"Authorization": bearer})
    requests.get(api(local_vl_auth, "ds-ready"))
    first, second = local_vl_auth.requests
    assert (first.origin, first.endpoint, first.method, first.status) == ("api", "selective_export", "POST", 200)
    assert first.path == "/api/v1/dataset/ds-ready/export_entities_async"
    assert first.query == {"export_format": "json"} and first.json == {"media_ids": ["x"]}
    assert first.headers["authorization"] == bearer and first.header("AUTHORIZATION") == bearer
    assert bearer not in repr(first) and bearer not in repr(first.headers)
    assert (second.endpoint, second.status, second.header("Authorization")) == ("dataset", 401, None)
    assert local_vl_auth.count("dataset") == 1 and local_vl_auth.count("dataset", status=200) == 0
    requests.get(f"{local_vl_auth.url}/nowhere")
    assert local_vl_auth.requests[-1].endpoint is None and local_vl_auth.requests[-1].status == 404
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = 500  # type: ignore[misc]
    local_vl_auth.clear_requests()
    assert local_vl_auth.requests == [] and local_vl_auth.count("dataset") == 0


# -- HTTP hygiene -----------------------------------------------------------------------------


def test_keep_alive_survives_errors_bodies_and_chunked_uploads(local_vl):
    parts = urlsplit(local_vl.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    path = "/api/v1/dataset/ds-ready"
    calls = [("GET", path, None, {}), ("POST", path, b'{"a": 1}', {"Content-Type": "application/json"}),
             ("GET", "/nowhere", None, {}),
             ("POST", f"{path}/export_entities_async", b'{"media_ids": 5}', {"Content-Type": "application/json"}),
             ("POST", f"{path}/export_entities_async", iter([b'{"media_ids": ', b'["none"]}']),
              {"Content-Type": "application/json"}),
             ("HEAD", path, None, {}), ("GET", path, None, {})]
    statuses, sockets = [], set()
    for method, url, body, headers in calls:
        conn.request(method, url, body=body, headers=headers, encode_chunked=not isinstance(body, (bytes, type(None))))
        sockets.add(id(conn.sock))
        answer = conn.getresponse()
        payload = answer.read()
        statuses.append(answer.status)
        assert int(answer.getheader("Content-Length")) == (len(payload) if method != "HEAD" else
                                                           int(answer.getheader("Content-Length")))
    conn.close()
    assert statuses == [200, 405, 404, 422, 200, 405, 200] and len(sockets) == 1
    records = local_vl.requests
    assert [r.endpoint for r in records] == ["dataset", None, None, "selective_export", "selective_export", None,
                                             "dataset"]
    assert [r.json for r in records] == [None, {"a": 1}, None, {"media_ids": 5}, {"media_ids": ["none"]}, None, None]


def test_malformed_request_gets_a_json_400(local_vl):
    parts = urlsplit(local_vl.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server closes after a malformed request
            received += chunk
    assert received.startswith(b"HTTP/1.1 400") and b"application/json" in received and b'"detail"' in received


# -- the service and write_dataset ------------------------------------------------------------


def test_service_lifecycle_and_arguments(dataset_root):
    service = LocalVisualLayer(dataset_root)
    with pytest.raises(RuntimeError, match="not started"):
        service.url
    service.start()
    session = requests.Session()
    try:
        url, work_dir = service.url, service._work_dir
        finished(service, start_full(service))
        assert any(work_dir.iterdir()) and url != service.storage_url
        assert session.get(f"{url}/api/v1/dataset/ds-ready").status_code == 200
    finally:
        service.stop()
    assert not work_dir.exists()
    with pytest.raises(requests.ConnectionError):  # its pooled keep-alive connection was closed too
        session.get(f"{url}/api/v1/dataset/ds-ready", timeout=5)
    service.stop()  # twice is fine
    for bad in ({"api_key": "k"}, {"download_uri_style": "cloud"}, {"image_layout": "flat"},
                {"parquet_metadata_items": "xml"}, {"export_polls": -1}):
        with pytest.raises(ValueError):
            LocalVisualLayer(dataset_root, **bad)


def test_write_dataset_is_deterministic_and_shaped_like_an_export(tmp_path):
    first = write_dataset(tmp_path / "a", "ds", n_items=6, n_clusters=2, seed=3)
    again = write_dataset(tmp_path / "b", "ds", n_items=6, n_clusters=2, seed=3)
    other = write_dataset(tmp_path / "c", "ds", n_items=6, n_clusters=2, seed=4)
    assert (first / "metadata.json").read_bytes() == (again / "metadata.json").read_bytes()
    assert (first / "metadata.json").read_bytes() != (other / "metadata.json").read_bytes()
    items = items_of(tmp_path / "a", "ds")
    assert len(items) == 6 and len({m["cluster_id"] for m in items}) == 2 and not (first / "dataset.json").exists()
    for item in items:
        image = first / "images" / item["file_path"]
        assert image.read_bytes()[:2] == b"\xff\xd8"  # a real JPEG
        assert image.read_bytes() == (again / "images" / item["file_path"]).read_bytes()
        assert re.fullmatch(r"\d+(\.\d\d)?(B|KB|MB)", item["file_size"]) and "/" in item["file_path"]
    kinds = {(e["type"], e["properties"].get("issue_type")) for m in items for e in m["metadata_items"]}
    assert kinds == {("image_label", None), ("issue", "duplicates"), ("issue", "blur")}
    duplicates = [e["properties"] for m in items for e in m["metadata_items"]
                  if e["properties"].get("issue_type") == "duplicates"]
    assert all({"duplicate_group_id", "duplicate_threshold", "confidence"} <= set(d) for d in duplicates)


def test_write_dataset_with_given_items_and_status(tmp_path):
    given = [{"media_id": "m1", "media_type": "image", "file_name": "a.jpg", "file_path": "x/a.jpg",
              "height": 10, "width": 20, "metadata_items": []}]
    folder = write_dataset(tmp_path, "mine", media_items=given, status="INDEXING")
    assert items_of(tmp_path, "mine") == given and "file_size" not in given[0]
    assert (folder / "images" / "x" / "a.jpg").is_file()
    assert json.loads((folder / "dataset.json").read_text()) == {"status_new": "INDEXING"}


def test_serve_runs_in_the_foreground_until_interrupted(dataset_root):
    code = "import sys; from vl_datasets.server import serve; serve(sys.argv[1], port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(dataset_root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        banner = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", banner).group(0)
        assert "ds-ready" in banner and "no auth" in banner
        assert requests.get(f"{url}/api/v1/dataset/ds-ready", timeout=5).json()["n_images"] == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()


def test_the_server_shares_no_code_with_the_client():
    # Only the contract is shared: a client bug must not be able to hide behind the same code here.
    for module in Path(vl_datasets.server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{module.name} imports from outside the server package"
                assert node.level == 1 or not (node.module or "").startswith("vl_datasets"), module.name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("vl_datasets") for alias in node.names), module.name
