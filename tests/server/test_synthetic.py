"""write_dataset: synthetic datasets in the service's layout, real JPEGs, deterministic."""

from __future__ import annotations

import json
import re

from tests.server.helpers import (
    items_of,
)
from vl_datasets.testing import write_dataset


def test_write_dataset_is_deterministic_and_shaped_like_an_export(tmp_path):
    first = write_dataset(tmp_path / "a", "ds", n_items=6, n_clusters=2, seed=3)
    again = write_dataset(tmp_path / "b", "ds", n_items=6, n_clusters=2, seed=3)
    other = write_dataset(tmp_path / "c", "ds", n_items=6, n_clusters=2, seed=4)
    assert (first / "metadata.json").read_bytes() == (again / "metadata.json").read_bytes()
    assert (first / "metadata.json").read_bytes() != (other / "metadata.json").read_bytes()
    items = items_of(tmp_path / "a", "ds")
    assert len(items) == 6
    assert len({m["cluster_id"] for m in items}) == 2
    assert not (first / "dataset.json").exists()
    for item in items:
        image = first / "images" / item["file_path"]
        assert image.read_bytes()[:2] == b"\xff\xd8", f"{image} is not a JPEG"  # a real JPEG
        assert image.read_bytes() == (again / "images" / item["file_path"]).read_bytes(), (
            f"{item['file_path']} differs between two runs with the same seed"
        )
        assert re.fullmatch(r"\d+(\.\d\d)?(B|KB|MB)", item["file_size"]), f"file_size {item['file_size']!r}"
        assert "/" in item["file_path"], f"{item['file_path']} is not in a folder"
    kinds = {(e["type"], e["properties"].get("issue_type")) for m in items for e in m["metadata_items"]}
    assert kinds == {("image_label", None), ("issue", "duplicates"), ("issue", "blur")}
    duplicates = [
        e["properties"] for m in items for e in m["metadata_items"] if e["properties"].get("issue_type") == "duplicates"
    ]
    assert all({"duplicate_group_id", "duplicate_threshold", "confidence"} <= set(d) for d in duplicates), (
        f"a duplicates issue lacks a field: {duplicates}"
    )


def test_write_dataset_with_given_items_and_status(tmp_path):
    given = [
        {
            "media_id": "m1",
            "media_type": "image",
            "file_name": "a.jpg",
            "file_path": "x/a.jpg",
            "height": 10,
            "width": 20,
            "metadata_items": [],
        }
    ]
    folder = write_dataset(tmp_path, "mine", media_items=given, status="INDEXING")
    assert items_of(tmp_path, "mine") == given
    assert "file_size" not in given[0]
    assert (folder / "images" / "x" / "a.jpg").is_file()
    assert json.loads((folder / "dataset.json").read_text()) == {"status_new": "INDEXING"}
