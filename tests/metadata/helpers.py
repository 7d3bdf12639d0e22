"""One export's metadata in every shape contract §6 allows, and the writers that put it on disk."""

from __future__ import annotations

import copy
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vl_datasets.errors import SchemaError
from vl_datasets.metadata.read import read_metadata_file

INFO = {
    "schema_version": "1.1",
    "dataset": "pets",
    "description": "",
    "dataset_url": "https://app.visual-layer.com/d",
    "export_time": "2025-02-10T14:41:14",
    "dataset_creation_time": "2025-02-01T00:00:00",
    "exported_by": "someone",
    "total_media_items": 4,
}


CAT, VIDEO_A, VIDEO_B, BARE = ("9f1c1c8e-0000-4000-8000-00000000000" + str(i) for i in range(4))


def _label(name, source, original_id=-1):
    return {"type": "image_label", "properties": {"category_name": name, "source": source, "original_id": original_id}}


def _issue(issue_type, confidence, **extra):
    return {"type": "issue", "properties": {"issue_type": issue_type, "confidence": confidence, **extra}}


MEDIA_ITEMS = [
    {
        "media_id": CAT,
        "media_type": "image",
        "file_name": "cat_01.jpg",
        "file_path": "train/cat/cat_01.jpg",
        "file_size": "48.27KB",
        "height": 375,
        "width": 500,
        "uniqueness_score": 0.8123,
        "url": f"https://app.visual-layer.com/dataset/d/data?media_id={CAT}",
        "cluster_id": "c-1",
        "metadata_items": [
            _label("cat", "User", 3),
            _label("animal", "Model"),
            _label("tabby", "Visual Layer"),
            _issue("duplicates", 0.97, duplicate_group_id="g-1", duplicate_threshold=0.96),
            _issue("duplicates", 1, duplicate_group_id="g-2", duplicate_threshold=1.0),
            _issue("blur", 0.31),
            _issue("mislabels", 0.88, issues_description="dog"),
            {
                "type": "object_label",
                "properties": {
                    "bbox": [10, 20, 110, 95.5],
                    "category_name": "cat",
                    "source": "User",
                    "original_id": 7,
                    "uniqueness_score": 0.5,
                    "url": "https://app.visual-layer.com/o/1",
                    "metadata_items": [
                        _issue("label_outlier", 0.6),
                        {"type": "user_tag", "properties": {"tag_name": "crop", "assigned_date": "2025-01-01"}},
                    ],
                },
            },
            {"type": "user_tag", "properties": {"tag_name": "reviewed", "assigned_date": "2025-01-02T10:00:00"}},
            {"type": "caption", "properties": {"text": "a tabby cat on a sofa", "source": "Visual Layer"}},
        ],
    },
    {
        "media_id": VIDEO_A,
        "media_type": "video_frame",
        "file_name": "output_000001.jpg",
        "file_path": "videos/a.mp4/output_000001.jpg",
        "file_size": "3.38MB",
        "height": 720,
        "width": 1280,
        "uniqueness_score": 0.25,
        "url": "u2",
        "cluster_id": "c-2",
        "metadata_items": [
            {"type": "video_info", "properties": {"video_name": "a.mp4", "frame_timestamp": 1.5}},
            {"type": "caption", "properties": {"caption": "a street", "source": "BLIP"}},
        ],
    },
    {
        "media_id": VIDEO_B,
        "media_type": "video_frame",
        "file_name": "output_000001.jpg",
        "file_path": "videos/b.mp4/output_000001.jpg",
        "file_size": "512B",
        "height": 720,
        "width": 1280,
        "uniqueness_score": None,
        "url": "u3",
        "cluster_id": "c-2",
        "metadata_items": [
            {"type": "video_info", "properties": {"frame_number": 17, "video_id": "vid-b", "timestamp": "00:01:02.567"}}
        ],
    },
    {
        "media_id": BARE,
        "media_type": "image",
        "file_name": "bare.png",
        "file_path": "bare.png",
        "file_size": "1.2GB",
        "height": 10,
        "width": 12,
        "uniqueness_score": 0.5,
        "url": "u4",
        "cluster_id": "c-3",
    },
]


SCALARS = (
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
)


def items():
    return copy.deepcopy(MEDIA_ITEMS)


def write_json_export(folder, media_items=None, info=INFO, indent=None):
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"info": info, "media_items": items() if media_items is None else media_items}
    (folder / "metadata.json").write_text(json.dumps(payload, indent=indent), encoding="utf-8")
    return folder / "metadata.json"


def raw_columns(media_items, names=SCALARS):
    return {name: [m.get(name) for m in media_items] for name in names if any(name in m for m in media_items)}


def write_parquet(folder, table, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "metadata.parquet", **kwargs)
    return folder / "metadata.parquet"


def json_strings_table(media_items=None):
    media_items = items() if media_items is None else media_items
    metadata = [json.dumps(m["metadata_items"]) if "metadata_items" in m else None for m in media_items]
    return pa.table(dict(raw_columns(media_items), metadata_items=metadata))


def nested_table(media_items=None):
    media_items = items() if media_items is None else media_items
    # pyarrow infers list<struct<type, properties: struct<union of the keys it saw>>>, as a writer would.
    return pa.table(dict(raw_columns(media_items), metadata_items=[m.get("metadata_items") for m in media_items]))


def rows(table):
    return {row["media_id"]: row for row in table.to_pylist()}


def schema_error(tmp_path, table) -> SchemaError:
    path = write_parquet(tmp_path, table)
    with pytest.raises(SchemaError) as caught:
        read_metadata_file(path)
    assert str(path) in str(caught.value)
    return caught.value


TEN_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def realistic_media_items(n: int) -> list[dict]:
    """Items as a realistic export has them: labels from two sources, a uniqueness score, issues
    with confidences, duplicate pairs, and an unknown key whose type changes along the file."""
    out = []
    for i in range(n):
        entries = [
            {
                "type": "image_label",
                "properties": {"category_name": TEN_LABELS[i % 10], "source": "User", "original_id": i % 10},
            },
            {
                "type": "image_label",
                "properties": {"category_name": TEN_LABELS[i % 7], "source": "Model", "original_id": -1},
            },
            {"type": "issue", "properties": {"issue_type": "blur", "confidence": (i % 50) / 100 + 0.5}},
        ]
        if i % 20 < 2:
            group = f"group-{i // 20}"
            entries += [
                {
                    "type": "issue",
                    "properties": {
                        "issue_type": "duplicates",
                        "confidence": 0.97,
                        "duplicate_group_id": group,
                        "duplicate_threshold": t,
                    },
                }
                for t in (0.96, 0.98)
            ]
        out.append(
            {
                "media_id": f"id-{i:07d}",
                "media_type": "image",
                "file_path": f"train/{TEN_LABELS[i % 10]}/img_{i:07d}.jpg",
                "file_size": f"{10 + i % 90}.5KB",
                "height": 32,
                "width": 32,
                "uniqueness_score": (i % 97) / 97,
                "extra": [i, f"text {i}", i / 2][i // 40 % 3],
                "metadata_items": entries,
            }
        )
    return out
