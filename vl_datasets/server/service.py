"""``LocalVisualLayer``: the API origin and the storage origin, started together in threads."""

from __future__ import annotations

import contextlib
import shutil
import socket
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .api import ApiHandler
from .archive import IMAGE_LAYOUTS, METADATA_ITEM_ENCODINGS
from .datasets import DatasetStore
from .faults import Faults
from .handler import MAX_BODY_BYTES
from .indexes import IndexStore
from .jobs import DEFAULT_MAX_ENTITIES_PER_EXPORT, DEFAULT_MAX_IMAGES_PER_EXPORT, ExportJob, JobRunner, TaskState
from .log import RecordedRequest, RequestLog
from .signing import Signer
from .storage import EXPORT_PATH, StorageHandler
from .tokens import TokenVerifier

DOWNLOAD_URI_STYLES = ("relative", "absolute")
# How often an idle serve loop checks for stop(): short, because test suites stop a service per test.
POLL_INTERVAL_S = 0.01


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Reusing the address lets `serve` restart at once on the same port; port 0 never collides.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, service: LocalVisualLayer) -> None:
        super().__init__(address, handler)
        self.service = service
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End open keep-alive connections: a stopped service must not answer a pooled one."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer (a killed fetch, an injected break) is normal here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, OSError)):
            super().handle_error(request, client_address)


