"""moto's S3 API serving a folder's files from a bucket, with an injected first-byte latency.

    python benchmarks/s3_server.py ROOT --latency-ms 50

The S3 counterpart of static_server.py for bench_remote.py (moto is in the ``test`` extra): the
files of ROOT are uploaded to the bucket ``bench`` under ``photos/``, then every GET or HEAD of an
object and every listing waits ``latency-ms`` before it is answered. It counts the requests by
kind; ``GET /__requests`` (not counted) answers them as JSON, and ``GET /__bytes`` the bytes of
the answers' bodies by kind (what a reader downloaded: bench_shared_peers.py). It prints ``port <n>`` once the files
are in, and exits when its standard input closes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

COUNTS, BYTES = "/__requests", "/__bytes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request would drown the benchmark's

    moto = DomainDispatcherApplication(create_backend_app)
    counts: dict[str, int] = {}
    sent: dict[str, int] = {}
    lock = threading.Lock()
    armed = threading.Event()  # no latency while the files are uploaded

    def app(environ, start_response):
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        if path in (COUNTS, BYTES):
            with lock:
                body = json.dumps(counts if path == COUNTS else sent).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        kind = "LIST" if "list-type" in query or "prefix=" in query else method
        if armed.is_set() and kind in ("GET", "HEAD", "LIST"):
            with lock:
                counts[kind] = counts.get(kind, 0) + 1
            time.sleep(args.latency_ms / 1000)
            return counted(kind, moto(environ, start_response))
        return moto(environ, start_response)

    def counted(kind: str, body):
        try:
            for chunk in body:
                with lock:
                    sent[kind] = sent.get(kind, 0) + len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()

    server = make_server("127.0.0.1", 0, app, True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    upload(args.root, endpoint)
    armed.set()
    print(f"port {server.server_address[1]}", flush=True)
    sys.stdin.read()  # returns at EOF: the parent is gone
    server.shutdown()


def upload(root: Path, endpoint: str) -> None:
    import fsspec

    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("bench")
    fs.put(str(root), "bench/photos", recursive=True)


if __name__ == "__main__":
    main()
