"""The local Visual Layer service itself, spoken to with plain HTTP: does it keep the contract?"""

from __future__ import annotations

import io
import json
import time
import zipfile

import jwt
import pyarrow.parquet as pq
import pytest
import requests

from vl_datasets.testing import LocalVisualLayer

SECRET = "secret-456-0123456789abcdef0123456789"


def api(service, path: str) -> str:
    return f"{service.url}/api/v1/dataset/{path}"


def completed_task(service, start: requests.Response) -> dict:
    assert start.status_code == 200, start.text
    task_id = start.json()["id"]
    for _ in range(50):
        task = requests.get(api(service, "ds-ready/export_status"), params={"export_task_id": task_id}).json()
        if task["status"] not in ("INIT", "IN_PROGRESS"):
            return task
    raise AssertionError("the export never finished")


def fetch_zip(service, task: dict) -> zipfile.ZipFile:
    answer = requests.get(service.url + task["download_uri"])
    assert answer.status_code == 200 and answer.history[0].status_code == 302
    return zipfile.ZipFile(io.BytesIO(answer.content))


def token(now: float | None = None, *, kid="key-123", sub="key-123", secret=SECRET, iss="sdk", life=600) -> str:
    now = int(time.time() if now is None else now)
    return jwt.encode({"sub": sub, "iat": now, "exp": now + life, "iss": iss}, secret, algorithm="HS256",
                      headers={"kid": kid})


def test_dataset_object_has_the_contract_fields(local_vl):
    body = requests.get(api(local_vl, "ds-ready")).json()
    for field in ("id", "display_name", "description", "created_at", "status_new", "status", "progress",
                  "n_images", "n_videos", "n_objects", "fatal_error_msg"):
        assert field in body
    assert body["status_new"] == "READY" and body["n_images"] == 8


