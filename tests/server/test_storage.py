"""The download origin, like S3: presigned URLs that expire, Range support, XML errors."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests

from tests.server.helpers import (
    download,
    finished,
    poll,
    start_full,
)
from vl_datasets.testing import LocalVisualLayer


@pytest.fixture
def cloud_vl(dataset_root):
    with LocalVisualLayer(dataset_root, download_uri_style="absolute") as service:
        yield service


def test_absolute_download_uri_is_presigned_afresh_at_each_poll(cloud_vl):
    start = start_full(cloud_vl)
    task = finished(cloud_vl, start)
    again = poll(cloud_vl, start.json()["id"])
    assert task["download_uri"].startswith(f"{cloud_vl.storage_url}/exports/ds-ready/")
    assert "X-Signature=" in task["download_uri"]
    assert "X-Expires=" in task["download_uri"]
    assert download(cloud_vl, task).content == download(cloud_vl, again).content
    # The presigned host is the one the client used for the API.
    local = cloud_vl.url.replace("127.0.0.1", "localhost")
    by_name = requests.get(
        f"{local}/api/v1/dataset/ds-ready/export_status", params={"export_task_id": start.json()["id"]}
    ).json()
    assert urlsplit(by_name["download_uri"]).hostname == "localhost"


def test_storage_refuses_tokens_bad_signatures_and_expired_urls(cloud_vl):
    task = finished(cloud_vl, start_full(cloud_vl))
    url = task["download_uri"]
    with_token = requests.get(url, headers={"Authorization": "Bearer abc"})
    assert with_token.status_code == 400
    assert b"<Code>InvalidArgument</Code>" in with_token.content
    assert b"Only one auth mechanism allowed" in with_token.content
    for bad in (
        url.replace("X-Signature=", "X-Signature=0"),
        url.split("?")[0],
        url.replace("/exports/ds-ready/", "/exports/ds-indexing/"),
    ):
        refused = requests.get(bad)
        assert refused.status_code == 403, bad
        assert refused.headers["Content-Type"] == "application/xml", bad
        assert b"<Code>AccessDenied</Code>" in refused.content, bad
    cloud_vl.faults.expire_urls()
    expired = poll(cloud_vl, task["id"])["download_uri"]
    refused = requests.get(expired)
    assert refused.status_code == 403
    assert b"<Message>Request has expired</Message>" in refused.content
    assert requests.get(poll(cloud_vl, task["id"])["download_uri"]).status_code == 200
    assert requests.post(url).status_code == 405


def test_storage_ranges(cloud_vl):
    url = finished(cloud_vl, start_full(cloud_vl))["download_uri"]
    whole = requests.get(url)
    size = len(whole.content)
    assert whole.status_code == 200
    assert whole.headers["Accept-Ranges"] == "bytes"
    assert int(whole.headers["Content-Length"]) == size
    assert whole.headers["Content-Type"] == "application/zip"
    cases = {
        "bytes=10-19": (10, 19),
        "bytes=100-": (100, size - 1),
        "bytes=-30": (size - 30, size - 1),
        f"bytes=5-{size + 50}": (5, size - 1),
    }
    for asked, (first, last) in cases.items():
        part = requests.get(url, headers={"Range": asked})
        assert part.status_code == 206, asked
        assert part.content == whole.content[first : last + 1], f"{asked}: not the bytes asked for"
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}", asked
        assert int(part.headers["Content-Length"]) == last - first + 1, asked
        assert part.headers["Accept-Ranges"] == "bytes", asked
    beyond = requests.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"
    assert requests.get(url, headers={"Range": "bytes=9-3"}).status_code == 200  # invalid: ignored
    head = requests.head(url)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == size
    assert head.content == b""
