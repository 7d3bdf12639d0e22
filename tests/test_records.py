"""Record parsing: the status spellings, dataset and export task variants the contract says to accept."""

from __future__ import annotations

import pytest

from vl_datasets import errors
from vl_datasets.records import DatasetInfo, ExportTask, normalize_status


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("READ ONLY", "READ_ONLY"),
        ("read_only", "READ_ONLY"),
        ("Partial Index", "PARTIAL_INDEX"),
        ("CANCELLED", "CANCELED"),
        # Contract §3: case, spaces and underscores are ignored, so a spelling without separators is the same status.
        ("ReadOnly", "READ_ONLY"),
        ("READONLY", "READ_ONLY"),
        ("PARTIALINDEX", "PARTIAL_INDEX"),
        ("InProgress", "IN_PROGRESS"),
        (" Ready ", "READY"),
        ("Some New State", "SOME_NEW_STATE"),  # not in the contract: kept readable
    ],
)
def test_status_spellings(raw, expected):
    assert normalize_status(raw) == expected


def test_dataset_prefers_status_new_over_legacy_status():
    info = DatasetInfo.from_json(
        {
            "id": "d",
            "status_new": "Ready",
            "status": "INDEXING",
            "n_images": 3,
            "created_at": "2025-02-10T14:41:14.390429",
        }
    )
    assert info.ready
    assert info.n_images == 3
    assert info.created_at.year == 2025
    assert DatasetInfo.from_json({"id": "d", "status": "INDEXING"}).status == "INDEXING"


def test_a_read_only_status_spelt_without_separators_is_read_only_and_not_exportable():
    info = DatasetInfo.from_json({"id": "d", "status_new": "ReadOnly"})
    assert (info.status, info.ready) == ("READ_ONLY", False)


def test_export_task_variants():
    minimal = ExportTask.from_json({"id": "t"}, dataset_id="d")
    assert minimal.status == "INIT"
    assert minimal.dataset_id == "d"
    assert not minimal.is_terminal
    real = ExportTask.from_json(
        {
            "id": "t",
            "dataset_id": "d2",
            "created_at": "2025-02-10T14:41:14.390429",
            "download_uri": None,
            "progress": 0.0,
            "status": "INIT",
            "entities_count": 4203,
            "result_message": None,
        },
        dataset_id="d",
    )
    assert real.dataset_id == "d2"
    assert real.entities_count == 4203
    with pytest.raises(errors.ResponseValidationError):
        ExportTask.from_json({"status": "INIT"}, dataset_id="d")
    with pytest.raises(errors.ResponseValidationError):
        ExportTask.from_json(["not", "an", "object"], dataset_id="d")
