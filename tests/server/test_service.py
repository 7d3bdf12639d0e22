"""LocalVisualLayer itself: start, stop, its arguments, its repr, and serve() in the foreground."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest
import requests

from tests.server.helpers import (
    KEY,
    SECRET,
    finished,
    start_full,
)
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
    ):
        with pytest.raises(ValueError):
            LocalVisualLayer(dataset_root, **bad)


def test_repr_hides_the_secret(dataset_root):
    with LocalVisualLayer(dataset_root, api_key=KEY, api_secret=SECRET) as service:
        assert SECRET not in repr(service)
        assert KEY in repr(service)
        assert service.url in repr(service)
        assert SECRET not in repr(vars(service))


def test_serve_runs_in_the_foreground_until_interrupted(dataset_root):
    code = "import sys; from vl_datasets.server import serve; serve(sys.argv[1], port=0)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(dataset_root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        banner = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", banner).group(0)
        assert "ds-ready" in banner
        assert "no auth" in banner
        assert requests.get(f"{url}/api/v1/dataset/ds-ready", timeout=5).json()["n_images"] == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()
