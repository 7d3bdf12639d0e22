"""What the loading tests share: the loader tests' items (they differ only by id, so batches are easy
to check), a transform that counts decodes across workers, and an export split from its images."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

from vl_datasets.testing import write_dataset

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


class CountingTransform:
    """Counts decoded images across worker processes (shared by fork)."""

    def __init__(self):
        self.count = multiprocessing.get_context("fork").Value("i", 0)

    def __call__(self, image):
        with self.count.get_lock():
            self.count.value += 1
        return image


def split_export(tmp_path: Path, n_items: int) -> tuple[Path, Path]:
    """(an export folder holding only its metadata, the folder its images were uploaded from)."""
    export = write_dataset(tmp_path, "x", n_items=n_items)
    source = tmp_path / "source"
    shutil.move(export / "images", source)
    return export, source


def swapped_images(source, folder):
    """``folder`` holding ``source``'s images, each under another's path (a root of other images)."""
    names = sorted(p.relative_to(source) for p in source.rglob("*.jpg"))
    for name, other in zip(names, reversed(names), strict=True):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / other, folder / name)
    return folder
