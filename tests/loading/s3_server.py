"""moto's real S3 API on 127.0.0.1 with a fault switched on the server side: the next N requests
answer 503 SlowDown, as S3 does when it sheds load. It records every request for an object (GET or HEAD),
and apart from them every listing of a bucket, so a test can count what reached the storage whatever
the retry layers in between (botocore, s3fs, ours). ``get_delay_s`` holds each GET of an object that
long before it is answered, so downloads by several processes overlap."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class SlowDownS3:
    """A moto S3 server with a fresh bucket (``bucket``); use as a context manager."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from werkzeug.serving import make_server

        self.bucket = f"images-{uuid.uuid4().hex[:12]}"
        self.requests: list[str] = []
        self.get_delay_s = 0.0
        self.listings: list[str] = []  # "GET /bucket?list-type=2&prefix=...": a page of up to 1,000 objects each
        self._slow_downs = 0
        self._lock = threading.Lock()
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = make_server("127.0.0.1", 0, self._app, True, request_handler=MotoRequestHandler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def slow_down_next(self, count: int) -> None:
        """Answer the next ``count`` requests 503 SlowDown (0: the storm is over)."""
        with self._lock:
            self._slow_downs = count

    def object_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    def _app(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        with self._lock:
            query = environ.get("QUERY_STRING", "")
            if "list-type" in query or "prefix=" in query:
                self.listings.append(f"{environ['REQUEST_METHOD']} {path}?{query}")
            elif environ["REQUEST_METHOD"] in ("GET", "HEAD") and path.count("/") >= 2:  # /bucket/key: an object
                self.requests.append(f"{environ['REQUEST_METHOD']} {path}")
            slow_down = self._slow_downs > 0
            self._slow_downs -= slow_down
        if environ["REQUEST_METHOD"] == "GET" and path.count("/") >= 2 and self.get_delay_s:
            time.sleep(self.get_delay_s)
        if slow_down:
            body = b"" if environ["REQUEST_METHOD"] == "HEAD" else SLOW_DOWN
            start_response("503 Slow Down", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        return self._moto(environ, start_response)

    def __enter__(self) -> SlowDownS3:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def serving_folder(source, monkeypatch, prefix: str = "photos") -> Iterator[SlowDownS3]:
    """A ``SlowDownS3`` whose bucket holds the folder ``source`` under ``prefix`` (test credentials in
    the environment, for s3fs); ``server.fs`` is an s3fs filesystem on it."""
    import fsspec

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with SlowDownS3() as server:
        fs = fsspec.filesystem("s3", endpoint_url=server.endpoint, skip_instance_cache=True)
        fs.mkdir(server.bucket)
        fs.put(str(source), f"{server.bucket}/{prefix}", recursive=True)
        server.fs = fs
        yield server
