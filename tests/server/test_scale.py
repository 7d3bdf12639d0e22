"""A million items through the local service: indexed from metadata.json by streaming, exported in the
background, downloaded by the real client within its default timeouts, in bounded memory."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests

from tests.server.helpers import PARQUET_COLUMNS, api, poll
from tests.server.process import ServeProcess
from vl_datasets import fetch_export
from vl_datasets.api.client import Client
from vl_datasets.testing import LocalVisualLayer, write_metadata_dataset

N_ITEMS = 1_000_000
# The service held every item as Python dicts before: about 3 GB per million items. Streamed, it
# holds a record batch at a time (measured: about 0.5 GB at a million); the bound leaves room for
# allocators and slower machines, and still fails if the items are ever held whole again.
PEAK_RSS_BOUND_BYTES = 1_500 << 20
POLLS = 200


@pytest.fixture(scope="module")
def million(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("million")
    write_metadata_dataset(root, "million", N_ITEMS)
    return root


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where both tests' services keep the dataset's columnar form: the first builds it, the second reuses it."""
    return tmp_path_factory.mktemp("index")


def _peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status gives no VmHWM")


def test_a_million_items_export_end_to_end_within_default_timeouts(million, index_dir, tmp_path):
    with ServeProcess("--root", str(million), "--index-dir", str(index_dir)) as serve:
        client = Client(serve.url, progress=False)  # the defaults: 30 s per request, 5 retries
        entry = fetch_export(
            "million", client=client, export_format="parquet", include_images=False, cache_dir=tmp_path / "cache"
        )
        peak = _peak_rss_bytes(serve.proc.pid)
        assert serve.stop() == 0, serve.stderr
    table = pq.read_table(entry.metadata_path, columns=["media_id", "image_filename"])
    assert table.num_rows == N_ITEMS
    assert set(pq.read_schema(entry.metadata_path).names) == PARQUET_COLUMNS
    assert table.column("media_id").null_count == 0
    assert entry.task.entities_count == N_ITEMS
    assert peak < PEAK_RSS_BOUND_BYTES, f"the service peaked at {peak / 2**20:.0f} MiB serving {N_ITEMS:,} items"


def test_start_export_answers_before_the_export_is_built(million, index_dir):
    with LocalVisualLayer(million, index_dir=index_dir) as service:
        start = requests.get(
            api(service, "million/export_context_async"),
            params={"file_name": "export.zip", "export_format": "parquet", "include_images": "false"},
        )
        answered = time.monotonic()
        assert start.status_code == 200, start.text
        job = service.jobs.get(start.json()["id"])
        assert not job.built.is_set(), "start_export answered only once the export was built"
        assert start.json()["status"] == "INIT"
        statuses = []
        for _ in range(POLLS):
            task = poll(service, start.json()["id"], "million")
            statuses.append(task["status"])
            if task["status"] not in ("INIT", "IN_PROGRESS"):
                break
        assert statuses[0] == "IN_PROGRESS"
        assert statuses[-1] == "COMPLETED", f"the export ended {statuses[-1]}: {task['result_message']}"
        assert task["entities_count"] == N_ITEMS
        assert task["progress"] == 100
        assert job.built_at is not None and job.built_at > answered, "the export was built before start answered"
