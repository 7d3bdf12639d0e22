"""The export ZIPs the service builds: full and selective, JSON and parquet, each image layout."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from tests.server.helpers import (
    finished,
    items_of,
    open_zip,
    start_full,
    start_selective,
)
from vl_datasets.testing import LocalVisualLayer


def test_full_json_export_with_images(local_vl, dataset_root):
    task = finished(local_vl, start_full(local_vl, export_format="json", include_images="true"))
    assert task["status"] == "COMPLETED"
    with open_zip(local_vl, task) as zf:
        payload = json.loads(zf.read("metadata.json"))
        images = {n for n in zf.namelist() if n.startswith("images/")}
        first = zf.read(f"images/{payload['media_items'][0]['file_path']}")
    items = items_of(dataset_root)
    assert payload["media_items"] == items
    assert set(payload["info"]) >= {
        "schema_version",
        "dataset",
        "description",
        "dataset_url",
        "export_time",
        "dataset_creation_time",
        "exported_by",
        "total_media_items",
    }
    assert payload["info"]["schema_version"] == "1.1"
    assert payload["info"]["total_media_items"] == 8
    assert images == {f"images/{m['file_path']}" for m in items}
    assert first == (dataset_root / "ds-ready" / "images" / items[0]["file_path"]).read_bytes()


def test_full_parquet_export_without_images(local_vl, dataset_root):
    task = finished(local_vl, start_full(local_vl, export_format="parquet", include_images="false"))
    with open_zip(local_vl, task) as zf:
        assert zf.namelist() == ["metadata.parquet"]
        table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
    assert set(table.column_names) == {
        "media_id",
        "media_type",
        "file_name",
        "file_path",
        "file_size",
        "height",
        "width",
        "uniqueness_score",
        "url",
        "cluster_id",
        "metadata_items",
    }
    items = items_of(dataset_root)
    assert table.column("media_id").to_pylist() == [m["media_id"] for m in items]
    assert [json.loads(v) for v in table.column("metadata_items").to_pylist()] == [m["metadata_items"] for m in items]


@pytest.mark.parametrize("layout,nested", [("file_path", False), ("file_name", True), ("media_id", False)])
def test_selective_export_by_media_ids_holds_only_those(dataset_root, layout, nested):
    items = items_of(dataset_root)
    wanted = [items[0]["media_id"], items[5]["media_id"]]
    with LocalVisualLayer(
        dataset_root, image_layout=layout, parquet_metadata_items="nested" if nested else "json"
    ) as service:
        task = finished(
            service, start_selective(service, {"media_ids": wanted}, export_format="parquet", include_images="true")
        )
        assert task["entities_count"] == 2
        assert task["progress"] == 100
        with open_zip(service, task) as zf:
            table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
            images = sorted(n for n in zf.namelist() if n.startswith("images/"))
    assert table.column("media_id").to_pylist() == wanted
    expected = {
        "file_path": f"images/{items[0]['file_path']}",
        "file_name": f"images/{items[0]['file_name']}",
        "media_id": f"images/{items[0]['media_id']}.jpg",
    }[layout]
    assert expected in images
    assert len(images) == 2
    first = table.column("metadata_items")[0].as_py()
    entries = first if nested else json.loads(first)
    assert entries[0]["type"] == "image_label"
    assert entries[0]["properties"]["category_name"]


def test_selective_export_by_cluster_ids(local_vl, dataset_root):
    cluster = items_of(dataset_root)[0]["cluster_id"]
    task = finished(local_vl, start_selective(local_vl, {"cluster_ids": [cluster]}, export_format="json"))
    with open_zip(local_vl, task) as zf:
        assert zf.namelist() == ["metadata.json"]
        payload = json.loads(zf.read("metadata.json"))
    expected = [m for m in items_of(dataset_root) if m["cluster_id"] == cluster]
    assert payload["media_items"] == expected
    assert task["entities_count"] == len(expected) < 8
