"""A shared-store build for the kill tests: it publishes ``--uploads`` files (store.json, shards,
indexes, share files), then writes ``MARKER`` and hangs, mid-build, until the test kills it. Under
torchrun each rank does so, writing ``MARKER.<rank>``.

    python shared_build_job.py EXPORT CACHE URL OPTIONS_JSON MARKER --uploads 5 --shard-bytes 3000 --share-images 4
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tests.loading.shared_store_files import SIZE
from vl_datasets.loading import shared_location
from vl_datasets.loading.dataset import VisualLayerDataset


def hang_after(uploads: int, marker: Path) -> None:
    """Let ``uploads`` files go up, then stop this process where the next one would."""
    publish = shared_location.SharedLocation._publish
    done = [0]

    def counted(self, name, write):
        if done[0] == uploads:
            marker.write_text(str(done[0]))
            while True:
                time.sleep(1)
        publish(self, name, write)
        done[0] += 1

    shared_location.SharedLocation._publish = counted  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("export")
    parser.add_argument("cache")
    parser.add_argument("url")
    parser.add_argument("options")
    parser.add_argument("marker", type=Path)
    parser.add_argument("--uploads", type=int, required=True)
    parser.add_argument("--shard-bytes", type=int, required=True)
    parser.add_argument("--share-images", type=int, required=True)
    args = parser.parse_args()
    options = {"prepare": SIZE, "prepared_root": args.url, "storage_options": json.loads(args.options)}
    ds = VisualLayerDataset.from_export(args.export, cache_dir=args.cache, task=None, **options)
    rank = os.environ.get("RANK")
    hang_after(args.uploads, args.marker if rank is None else args.marker.with_name(f"{args.marker.name}.{rank}"))
    ds.prepare(num_workers=0, progress=False, shard_bytes=args.shard_bytes, share_images=args.share_images)
    raise SystemExit("the build finished: it was to hang mid-build")


if __name__ == "__main__":
    main()
