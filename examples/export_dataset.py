"""Export a Visual Layer dataset into the local cache, curate it, and load a batch of tensors.

With VL_API_KEY and VL_API_SECRET (or VL_API_URL for on-prem) set, it talks to your Visual Layer
and exports --dataset-id. Without them, it serves the sample dataset (handwritten digits) on a
local Visual Layer service, so the whole workflow runs offline:

    python examples/export_dataset.py
    VL_API_KEY=... VL_API_SECRET=... python examples/export_dataset.py --dataset-id <id>
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import platform_or_sample
from vl_datasets import VisualLayerDataset, fetch_export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-id")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--format", choices=("parquet", "json"), default="parquet")
    parser.add_argument("--min-uniqueness", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    with platform_or_sample(args.dataset_id, args.cache_dir) as (client, dataset_id, cache_dir):
        info = client.get_dataset(dataset_id)
        print(f"{info.display_name or info.id}: {info.status}, {info.n_images} images")
        entry = fetch_export(dataset_id, client=client, cache_dir=cache_dir, export_format=args.format)
        images = sum(1 for _ in entry.images_dir.rglob("*") if _.is_file()) if entry.images_dir else 0
        print(f"export {entry.task.id}: {entry.row_count} items, {images} images at {entry.path}")
        print(f"metadata: {Path(entry.metadata_path).name}")
        # The same cached export, curated: no second export, no second download.
        dataset = VisualLayerDataset(
            dataset_id,
            client=client,
            cache_dir=cache_dir,
            export_format=args.format,
            min_uniqueness=args.min_uniqueness,
            keep_unscored=False,
            dedupe=True,
            image_size=args.image_size,
        )
        print(dataset.curation_summary())
        images, labels = next(iter(dataset.dataloader(8, num_workers=0, seed=0)))
        print(
            f"first batch: images {tuple(images.shape)} {images.dtype}, labels {labels.tolist()} "
            f"of classes {dataset.classes}"
        )


if __name__ == "__main__":
    main()
