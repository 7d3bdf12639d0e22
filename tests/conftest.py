from __future__ import annotations

import pytest

from vl_datasets import Client
from vl_datasets.testing import LocalVisualLayer, write_dataset

API_KEY = "key-123"
# 32+ bytes: PyJWT warns about shorter HS256 keys (InsecureKeyLengthWarning) on every sign and verify.
API_SECRET = "secret-456-0123456789abcdef0123456789"


@pytest.fixture
def dataset_root(tmp_path_factory):
    """Two datasets: "ds-ready" (8 items, 3 clusters, real JPEGs) and "ds-indexing" (not exportable)."""
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root, "ds-ready", n_items=8, n_clusters=3)
    write_dataset(root, "ds-indexing", n_items=2, status="INDEXING", seed=1)
    return root


@pytest.fixture
def local_vl(dataset_root):
    """An on-prem service (no auth) over dataset_root."""
    with LocalVisualLayer(dataset_root) as service:
        yield service


@pytest.fixture
def quick_vl(dataset_root):
    """Exports complete at the first poll: for code under test that waits with real sleeps."""
    with LocalVisualLayer(dataset_root, export_polls=0) as service:
        yield service


@pytest.fixture
def quick_client(quick_vl):
    """A client of quick_vl that never sleeps between polls or retries, and reads no VL_* variables."""
    return Client(quick_vl.url, progress=False, env={}, sleep=lambda s: None)


@pytest.fixture
def local_vl_auth(dataset_root):
    """A cloud-style service: every /api/v1 request needs a token signed for API_KEY with API_SECRET."""
    with LocalVisualLayer(dataset_root, api_key=API_KEY, api_secret=API_SECRET) as service:
        yield service


@pytest.fixture
def s3_root(monkeypatch):
    """A bucket on a real S3 API (moto) on loopback, set as fsspec's s3 endpoint: a cache root shared by machines."""
    import fsspec.config
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint, "skip_instance_cache": True})
    assert requests.put(f"{endpoint}/shared-bucket", timeout=10).status_code == 200
    yield "s3://shared-bucket/vl-cache"
    server.stop()


@pytest.fixture
def export(tmp_path):
    """A 40-item synthetic export folder (cat/dog/bird, duplicates and blur issues)."""
    return write_dataset(tmp_path, "x", n_items=40)
