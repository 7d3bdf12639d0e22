"""The export ZIPs the service builds: full and selective, JSON and parquet, each image layout."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from tests.server.helpers import (
    PARQUET_COLUMNS,
    finished,
    items_of,
    open_zip,
    start_full,
    start_selective,
)
from vl_datasets.testing import LocalVisualLayer, write_dataset


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
    assert set(table.column_names) == PARQUET_COLUMNS
    items = items_of(dataset_root)
    assert table.column("media_id").to_pylist() == [m["media_id"] for m in items]
    # Every file name of ds-ready is unique: each image keeps its own name in the flat folder.
    assert table.column("image_filename").to_pylist() == [m["file_name"] for m in items]
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


def _frames(n_videos: int = 2) -> list[dict]:
    """Items whose file names repeat across folders, as video frames do, plus a case-only clash."""
    items = [
        {
            "media_id": f"{v}{f}-0000-4000-8000-000000000000",
            "media_type": "video_frame",
            "file_name": f"output_00000{f}.jpg",
            "file_path": f"videos/clip{v}.mp4/output_00000{f}.jpg",
            "height": 8,
            "width": 8,
            "metadata_items": [],
        }
        for v in range(n_videos)
        for f in range(2)
    ]
    for i, path in enumerate(("train/cat/Tabby.jpg", "val/cat/tabby.jpg", "train/dog/rex.png")):
        name = path.rsplit("/", 1)[1]
        items.append({"media_id": f"m{i}", "file_name": name, "file_path": path, "height": 8, "width": 8})
    return items


def test_parquet_export_lays_images_flat_named_by_image_filename(tmp_path):
    items = _frames()
    folder = write_dataset(tmp_path, "ds-ready", media_items=items)
    with LocalVisualLayer(tmp_path) as service:
        task = finished(service, start_full(service, export_format="parquet", include_images="true"))
        with open_zip(service, task) as zf:
            table = pq.read_table(io.BytesIO(zf.read("metadata.parquet")))
            images = {n: zf.read(n) for n in zf.namelist() if n.startswith("images/")}
    names = table.column("image_filename").to_pylist()
    assert sorted(images) == sorted(f"images/{name}" for name in names), "the images are not images/<image_filename>"
    assert all("/" not in name for name in names), f"images/ is not flat: {names}"
    assert len({name.lower() for name in names}) == len(items), f"two rows share an image name: {names}"
    expected = {
        **{m["media_id"]: f"{m['media_id']}.jpg" for m in items[:4]},  # output_00000{0,1}.jpg repeat
        "m0": "m0.jpg",  # Tabby.jpg and tabby.jpg would clash in a folder on macOS or Windows
        "m1": "m1.jpg",
        "m2": "rex.png",  # unique: keeps its name
    }
    assert dict(zip(table.column("media_id").to_pylist(), names)) == expected
    for item, name in zip(items, names):
        assert images[f"images/{name}"] == (folder / "images" / item["file_path"]).read_bytes(), (
            f"images/{name} is not the image of {item['file_path']}"
        )


def test_json_export_keeps_images_under_their_file_path(tmp_path):
    items = _frames()
    write_dataset(tmp_path, "ds-ready", media_items=items)
    with LocalVisualLayer(tmp_path) as service:
        task = finished(service, start_full(service, export_format="json", include_images="true"))
        with open_zip(service, task) as zf:
            images = sorted(n for n in zf.namelist() if n.startswith("images/"))
            payload = json.loads(zf.read("metadata.json"))
    assert images == sorted(f"images/{m['file_path']}" for m in items)
    assert all("image_filename" not in m for m in payload["media_items"])


def test_image_filename_never_depends_on_the_selection(tmp_path):
    # A chunk holding one frame of each video must still name it by media id: chunks of one dataset
    # are unpacked into one images/ folder, and its metadata-only export names the same files.
    items = _frames()
    write_dataset(tmp_path, "ds-ready", media_items=items)
    with LocalVisualLayer(tmp_path) as service:
        whole = finished(service, start_full(service, export_format="parquet", include_images="false"))
        one = finished(
            service,
            start_selective(
                service, {"media_ids": [items[0]["media_id"]]}, export_format="parquet", include_images="1"
            ),
        )
        with open_zip(service, whole) as zf:
            names = pq.read_table(io.BytesIO(zf.read("metadata.parquet"))).column("image_filename").to_pylist()
        with open_zip(service, one) as zf:
            assert zf.namelist() == ["metadata.parquet", f"images/{items[0]['media_id']}.jpg"]
    assert names[0] == f"{items[0]['media_id']}.jpg"
