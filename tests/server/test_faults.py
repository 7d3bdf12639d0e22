"""Faults switched on from the test, applied by the service to the requests it answers."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest
import requests

from tests.server.helpers import (
    api,
    download,
    finished,
    poll,
    start_full,
    start_selective,
)


def test_fail_next_answers_the_status_then_recovers(local_vl):
    local_vl.faults.fail_next("dataset", 503, times=2, retry_after=4)
    answers = [requests.get(api(local_vl, "ds-ready")) for _ in range(3)]
    assert [a.status_code for a in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "4"
    assert "Retry-After" not in answers[2].headers
    local_vl.faults.fail_next("export", 502, body="<html>bad gateway</html>", content_type="text/html")
    proxy = start_full(local_vl)
    assert proxy.status_code == 502
    assert proxy.headers["Content-Type"] == "text/html"
    assert proxy.text == "<html>bad gateway</html>"
    local_vl.faults.fail_next("selective_export", 422, detail=[{"loc": ["body"], "msg": "m", "type": "t"}])
    assert start_selective(local_vl, {"media_ids": ["a"]}).json()["detail"][0]["msg"] == "m"
    local_vl.faults.fail_next("storage", 503)
    local_vl.faults.fail_next("cdn", 500)
    local_vl.faults.fail_next("export_status", 429, retry_after=1)
    task_id = start_full(local_vl).json()["id"]
    assert requests.get(api(local_vl, "ds-ready/export_status"), params={"export_task_id": task_id}).status_code == 429
    task = finished(local_vl, start_full(local_vl))
    assert download(local_vl, task).status_code == 500
    slow = download(local_vl, task)
    assert slow.status_code == 503
    assert slow.headers["Content-Type"] == "application/xml"
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
    assert f"Content-Length: {size}".encode() in head
    assert len(body) == 100
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
    assert expired.status_code == 403
    assert b"expired" in expired.content
    assert download(local_vl, task).status_code == 200


def test_fail_exports(local_vl):
    local_vl.faults.fail_exports(result_message="boom", times=1)
    failed = finished(local_vl, start_full(local_vl))
    assert failed["status"] == "FAILED"
    assert failed["result_message"] == "boom"
    assert failed["download_uri"] is None
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
