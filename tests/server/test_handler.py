"""HTTP hygiene both origins share: keep-alive through errors and chunked bodies, malformed requests."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit


def test_keep_alive_survives_errors_bodies_and_chunked_uploads(local_vl):
    parts = urlsplit(local_vl.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    path = "/api/v1/dataset/ds-ready"
    calls = [
        ("GET", path, None, {}),
        ("POST", path, b'{"a": 1}', {"Content-Type": "application/json"}),
        ("GET", "/nowhere", None, {}),
        (
            "POST",
            f"{path}/export_entities_async?export_format=json",
            b'{"media_ids": 5}',
            {"Content-Type": "application/json"},
        ),
        (
            "POST",
            f"{path}/export_entities_async?export_format=json",
            iter([b'{"media_ids": ', b'["none"]}']),
            {"Content-Type": "application/json"},
        ),
        ("HEAD", path, None, {}),
        ("GET", path, None, {}),
    ]
    statuses, sockets = [], set()
    for method, url, body, headers in calls:
        conn.request(method, url, body=body, headers=headers, encode_chunked=not isinstance(body, (bytes, type(None))))
        sockets.add(id(conn.sock))
        answer = conn.getresponse()
        payload = answer.read()
        statuses.append(answer.status)
        assert int(answer.getheader("Content-Length")) == (
            len(payload) if method != "HEAD" else int(answer.getheader("Content-Length"))
        ), f"{method} {url}: Content-Length does not match the body"
    conn.close()
    assert statuses == [200, 405, 404, 422, 200, 405, 200]
    assert len(sockets) == 1
    records = local_vl.requests
    assert [r.endpoint for r in records] == [
        "dataset",
        None,
        None,
        "selective_export",
        "selective_export",
        None,
        "dataset",
    ]
    assert [r.json for r in records] == [None, {"a": 1}, None, {"media_ids": 5}, {"media_ids": ["none"]}, None, None]


def test_malformed_request_gets_a_json_400(local_vl):
    parts = urlsplit(local_vl.url)
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):  # the server closes after a malformed request
            received += chunk
    assert received.startswith(b"HTTP/1.1 400")
    assert b"application/json" in received
    assert b'"detail"' in received
