"""Export a Visual Layer dataset into the local cache, curate it, and load a batch of tensors.

With VL_API_KEY and VL_API_SECRET (or VL_API_URL for on-prem) set, it talks to your Visual Layer
and exports --dataset-id. Without them, it starts the local Visual Layer service on a small
synthetic dataset, so the whole workflow runs offline:

    python examples/export_dataset.py
    VL_API_KEY=... VL_API_SECRET=... python examples/export_dataset.py --dataset-id <id>
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from pathlib import Path

from vl_datasets import Client, VisualLayerDataset, fetch_export
from vl_datasets.testing import LocalVisualLayer, write_dataset


@contextlib.contextmanager
def platform_or_local_service(dataset_id: str | None, cache_dir: str | None):
    """(client, dataset id, cache dir) for the configured platform, or for a local service.

    The local service listens on a new port each run, so its exports are cached in a temporary
    folder rather than piling up in the user's cache.
    """
    if os.environ.get("VL_API_KEY") or os.environ.get("VL_API_TOKEN") or os.environ.get("VL_API_URL"):
        if dataset_id is None:
            raise SystemExit("--dataset-id is required when talking to Visual Layer")
        yield Client(), dataset_id, cache_dir
        return
    with tempfile.TemporaryDirectory() as tmp, LocalVisualLayer(Path(tmp) / "datasets", export_polls=1) as service:
        write_dataset(Path(tmp) / "datasets", "sample", n_items=12)
        print(f"No credentials set: using a local Visual Layer service at {service.url}")
        yield Client(service.url), "sample", cache_dir or str(Path(tmp) / "cache")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-id")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--format", choices=("parquet", "json"), default="parquet")
    parser.add_argument("--min-uniqueness", type=float, default=0.2)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    with platform_or_local_service(args.dataset_id, args.cache_dir) as (client, dataset_id, cache_dir):
        info = client.get_dataset(dataset_id)
        print(f"{info.display_name or info.id}: {info.status}, {info.n_images} images")
        entry = fetch_export(dataset_id, client=client, cache_dir=cache_dir, export_format=args.format)
        images = sum(1 for _ in entry.images_dir.rglob("*") if _.is_file()) if entry.images_dir else 0
        print(f"export {entry.task.id}: {entry.row_count} items, {images} images at {entry.path}")
        print(f"metadata: {Path(entry.metadata_path).name}")
        # The same cached export, curated: no second export, no second download.
        dataset = VisualLayerDataset(dataset_id, client=client, cache_dir=cache_dir, export_format=args.format,
                                     min_uniqueness=args.min_uniqueness, keep_unscored=False, dedupe=True,
                                     image_size=args.image_size)
        print(dataset.curation_summary())
        images, labels = next(iter(dataset.dataloader(8, num_workers=0, seed=0)))
        print(f"first batch: images {tuple(images.shape)} {images.dtype}, labels {labels.tolist()} "
              f"of classes {dataset.classes}")


if __name__ == "__main__":
    main()