def test_errors_are_fastapi_shaped(local_vl):
    missing = requests.get(api(local_vl, "nope"))
    assert missing.status_code == 404 and isinstance(missing.json()["detail"], str)
    busy = requests.get(api(local_vl, "ds-indexing/export_context_async"))
    assert busy.status_code == 409 and "READY" in busy.json()["detail"]
    bad = requests.get(api(local_vl, "ds-ready/export_context_async"), params={"export_format": "csv"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "export_format"]
    body = requests.post(api(local_vl, "ds-ready/export_entities_async"), json={"media_ids": "x"})
    assert body.status_code == 422 and body.json()["detail"][0]["loc"][0] == "body"
    both = requests.post(api(local_vl, "ds-ready/export_entities_async"), json={"media_ids": [], "cluster_ids": []})
    assert both.status_code == 422
    assert requests.get(api(local_vl, "ds-ready/export_status"), params={"export_task_id": "x"}).status_code == 404
    assert requests.post(api(local_vl, "ds-ready")).status_code == 405


@pytest.mark.parametrize("layout,nested", [("file_path", False), ("file_name", True), ("media_id", False)])
def test_export_zip_holds_the_selected_items(dataset_root, layout, nested):
    items = json.loads((dataset_root / "ds-ready" / "metadata.json").read_text())["media_items"]
    with LocalVisualLayer(dataset_root, image_layout=layout,
                          parquet_metadata_items="nested" if nested else "json") as service:
        start = requests.post(api(service, "ds-ready/export_entities_async"),
                              params={"export_format": "parquet", "include_images": "true"},
                              json={"media_ids": [items[0]["media_id"], items[5]["media_id"]]})
        task = completed_task(service, start)
        assert task["entities_count"] == 2 and task["progress"] == 100
        with fetch_zip(service, task) as zf:
            table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
            images = sorted(n for n in zf.namelist() if n.startswith("images/"))
    assert sorted(table.column("media_id").to_pylist()) == sorted([items[0]["media_id"], items[5]["media_id"]])
    expected = {"file_path": f"images/{items[0]['file_path']}", "file_name": f"images/{items[0]['file_name']}",
                "media_id": f"images/{items[0]['media_id']}.jpg"}[layout]
    assert expected in images and len(images) == 2
    first = table.column("metadata_items")[0].as_py()
    entries = first if nested else json.loads(first)
    assert entries[0]["type"] == "image_label" and entries[0]["properties"]["category_name"]


def test_json_export_without_images_and_by_cluster(local_vl, dataset_root):
    items = json.loads((dataset_root / "ds-ready" / "metadata.json").read_text())["media_items"]
    cluster = items[0]["cluster_id"]
    start = requests.post(api(local_vl, "ds-ready/export_entities_async"), params={"export_format": "json"},
                          json={"cluster_ids": [cluster]})
    with fetch_zip(local_vl, completed_task(local_vl, start)) as zf:
        assert zf.namelist() == ["metadata.json"]
        payload = json.loads(zf.read("metadata.json"))
    assert payload["info"]["schema_version"] == "1.1"
    assert {m["cluster_id"] for m in payload["media_items"]} == {cluster}


def test_export_progresses_through_in_progress(local_vl):
    start = requests.get(api(local_vl, "ds-ready/export_context_async"))
    assert start.json()["status"] == "INIT" and start.json()["download_uri"] is None
    seen = []
    for _ in range(10):
        task = requests.get(api(local_vl, "ds-ready/export_status"),
                            params={"export_task_id": start.json()["id"]}).json()
        seen.append((task["status"], task["progress"]))
        if task["status"] == "COMPLETED":
            break
    assert seen[0][0] == "IN_PROGRESS" and seen[-1] == ("COMPLETED", 100)
    assert [p for _, p in seen] == sorted(p for _, p in seen)


def test_empty_selection_is_rejected(local_vl):
    start = requests.post(api(local_vl, "ds-ready/export_entities_async"), json={"media_ids": ["none"]})
    task = completed_task(local_vl, start)
    assert task["status"] == "REJECTED" and task["result_message"]


@pytest.mark.parametrize("header,ok", [
    (lambda: f"Bearer {token()}", True),
    (lambda: None, False),
    (lambda: f"Bearer {token(secret='wrong-secret-0123456789abcdef01234')}", False),
    (lambda: f"Bearer {token(kid='other-key')}", False),
    (lambda: f"Bearer {token(sub='other-key')}", False),
    (lambda: f"Bearer {token(iss='someone')}", False),
    (lambda: f"Bearer {token(time.time() - 700)}", False),
])
def test_jwt_is_verified(local_vl_auth, header, ok):
    value = header()
    answer = requests.get(api(local_vl_auth, "ds-ready"), headers={"Authorization": value} if value else {})
    assert answer.status_code == (200 if ok else 401)
    if not ok:
        assert isinstance(answer.json()["detail"], str)


def test_storage_origin_behaves_like_object_storage(dataset_root):
    with LocalVisualLayer(dataset_root, download_uri_style="absolute") as service:
        task = completed_task(service, requests.get(api(service, "ds-ready/export_context_async")))
        url = task["download_uri"]
        assert url.startswith(service.storage_url + "/")
        whole = requests.get(url)
        assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
        size = len(whole.content)
        part = requests.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == whole.content[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
        beyond = requests.get(url, headers={"Range": f"bytes={size}-"})
        assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
        with_token = requests.get(url, headers={"Authorization": "Bearer abc"})
        assert with_token.status_code == 400 and b"Only one auth mechanism" in with_token.content
        forged = requests.get(url.replace("X-Signature=", "X-Signature=0"))
        assert forged.status_code == 403 and forged.headers["Content-Type"] == "application/xml"
        service.faults.expire_urls()
        expired = requests.get(api(service, "ds-ready/export_status"), params={"export_task_id": task["id"]})
        refused = requests.get(expired.json()["download_uri"])
        assert refused.status_code == 403 and b"expired" in refused.content


def test_faults_and_request_log(local_vl):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=4)
    answers = [requests.get(api(local_vl, "ds-ready")) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "4"
    assert local_vl.count("dataset") == 3 and local_vl.count("dataset", status=503) == 2
    local_vl.faults.fail_next("export", 502, body="<html>bad gateway</html>", content_type="text/html")
    proxy = requests.get(api(local_vl, "ds-ready/export_context_async"))
    assert proxy.status_code == 502 and proxy.headers["Content-Type"] == "text/html"
    local_vl.faults.fail_exports(result_message="boom", times=1)
    failed = completed_task(local_vl, requests.get(api(local_vl, "ds-ready/export_context_async")))
    assert failed["status"] == "FAILED" and failed["result_message"] == "boom"
    task = completed_task(local_vl, requests.get(api(local_vl, "ds-ready/export_context_async")))
    local_vl.faults.break_download_after(100)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(local_vl.url + task["download_uri"]).content
    local_vl.faults.ignore_range(times=1)
    assert requests.get(local_vl.url + task["download_uri"], headers={"Range": "bytes=5-"}).status_code == 200
    assert requests.get(local_vl.url + task["download_uri"], headers={"Range": "bytes=5-"}).status_code == 206
    local_vl.clear_requests()
    assert local_vl.requests == []


def test_minimal_start_response_variant(dataset_root):
    with LocalVisualLayer(dataset_root, minimal_start_response=True) as service:
        assert list(requests.get(api(service, "ds-ready/export_context_async")).json()) == ["id"]


def test_repr_hides_the_secret(dataset_root):
    with LocalVisualLayer(dataset_root, api_key="key-123", api_secret=SECRET) as service:
        assert SECRET not in repr(service) and "key-123" in repr(service)
