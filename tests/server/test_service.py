"""LocalVisualLayer itself: start, stop, its arguments, its repr, and serve() in the foreground."""

from __future__ import annotations

import os
import re
import threading

import pytest
import requests

from tests.server.helpers import (
    KEY,
    SECRET,
    finished,
    start_full,
)
from tests.waits import cpu_of, wait_until
from vl_datasets.server import serve
from vl_datasets.testing import LocalVisualLayer


def test_service_lifecycle_and_arguments(dataset_root):
    service = LocalVisualLayer(dataset_root)
    with pytest.raises(RuntimeError, match="not started"):
        service.url
    service.start()
    session = requests.Session()
    try:
        url, work_dir = service.url, service._work_dir
        finished(service, start_full(service))
        assert any(work_dir.iterdir()), "the export left nothing in the service's work folder"
        assert url != service.storage_url
        assert session.get(f"{url}/api/v1/dataset/ds-ready").status_code == 200
    finally:
        service.stop()
    assert not work_dir.exists()
    with pytest.raises(requests.ConnectionError):  # its pooled keep-alive connection was closed too
        session.get(f"{url}/api/v1/dataset/ds-ready", timeout=5)
    service.stop()  # twice is fine
    for bad in (
        {"api_key": "k"},
        {"download_uri_style": "cloud"},
        {"image_layout": "flat"},
        {"parquet_metadata_items": "xml"},
        {"export_polls": -1},
        {"max_images_per_export": 0},
        {"max_entities_per_export": 0},
    ):
        with pytest.raises(ValueError):
            LocalVisualLayer(dataset_root, **bad)


def test_repr_hides_the_secret(dataset_root):
    with LocalVisualLayer(dataset_root, api_key=KEY, api_secret=SECRET) as service:
        assert SECRET not in repr(service)
        assert KEY in repr(service)
        assert service.url in repr(service)
        assert SECRET not in repr(vars(service))


def test_serve_runs_in_the_foreground_until_asked_to_stop(dataset_root, capfd):
    # Signals are the CLI's test (tests/cli/test_serve.py); here serve() runs in a thread, where it
    # installs no handler, and stops when its event is set.
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(dataset_root,), kwargs={"port": 0, "stop": stop}, daemon=True)
    thread.start()
    printed = []

    def banner() -> str:
        printed.append(capfd.readouterr().out)
        return "".join(printed)

    try:  # serve() runs in this process: its CPU time (polling here uses a few ms a second) is the progress
        wait_until(lambda: "http://" in banner(), "serve()'s banner", progress=cpu_of(os.getpid()))
        url = re.search(r"http://127\.0\.0\.1:\d+", banner())
        assert url is not None, f"serve's banner names no URL: {banner()!r}"
        assert "ds-ready" in banner()
        assert "no auth" in banner()
        assert requests.get(f"{url.group(0)}/api/v1/dataset/ds-ready", timeout=5).json()["n_images"] == 8
    finally:
        stop.set()
        wait_until(
            lambda: not thread.is_alive(), "serve() to return after its stop event", progress=cpu_of(os.getpid())
        )
    assert "stopped (request)" in capfd.readouterr().err
    with pytest.raises(NotADirectoryError):
        serve(dataset_root / "nope", port=0, stop=stop)
