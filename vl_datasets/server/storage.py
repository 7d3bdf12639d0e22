"""The download origin, like S3: presigned URLs that expire, Range support, XML errors, no bearer tokens."""

from __future__ import annotations

import gzip
import re
import socket
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .handler import Handler

EXPORT_PATH = "/exports/{dataset_id}/{task_id}.zip"
_PATH = re.compile(r"^/exports/([^/]+)/([^/]+)\.zip$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024
_CODES = {
    400: "InvalidArgument",
    403: "AccessDenied",
    404: "NoSuchKey",
    405: "MethodNotAllowed",
    416: "InvalidRange",
    500: "InternalError",
    503: "SlowDown",
}


def xml_error(code: str, message: str) -> bytes:
    """An S3-style error document."""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()


def parse_range(header: str | None, total: int) -> tuple[int, int, int]:
    """``(status, start, end)`` for a Range header against a ``total``-byte file.

    200: no usable range, send it all (absent, malformed, several ranges: RFC 9110 says ignore);
    206: ``start``-``end`` inclusive; 416: nothing of the file is in the range.
    """
    match = _RANGE.match((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return 200, 0, total - 1
    first, last = match.group(1), match.group(2)
    if first == "":  # bytes=-N: the last N bytes
        suffix = int(last)
        if suffix == 0 or total == 0:
            return 416, 0, 0
        return 206, max(total - suffix, 0), total - 1
    start = int(first)
    if last and int(last) < start:
        return 200, 0, total - 1  # an invalid spec, not an unsatisfiable one
    if start >= total:
        return 416, 0, 0
    return 206, start, min(int(last), total - 1) if last else total - 1


class StorageHandler(Handler):
    """Serves built export ZIPs at presigned URLs."""

    origin = "storage"

    def refuse(
        self, status: int, message: Any, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Errors as S3 sends them: XML, never JSON."""
        body = xml_error(code or _CODES.get(status, "Error"), str(message))
        self.send(status, body, "application/xml", headers)

    def route_request(self) -> None:
        self.endpoint = "storage"
        forced = self.service.faults.take_forced("storage")
        if forced is not None:
            return self.send_forced(forced)
        if self.command not in ("GET", "HEAD"):
            return self.refuse(
                405, "The specified method is not allowed against this resource.", headers={"Allow": "GET, HEAD"}
            )
        if self.headers.get("Authorization") is not None:
            # S3 refuses a request that carries a presigned query AND a header: a leaked bearer shows here.
            return self.refuse(
                400,
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
            )
        match = _PATH.match(self.route)
        if match is None:
            return self.refuse(403, "Access Denied")
        refusal = self.service.signer.refusal(self.route, self.query)
        if refusal is not None:
            return self.refuse(403, refusal)
        job = self.service.jobs.get(match.group(2))
        if job is None or job.dataset_id != match.group(1) or job.status != "COMPLETED":
            return self.refuse(404, "The specified key does not exist.")
        self._send_file(job.zip_path)

    def _send_file(self, path: Path) -> None:
        try:
            total = path.stat().st_size
        except FileNotFoundError:  # the service is stopping and its work folder is gone
            return self.refuse(404, "The specified key does not exist.")
        status, start, end = parse_range(self.headers.get("Range"), total)
        if status == 206 and self.service.faults.take_ignore_range():
            status, start, end = 200, 0, total - 1
        misplaced = self.service.faults.take_misplaced_range() if status == 206 else None
        if misplaced is not None:
            start = min(misplaced, end)
        if status == 416:
            return self.send(
                416,
                xml_error("InvalidRange", "The requested range is not satisfiable"),
                "application/xml",
                {"Content-Range": f"bytes */{total}", "Accept-Ranges": "bytes"},
            )
        if status == 200 and self.service.faults.compresses(self.headers.get("Accept-Encoding", "")):
            return self._send_gzipped(path)
        length = end - start + 1
        self.record(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
        self.end_headers()
        if self.command != "HEAD":
            self._send_body(path, start, length)

    def _send_gzipped(self, path: Path) -> None:
        body = gzip.compress(path.read_bytes())
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_body(self, path: Path, start: int, length: int) -> None:
        faults = self.service.faults
        cut, stall = faults.take_break(), faults.take_stall()
        sent = 0
        with open(path, "rb") as source:
            source.seek(start)
            while sent < length:
                if stall is not None and sent >= stall[0]:
                    stall[2].wait(stall[1])
                    stall = None
                if cut is not None and sent >= cut:
                    # The injected break: headers promised more than this; drop the connection.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                limit = min(CHUNK, length - sent)
                for mark in (cut, stall[0] if stall is not None else None):
                    if mark is not None and mark > sent:
                        limit = min(limit, mark - sent)
                chunk = source.read(limit)
                if not chunk:  # the file shrank under us: never send less than promised silently
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