class LocalVisualLayer:
    """A local Visual Layer service over a folder of datasets (layout: ``vl_datasets.server.datasets``).

    A context manager (or ``start()``/``stop()``) that serves two origins on free ports: ``url``,
    the API (give it to a client, which appends /api/v1), and ``storage_url``, where presigned
    download URLs point. ``faults`` switches failures on; ``requests`` lists what was received.
    With ``api_key`` and ``api_secret`` it verifies signed tokens like the cloud; without, it is
    an on-prem server with no auth. The other arguments select the contract's variants:
    ``download_uri_style`` "relative" (on-prem /cdn path) or "absolute" (cloud presigned URL);
    ``progress_scale`` 100 or 1; ``export_polls``, the IN_PROGRESS polls before COMPLETED;
    ``image_layout`` "platform" (the docs' layout per format: ``images/<file_path>`` for JSON, a flat
    ``images/<image_filename>`` for Parquet) or one naming forced on both formats, "file_path" |
    "file_name" | "media_id"; ``parquet_metadata_items``
    "json" | "nested"; ``minimal_start_response``, start answers holding only ``{"id"}``;
    ``max_images_per_export`` and ``max_entities_per_export``, the platform's limits: a larger export
    (with images, or without) ends REJECTED with "exceeds threshold", as clients expect.
    ``max_body_bytes``: the largest request body taken; a larger one is answered 413, as a proxy
    in front of the platform would answer a selection of too many ids for one request.
    ``index_dir``: where the columnar form of each metadata.json is kept (``indexes``); by default
    a folder of the service's own, removed on stop, so each start indexes its datasets again.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_port: int = 0,
        api_key: str | None = None,
        api_secret: str | None = None,
        download_uri_style: str = "relative",
        progress_scale: float = 100,
        export_polls: int = 2,
        presign_ttl_s: float = 300,
        image_layout: str = "platform",
        parquet_metadata_items: str = "json",
        minimal_start_response: bool = False,
        max_images_per_export: int = DEFAULT_MAX_IMAGES_PER_EXPORT,
        max_entities_per_export: int = DEFAULT_MAX_ENTITIES_PER_EXPORT,
        max_body_bytes: int = MAX_BODY_BYTES,
        index_dir: str | Path | None = None,
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("api_key and api_secret go together: give both (cloud auth) or neither (on-prem).")
        for name, value, allowed in (
            ("download_uri_style", download_uri_style, DOWNLOAD_URI_STYLES),
            ("image_layout", image_layout, IMAGE_LAYOUTS),
            ("parquet_metadata_items", parquet_metadata_items, METADATA_ITEM_ENCODINGS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}.")
        if export_polls < 0 or presign_ttl_s <= 0 or progress_scale <= 0:
            raise ValueError("export_polls must be >= 0; presign_ttl_s and progress_scale > 0.")
        if max_images_per_export < 1 or max_entities_per_export < 1 or max_body_bytes < 1:
            raise ValueError("max_images_per_export, max_entities_per_export and max_body_bytes must be >= 1.")
        self.root = Path(root)
        self.host, self.port, self.storage_port = host, port, storage_port
        self.download_uri_style = download_uri_style
        self.progress_scale = progress_scale
        self.export_polls = export_polls
        self.image_layout = image_layout
        self.parquet_metadata_items = parquet_metadata_items
        self.minimal_start_response = minimal_start_response
        self.max_images_per_export, self.max_entities_per_export = max_images_per_export, max_entities_per_export
        self.max_body_bytes = max_body_bytes
        self.api_key = api_key
        # Both or neither (checked above).
        self._verifier = TokenVerifier(api_key, api_secret) if api_key is not None and api_secret is not None else None
        self.faults = Faults()
        self.log = RequestLog()
        self.index_dir = None if index_dir is None else Path(index_dir)
        self._datasets: DatasetStore | None = None
        self.signer = Signer(presign_ttl_s)
        self.jobs: JobRunner | None = None
        self._work_dir: Path | None = None
        self._servers: list[_Server] = []

    def __repr__(self) -> str:
        auth = f"api_key={self.api_key!r}" if self.api_key else "on-prem"
        url = self.url if self._servers else None
        return f"LocalVisualLayer(root={str(self.root)!r}, url={url!r}, {auth})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalVisualLayer:
        """Bind both origins and serve them in daemon threads; returns self."""
        if self._servers:
            raise RuntimeError("This LocalVisualLayer is already started.")
        # Exports live in a folder of their own, removed on stop: nothing is written under root.
        self._work_dir = Path(tempfile.mkdtemp(prefix="vl_local_service_"))
        self._datasets = DatasetStore(self.root, IndexStore(self.index_dir or self._work_dir / "index"))
        self.jobs = JobRunner(
            self._work_dir,
            self.faults,
            export_polls=self.export_polls,
            image_layout=self.image_layout,
            parquet_metadata_items=self.parquet_metadata_items,
            max_images_per_export=self.max_images_per_export,
            max_entities_per_export=self.max_entities_per_export,
        )
        try:
            self._servers.append(_Server((self.host, self.port), ApiHandler, self))
            self._servers.append(_Server((self.host, self.storage_port), StorageHandler, self))
        except BaseException:
            self.stop()
            raise
        for server, name in zip(self._servers, ("api", "storage")):
            threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": POLL_INTERVAL_S},
                name=f"vl-local-{name}",
                daemon=True,
            ).start()
        return self

    def stop(self) -> None:
        """Stop both origins, let running builds end, and remove the exports. Safe to call twice."""
        self.faults.reset()  # wakes stalled downloads and held jobs so no thread lingers
        # Each shutdown waits out one poll of its serve loop: stop both at once, not one after the other.
        stoppers = [threading.Thread(target=server.shutdown) for server in self._servers]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in self._servers:
            server.server_close()
            server.close_connections()
        self._servers = []
        if self._datasets is not None:
            self._datasets.indexes.close()
            self._datasets = None
        if self.jobs is not None:
            self.jobs.close()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None

    def __enter__(self) -> LocalVisualLayer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def datasets(self) -> DatasetStore:
        """The datasets served (while started)."""
        if self._datasets is None:
            raise RuntimeError("The LocalVisualLayer is not started: use it as a context manager or call start().")
        return self._datasets

    @property
    def url(self) -> str:
        """The API origin, e.g. ``http://127.0.0.1:53211`` (the client appends /api/v1)."""
        return self._origin(0, None)

    @property
    def storage_url(self) -> str:
        """The storage origin that presigned URLs point to."""
        return self._origin(1, None)

    def _origin(self, index: int, host_header: str | None) -> str:
        if not self._servers:
            raise RuntimeError("The LocalVisualLayer is not started: use it as a context manager or call start().")
        port = self._servers[index].server_address[1]
        # The host the client reached us by (Host header), so "localhost" stays "localhost".
        host = host_header.rsplit(":", 1)[0] if host_header and not host_header.endswith("]") else host_header
        host = host or self.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # a bare IPv6 bind address
        return f"http://{host}:{port}"

    # -- the request log -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        return self.log.snapshot()

    def count(self, endpoint: str, *, status: int | None = None) -> int:
        """How many requests hit ``endpoint`` (optionally: answered with ``status``)."""
        return sum(1 for r in self.log.snapshot() if r.endpoint == endpoint and (status is None or r.status == status))

    def clear_requests(self) -> None:
        """Forget the requests received so far."""
        self.log.clear()

    # -- what the handlers share -----------------------------------------------------------

    def auth_refusal(self, authorization: str | None) -> str | None:
        """None when an API request may proceed (always, on-prem), else why it gets a 401."""
        return None if self._verifier is None else self._verifier.refusal(authorization)

    def presign(self, job: ExportJob | TaskState, *, host: str | None = None) -> str:
        """A freshly signed storage URL for a completed job's ZIP."""
        path = EXPORT_PATH.format(dataset_id=job.dataset_id, task_id=job.id)
        return self.signer.presign(self._origin(1, host), path, expired=self.faults.take_expired_url())

    def task_json(self, state: TaskState, *, host: str | None = None) -> dict[str, Any]:
        """The export task of the contract (§4)."""
        uri = None
        if state.status == "COMPLETED":
            if self.download_uri_style == "absolute":
                uri = self.presign(state, host=host)  # signed at every poll, like the cloud
            else:
                uri = f"/cdn/{state.dataset_id}/images/{state.id}/{state.id}.zip"
        return {
            "id": state.id,
            "dataset_id": state.dataset_id,
            "created_at": state.created_at,
            "download_uri": uri,
            "progress": round(state.progress * self.progress_scale, 4),
            "status": state.status,
            "entities_count": state.entities_count,
            "result_message": state.result_message,
        }
