"""A static HTTP server of images on 127.0.0.1 for the remote-source tests: real sockets, no mocks.

Faults are switched on the server side (a first-byte latency, the next N answers a 503, the next N
answers hung or trickled a byte at a time), and it records every path asked for (a GET's in
``requests``, a HEAD's in ``heads``), so a test can count what reached the network. It stops
itself after ``lifetime_s`` even if a test forgets to, so a hung test cannot leave it serving.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class ImageServer:
    """Serves the files under ``root`` at ``url``; use as a context manager. ``roots_by_query``:
    other folders served for a request of that exact query string (an endpoint that picks a
    version of its images by query)."""

    def __init__(
        self,
        root: Path,
        *,
        latency_s: float = 0.0,
        lifetime_s: float = 60.0,
        roots_by_query: dict[str, Path] | None = None,
    ) -> None:
        self.root, self.latency_s, self.lifetime_s = Path(root), latency_s, lifetime_s
        self.roots_by_query = {query: Path(folder) for query, folder in (roots_by_query or {}).items()}
        self.requests: list[str] = []
        self.heads: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self._failures: list[int] = []
        self._slow: list[tuple[str, float]] = []
        self._stopped = threading.Event()  # ends hung and trickling answers when the server stops
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests with ``status``."""
        with self._lock:
            self._failures += [status] * count

    def hang_next(self, count: int) -> None:
        """Send nothing at all to the next ``count`` requests (until the server stops)."""
        with self._lock:
            self._slow += [("hang", 0.0)] * count

    def trickle_next(self, count: int, every_s: float) -> None:
        """Answer the next ``count`` requests with headers at once, then one byte every ``every_s``."""
        with self._lock:
            self._slow += [("trickle", every_s)] * count

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> ImageServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.lifetime_s, self._server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def file(self, raw_path: str) -> Path | None:
        """The file a request of ``raw_path`` is answered with; None where there is none."""
        parts = urlsplit(raw_path)
        root = self.roots_by_query.get(parts.query, self.root)
        path = (root / unquote(parts.path).lstrip("/")).resolve()
        return path if path.is_file() and root.resolve() in path.parents else None

    def _slowness(self) -> tuple[str, float] | None:
        with self._lock:
            return self._slow.pop(0) if self._slow else None

    def _answer(self, raw_path: str) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append(raw_path)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            status = self._failures.pop(0) if self._failures else None
        try:
            time.sleep(self.latency_s)
            if status is not None:
                return status, b"SlowDown"
            path = self.file(raw_path)
            return (404, b"not found") if path is None else (200, path.read_bytes())
        finally:
            with self._lock:
                self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a batch's connections opened at once,
    # and the client's retransmission a second later would read as read latency.
    request_queue_size = 128


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object storage does

        def do_GET(self) -> None:
            status, body = server._answer(self.path)
            slowness = server._slowness()
            if slowness is not None and slowness[0] == "hang":
                server._stopped.wait(server.lifetime_s)
                return
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if slowness is None:
                self.wfile.write(body)
                return
            for byte in body:  # a trickle: never idle long enough for a per-read timeout to fire
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                if server._stopped.wait(slowness[1]):
                    return

        def do_HEAD(self) -> None:
            with server._lock:
                server.heads.append(self.path)
            path = server.file(self.path)
            self.send_response(200 if path is not None else 404)
            self.send_header("Content-Length", str(path.stat().st_size if path is not None else 0))
            self.end_headers()

        def log_message(self, format, *args) -> None:  # quiet: pytest shows what matters
            pass

    return Handler
