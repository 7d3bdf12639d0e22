"""What both origins share: answering, recording what was received, FastAPI-shaped errors."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .faults import ForcedAnswer


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the service received it, and the status it answered."""

    origin: str
    endpoint: str | None
    method: str
    path: str
    query: dict
    headers: dict = field(repr=False)
    status: int
    json: Any = None

    def header(self, name: str) -> str | None:
        """A header's value, whatever its case."""
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())


class RequestLog:
    """Thread-safe list of RecordedRequest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []

    def add(self, record: RecordedRequest) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class Handler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 with a Content-Length on every answer, and a record of each request."""

    protocol_version = "HTTP/1.1"
    origin = "?"

    def log_message(self, format: str, *args: Any) -> None:  # the request log replaces stderr noise
        pass

    @property
    def service(self):
        return self.server.service  # type: ignore[attr-defined]

    def parse(self) -> None:
        parts = urlsplit(self.path)
        self.route = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        self.endpoint: str | None = None
        self.body_json: Any = None
        if self.body:
            try:
                self.body_json = json.loads(self.body)
            except ValueError:
                self.body_json = None

    def record(self, status: int) -> None:
        self.service.log.add(RecordedRequest(self.origin, self.endpoint, self.command, self.route, dict(self.query),
                                             dict(self.headers.items()), status, self.body_json))

    def send(self, status: int, body: bytes = b"", content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        self.record(status)  # before answering: a client that has its answer sees the record
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json", headers)

    def send_detail(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        self.send_json(status, {"detail": detail}, headers)

    def send_forced(self, forced: ForcedAnswer) -> None:
        headers = {"Retry-After": f"{forced.retry_after:g}"} if forced.retry_after is not None else {}
        if forced.body is not None:
            self.send(forced.status, forced.body.encode(), forced.content_type or "text/plain", headers)
        else:
            self.send_detail(forced.status, forced.detail if forced.detail is not None else f"Injected {forced.status}",
                             headers)
