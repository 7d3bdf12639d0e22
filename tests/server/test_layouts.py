"""The whole library on the service's two export layouts.

JSON exports keep ``images/<file_path>``; Parquet exports lay images flat under
``images/<image_filename>``, as Visual Layer's docs show. Each must give every row its own image,
through fetch (whole or in chunks), the dataset, the report and the splits, on a dataset whose file
names repeat across folders (video frames) and differ only by case.
"""

from __future__ import annotations

import pytest

from vl_datasets import Client, VisualLayerDataset, fetch_export, leakage_safe_split
from vl_datasets.metadata.splits import find_leaks
from vl_datasets.testing import LocalVisualLayer, write_dataset


def _items() -> list[dict]:
    frames = [
        (f"v{v}f{f}-0000-4000-8000-000000000000", f"videos/clip{v}.mp4/output_00000{f}.jpg")
        for v in range(3)
        for f in range(2)
    ]
    photos = [
        (f"p{i}-0000-4000-8000-000000000000", path) for i, path in enumerate(("a/Cat.jpg", "b/cat.jpg", "c/x.jpg"))
    ]
    return [
        {
            "media_id": media_id,
            "media_type": "video_frame" if path.startswith("videos/") else "image",
            "file_name": path.rsplit("/", 1)[1],
            "file_path": path,
            "height": 12,
            "width": 16,
            "uniqueness_score": round(0.1 + 0.09 * i, 2),
            "cluster_id": f"cluster-{i % 4}",
            "metadata_items": [
                {"type": "image_label", "properties": {"category_name": ("cat", "dog")[i % 2], "source": "User"}}
            ],
        }
        for i, (media_id, path) in enumerate(frames + photos)
    ]


@pytest.mark.parametrize("export_format,chunked", [("json", False), ("parquet", False), ("parquet", True)], ids=str)
def test_fetch_dataset_report_and_splits_on_either_layout(tmp_path, export_format, chunked):
    items = _items()
    folder = write_dataset(tmp_path / "datasets", "frames", media_items=items)
    cache = tmp_path / "cache"
    with LocalVisualLayer(tmp_path / "datasets", export_polls=0) as service:
        client = Client(service.url, progress=False, env={}, sleep=lambda s: None)
        if chunked:  # as the platform answers an export over its image limit: the client cuts chunks
            service.faults.fail_exports("Export rejected: 9 entities exceeds threshold 2", status="REJECTED", times=1)
        entry = fetch_export("frames", client=client, cache_dir=cache, export_format=export_format)
        starts = service.count("export") + service.count("selective_export")
        ds = VisualLayerDataset("frames", client=client, cache_dir=cache, export_format=export_format, image_size=8)
        assert service.count("export") + service.count("selective_export") == starts, "the dataset exported again"
    assert entry.metadata_path.name == f"metadata.{export_format}"
    if chunked:  # the rejected one, one without images for the metadata, and 5 chunks of 2 images or fewer
        assert starts == 1 + 1 + 5, f"expected 7 exports for a chunked fetch, saw {starts}"
    assert len(ds) == len(items)
    details = ds.curation_details()
    by_id = {m["media_id"]: m for m in items}
    for media_id, path in zip(details.column("media_id").to_pylist(), details.column("image_path").to_pylist()):
        assert path is not None, f"{media_id} has no image in the {export_format} export"
        with open(path, "rb") as opened:
            assert opened.read() == (folder / "images" / by_id[media_id]["file_path"]).read_bytes(), (
                f"{media_id} was given the image at {path}, not its own {by_id[media_id]['file_path']}"
            )
    image, label = ds[0]
    assert tuple(image.shape) == (3, 8, 8)
    assert int(label) in (0, 1)
    page = ds.report(tmp_path / "report.html", max_thumbnails=3).read_text(encoding="utf-8")
    assert page.count("data:image/jpeg;base64,") >= 3, "the report shows no thumbnails"
    parts = leakage_safe_split(ds.table, {"train": 0.5, "test": 0.5}, seed=0)
    assert sorted(parts["train"] + parts["test"]) == sorted(by_id)
    assert len(find_leaks(ds.table, parts["train"], parts["test"])) == 0
