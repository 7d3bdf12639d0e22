"""Export jobs: INIT -> IN_PROGRESS -> COMPLETED driven by polls, and the task's variants."""

from __future__ import annotations

import pytest

from tests.server.helpers import (
    finished,
    poll,
    start_full,
    start_selective,
)
from vl_datasets.testing import LocalVisualLayer

TASK_FIELDS = {
    "id",
    "dataset_id",
    "created_at",
    "download_uri",
    "progress",
    "status",
    "entities_count",
    "result_message",
}


def test_export_progresses_deterministically(local_vl):
    start = start_full(local_vl)
    assert set(start.json()) == TASK_FIELDS
    assert start.json()["status"] == "INIT"
    assert start.json()["download_uri"] is None
    seen = [poll(local_vl, start.json()["id"]) for _ in range(4)]
    assert [t["status"] for t in seen] == ["IN_PROGRESS", "IN_PROGRESS", "COMPLETED", "COMPLETED"]
    progress = [t["progress"] for t in seen]
    assert progress == sorted(progress)
    assert 0 < progress[0] < progress[1] < 100 == progress[2]
    assert seen[1]["download_uri"] is None
    assert seen[2]["download_uri"] == f"/cdn/ds-ready/images/{start.json()['id']}/{start.json()['id']}.zip"
    assert seen[2]["entities_count"] == 8
    assert seen[2]["dataset_id"] == "ds-ready"


@pytest.mark.parametrize(
    "options,first,end",
    [({"export_polls": 0}, "COMPLETED", 100), ({"progress_scale": 1, "export_polls": 1}, "IN_PROGRESS", 1)],
)
def test_progress_variants(dataset_root, options, first, end):
    with LocalVisualLayer(dataset_root, **options) as service:
        start = start_full(service)
        assert poll(service, start.json()["id"])["status"] == first
        assert finished(service, start)["progress"] == end


def test_empty_selection_is_rejected(local_vl):
    start = start_selective(local_vl, {"media_ids": ["none"]})
    assert start.json()["status"] == "INIT"
    task = poll(local_vl, start.json()["id"])
    assert task["status"] == "REJECTED"
    assert "empty" in task["result_message"]
    assert task["download_uri"] is None


def test_minimal_start_response_variant(dataset_root):
    with LocalVisualLayer(dataset_root, minimal_start_response=True) as service:
        start = start_full(service)
        assert list(start.json()) == ["id"]
        assert finished(service, start)["status"] == "COMPLETED"
