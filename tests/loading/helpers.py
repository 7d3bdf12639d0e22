"""The loader tests' export: items that differ only by id, so batches are easy to check."""

from __future__ import annotations

ITEMS = 11  # with batch 3: four batches, the last one short


def make_items(count):
    return [
        {
            "media_id": f"m{i:03d}",
            "media_type": "image",
            "file_name": f"img_{i}.jpg",
            "file_path": f"folder/img_{i}.jpg",
            "height": 12,
            "width": 16,
            "uniqueness_score": 0.5,
            "cluster_id": "c0",
            "url": "",
            "metadata_items": [],
        }
        for i in range(count)
    ]
