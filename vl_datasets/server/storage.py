"""The download origin, like S3: presigned URLs that expire, Range support, no bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlencode

from .http import Handler

_PATH = re.compile(r"^/exports/([^/]+)/([^/]+)\.zip$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 64 * 1024


def _xml_error(code: str, message: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()


class Signer:
    """Signs and checks presigned paths with a key that lives only in this process."""

    def __init__(self, key: bytes, ttl_s: float) -> None:
        self.key = key
        self.ttl_s = ttl_s

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, base_url: str, dataset_id: str, task_id: str, *, expired: bool = False) -> str:
        path = f"/exports/{dataset_id}/{task_id}.zip"
        expires = str(int(time.time() - 60 if expired else time.time() + self.ttl_s))
        return f"{base_url}{path}?{urlencode({'X-Expires': expires, 'X-Signature': self._signature(path, expires)})}"

    def check(self, path: str, query: dict) -> str | None:
        """None when the URL is valid, else the S3-style reason it is refused."""
        expires, signature = query.get("X-Expires", ""), query.get("X-Signature", "")
        if not expires.isdigit() or not hmac.compare_digest(signature, self._signature(path, expires)):
            return "The request signature we calculated does not match the signature you provided."
        if int(expires) < time.time():
            return "Request has expired"
        return None


class StorageHandler(Handler):
    origin = "storage"

    def do_GET(self) -> None:
        self.parse()
        self.endpoint = "storage"
        forced = self.service.faults.take_forced("storage")
        if forced is not None:
            return self.send_forced(forced)
        if self.headers.get("Authorization"):
            return self.send(400, _xml_error("InvalidArgument", "Only one auth mechanism allowed"), "application/xml")
        match = _PATH.match(self.route)
        refusal = self.service.signer.check(self.route, self.query) if match else "No such key"
        if refusal is not None:
            return self.send(403, _xml_error("AccessDenied", refusal), "application/xml")
        job = self.service.jobs.get(match.group(2))
        if job is None or job.status != "COMPLETED":
            return self.send(404, _xml_error("NoSuchKey", "The specified key does not exist."), "application/xml")
        self._send_file(job.zip_path)

    def _send_file(self, path: Path) -> None:
        total = path.stat().st_size
        start, end, status = 0, total - 1, 200
        asked = _RANGE.match(self.headers.get("Range", "").strip())
        if asked and not self.service.faults.take_ignore_range():
            start = int(asked.group(1))
            end = min(int(asked.group(2)), total - 1) if asked.group(2) else total - 1
            if start >= total or start > end:
                return self.send(416, b"", "application/xml", {"Content-Range": f"bytes */{total}"})
            status = 206
        length = end - start + 1
        self.record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        cut = self.service.faults.take_break()
        stall = self.service.faults.take_stall()
        with open(path, "rb") as source:
            source.seek(start)
            sent = 0
            while sent < length:
                if stall is not None and sent >= stall[0]:
                    self.wfile.flush()
                    time.sleep(stall[1])
                    stall = None
                if cut is not None and sent >= cut:  # the injected break: drop the connection mid-body
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                limit = length - sent
                if cut is not None:
                    limit = min(limit, cut - sent)
                if stall is not None:
                    limit = min(limit, stall[0] - sent)
                chunk = source.read(min(CHUNK, limit))
                self.wfile.write(chunk)
                sent += len(chunk)
