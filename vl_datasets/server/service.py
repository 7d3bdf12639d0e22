"""``LocalVisualLayer``: the API origin and the storage origin, started together in threads."""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from .api import ApiHandler
from .archive import IMAGE_LAYOUTS
from .faults import Faults
from .http import RecordedRequest, RequestLog
from .jobs import ExportJob, JobRunner
from .storage import Signer, StorageHandler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, service) -> None:
        super().__init__(address, handler)
        self.service = service

    def handle_error(self, request, client_address) -> None:
        # A client that hangs up mid-answer (a killed fetch, a broken download) is normal here.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class LocalVisualLayer:
    """A local Visual Layer service over a folder of datasets (see ``vl_datasets.server.datasets``).

    Use as a context manager; ``url`` is the API origin to give ``Client``. ``faults`` switches
    failures on, ``requests`` lists what was received. With ``api_key`` and ``api_secret`` it
    verifies signed tokens like the cloud; without, it is an on-prem server with no auth.
    """

    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int = 0, storage_port: int = 0,
                 api_key: str | None = None, api_secret: str | None = None, download_uri_style: str = "relative",
                 progress_scale: float = 100, export_polls: int = 2, presign_ttl_s: float = 300,
                 image_layout: str = "file_path", parquet_metadata_items: str = "json",
                 minimal_start_response: bool = False) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("api_key and api_secret go together.")
        if download_uri_style not in ("relative", "absolute") or image_layout not in IMAGE_LAYOUTS:
            raise ValueError("download_uri_style is relative|absolute; image_layout is one of " + str(IMAGE_LAYOUTS))
        if parquet_metadata_items not in ("json", "nested"):
            raise ValueError("parquet_metadata_items is json|nested")
        self.root = Path(root)
        self.host, self.port, self.storage_port = host, port, storage_port
        self.api_key, self.api_secret = api_key, api_secret
        self.download_uri_style = download_uri_style
        self.progress_scale = progress_scale
        self.minimal_start_response = minimal_start_response
        self.faults = Faults()
        self.log = RequestLog()
        self.signer = Signer(secrets.token_bytes(32), presign_ttl_s)
        self._work_dir = Path(tempfile.mkdtemp(prefix="vl_local_service_"))
        self.jobs = JobRunner(self._work_dir, self.faults, export_polls=export_polls, image_layout=image_layout,
                              parquet_metadata_items=parquet_metadata_items)
        self._servers: list[_Server] = []

    def __repr__(self) -> str:
        auth = f"key {self.api_key!r}" if self.api_key else "none"
        return f"LocalVisualLayer(root={str(self.root)!r}, url={self.url if self._servers else None!r}, auth={auth})"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LocalVisualLayer:
        self._servers = [_Server((self.host, self.port), ApiHandler, self),
                         _Server((self.host, self.storage_port), StorageHandler, self)]
        for server in self._servers:
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.faults.release_exports()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers = []
        shutil.rmtree(self._work_dir, ignore_errors=True)

    def __enter__(self) -> LocalVisualLayer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return self._origin(self._servers[0], None)

    @property
    def storage_url(self) -> str:
        return self._origin(self._servers[1], None)

    def _origin(self, server: _Server, host_header: str | None) -> str:
        host = host_header.rsplit(":", 1)[0] if host_header else self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{server.server_address[1]}"

    # -- what the handlers share -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.log.snapshot()

    def count(self, endpoint: str, *, status: int | None = None) -> int:
        """How many requests hit ``endpoint`` (optionally: answered with ``status``)."""
        return sum(1 for r in self.log.snapshot() if r.endpoint == endpoint and (status is None or r.status == status))

    def clear_requests(self) -> None:
        self.log.clear()

    def presign(self, job: ExportJob, *, host: str | None = None) -> str:
        base = self._origin(self._servers[1], host)
        return self.signer.presign(base, job.dataset_id, job.id, expired=self.faults.take_expired_url())

    def task_json(self, job: ExportJob, *, host: str | None = None) -> dict:
        """The export task of the contract (§4)."""
        uri = None
        if job.status == "COMPLETED":
            if self.download_uri_style == "absolute":
                uri = self.presign(job, host=host)
            else:
                uri = f"/cdn/{job.dataset_id}/images/{job.id}/{job.id}.zip"
        return {"id": job.id, "dataset_id": job.dataset_id, "created_at": job.created_at, "download_uri": uri,
                "progress": round(self.jobs.progress(job) * self.progress_scale, 2), "status": job.status,
                "entities_count": len(job.items), "result_message": job.result_message}


def serve(root: str | Path, *, host: str = "127.0.0.1", port: int = 2080, storage_port: int = 0,
          api_key: str | None = None, api_secret: str | None = None, **options) -> None:
    """Run the service in the foreground until interrupted."""
    service = LocalVisualLayer(root, host=host, port=port, storage_port=storage_port, api_key=api_key,
                               api_secret=api_secret, **options).start()
    print(f"Local Visual Layer service at {service.url} (downloads from {service.storage_url}); Ctrl-C stops it.",
          flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
