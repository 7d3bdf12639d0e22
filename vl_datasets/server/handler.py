"""What both origins share: reading a request, answering it with a Content-Length, recording it."""

from __future__ import annotations

import contextlib
import json
import re
import time
import traceback
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .faults import ForcedAnswer
from .log import Headers, RecordedRequest

_ECHOED_HEADER = re.compile(rb"\{header:([A-Za-z0-9-]+)\}")
# The default limit on a request body (``LocalVisualLayer(max_body_bytes=)``): a local service has no
# business receiving more, and refusing keeps a runaway client from filling memory.
MAX_BODY_BYTES = 16 << 20


def json_bytes(payload: Any) -> bytes:
    """JSON the way Starlette's JSONResponse writes it: compact, UTF-8, no NaN.

    Byte-exactness matters: the docs' shell scripts read fields with ``grep -o '"id":"[^"]*'``.
    """
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode()


class BadRequest(Exception):
    """The request cannot be read: answered ``status`` (400) and the connection closed."""

    status = 400


class BodyTooLarge(BadRequest):
    """A body over the service's limit: 413, as a proxy's ``client_max_body_size`` answers it."""

    status = 413


class Handler(BaseHTTPRequestHandler):
    """Base handler: HTTP/1.1 keep-alive, a Content-Length on every answer, a record of each request.

    Subclasses set ``origin``, implement ``route_request`` (called once the request is read) and
    ``refuse`` (an error answer in the origin's own format: JSON for the API, XML for storage).
    """

    protocol_version = "HTTP/1.1"
    origin = "?"
    # An idle keep-alive connection is dropped after this long instead of holding a thread forever.
    timeout = 60
    # Headers and body go out in two writes; with Nagle on, a keep-alive client's delayed ACK
    # stalls each answer ~40 ms.
    disable_nagle_algorithm = True

    # Defaults for answers sent before (or instead of) ``parse``: a malformed request line.
    route = ""
    answered = False
    query: Mapping[str, str] = MappingProxyType({})  # read-only: a shared default must not be filled
    endpoint: str | None = None
    body = b""
    body_json: Any = None

    # -- one entry point for every method: unknown methods get the origin's 404/405, not a 501 --

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def _handle(self) -> None:
        # One handler object serves every request of a keep-alive connection: start each one clean.
        self.answered, self.endpoint, self.body, self.body_json = False, None, b"", None
        self.route, self.query = "", {}
        try:
            self.parse()
        except BadRequest as exc:
            self.close_connection = True  # what is left of the body is unread: the stream is lost
            return self.refuse(exc.status, str(exc), headers={"Connection": "close"})
        try:
            self.route_request()
        except Exception:
            if self.answered:
                raise  # mid-answer: the connection is dropped, which the client sees as such
            # A bug or an unreadable dataset folder: answer 500 like the platform, keep serving.
            traceback.print_exc()
            self.close_connection = True
            self.refuse(500, "Internal Server Error", headers={"Connection": "close"})

    def route_request(self) -> None:  # pragma: no cover - every origin overrides it
        raise NotImplementedError

    def refuse(
        self, status: int, message: Any, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def service(self) -> Any:
        """The LocalVisualLayer this server belongs to."""
        return self.server.service  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces stderr noise

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised by http.server itself (bad request line, oversized headers), in our format."""
        self.close_connection = True
        if not str(getattr(self, "request_version", "")).startswith("HTTP/1."):
            # An unparsable request line leaves http.server assuming HTTP/0.9, which answers with no
            # status line or headers at all; no client of ours speaks 0.9.
            self.request_version = "HTTP/1.1"
        self.refuse(int(code), message or HTTPStatus(code).phrase, headers={"Connection": "close"})

    # -- reading ---------------------------------------------------------------------------

    def parse(self) -> None:
        """Split the path, decode the query, and read the whole body so keep-alive stays in step."""
        parts = urlsplit(self.path)
        self.route = parts.path
        # The last value of a repeated name wins, as in Starlette's QueryParams.
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.body = self._read_body()
        if self.body:
            # The API decides whether a body that is no JSON (or nests past what json.loads takes) is an error.
            with contextlib.suppress(ValueError, RecursionError):
                self.body_json = json.loads(self.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw = self.headers.get("Content-Length")
        if raw is None:
            return b""
        if not raw.strip().isdigit():
            raise BadRequest(f"Invalid Content-Length: {raw!r}")
        length, limit = int(raw), self._max_body_bytes()
        if length > limit:
            raise BodyTooLarge(f"Request body over {limit} bytes")
        return self.rfile.read(length)

    def _max_body_bytes(self) -> int:
        return int(self.service.max_body_bytes)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("Invalid chunked body") from None
            if size == 0:
                # Trailers, if any, end with an empty line.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(body)
            if len(body) + size > self._max_body_bytes():
                raise BodyTooLarge(f"Request body over {self._max_body_bytes()} bytes")
            body += self.rfile.read(size)
            self.rfile.readline(3)  # the CRLF after each chunk

    # -- answering -------------------------------------------------------------------------

    def record(self, status: int) -> None:
        """Log this request with the status it is answered."""
        self.answered = True
        headers = getattr(self, "headers", None)
        self.service.log.add(
            RecordedRequest(
                self.origin,
                self.endpoint,
                self.command or "",
                self.route,
                dict(self.query),
                Headers(headers.items() if headers is not None else ()),
                status,
                self.body_json,
            )
        )

    def send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: dict[str, str] | None = None,
        *,
        drip_s: float | None = None,
    ) -> None:
        """Answer with ``body`` (not sent for HEAD) and its Content-Length, and no Content-Type when
        ``content_type`` is None; with ``drip_s``, the body a byte every ``drip_s`` seconds, until
        the client hangs up."""
        self.record(status)  # before answering: a client that has its answer sees the record
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if drip_s is None:
            self.wfile.write(body)
            return
        try:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(drip_s)
        except OSError:  # the client gave up: what a trickled answer is there to make it do
            self.close_connection = True

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        """Answer a JSON document, byte for byte as FastAPI's JSONResponse renders it."""
        self.send(status, json_bytes(payload), "application/json", headers)

    def send_forced(self, forced: ForcedAnswer) -> None:
        """Answer a fault switched on with ``Faults.fail_next``, echoing what it names of the request."""
        headers = {"Retry-After": f"{forced.retry_after:g}"} if forced.retry_after is not None else {}
        if forced.body is not None:
            body = forced.body.encode() if isinstance(forced.body, str) else forced.body
            content_type = forced.content_type or "text/plain"
            return self.send(forced.status, self._echoed(body), content_type, headers, drip_s=forced.drip_s)
        detail = forced.detail if forced.detail is not None else f"Injected {forced.status}"
        self.refuse(forced.status, json.loads(self._echoed(json.dumps(detail).encode())), headers=headers)

    def _echoed(self, text: bytes) -> bytes:
        """``text`` with ``{header:<Name>}`` replaced by the request's header, ``{token}`` by the
        Authorization header's credential and ``{query}`` by the query string: servers and storage
        services that repeat what they were sent. (Our clients' headers and queries need no JSON escape.)"""
        token = self.headers.get("Authorization", "").partition(" ")[2]
        text = text.replace(b"{query}", urlsplit(self.path).query.encode("latin-1"))
        text = text.replace(b"{token}", token.encode("latin-1"))
        return _ECHOED_HEADER.sub(lambda m: self.headers.get(m.group(1).decode(), "").encode("latin-1"), text)
