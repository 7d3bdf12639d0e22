"""Opening a cached 1,000,000-item export, and what DataLoader workers cost in memory.

    python benchmarks/bench_metadata.py [--rows 1000000] [--out benchmarks/RESULTS_metadata.md]

Builds (once, under benchmarks/data/, git-ignored) an export folder with a ``metadata.parquet``
of N items in Visual Layer's parquet variant (``metadata_items`` as JSON strings: a label and,
for some items, a duplicates issue) and N image files, hard links to a few copies of one small JPEG so the
folder costs inodes, not gigabytes. Then, each in fresh processes (median of 5):

1. the bare ``pyarrow.parquet.read_table`` of the export's metadata file (the reference);
2. ``VisualLayerDataset.from_export(folder)`` once the cache holds the folder's index (every
   open after the first one, which reads the metadata and lists the images), with its peak RSS;
3. the private memory (USS) each of 2 forked DataLoader workers gains over one shuffled epoch in
   which ``__getitem__`` touches only the per-item state (path, label), not pixels, next to the
   same loader over a stateless dataset of the same length: the DataLoader's own workers grow by
   tens of MiB per epoch at batch 1000 whatever the dataset holds, so the difference is what
   the dataset's state costs.

Targets (issue: VisualLayerDataset benchmarks): open within 2x the bare read, and under 1 MiB of
private memory growth per worker per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def build_export(rows: int) -> Path:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = DATA / f"export_{rows}"
    if (folder / "metadata.parquet").is_file():
        return folder
    images = folder / "images" / "all"
    images.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buffer, format="JPEG")
    for i in range(rows):
        if i % 60_000 == 0:  # ext4 allows 65,000 links to one file
            seed = folder / f"seed_{i // 60_000}.jpg"
            seed.write_bytes(buffer.getvalue())
        os.link(seed, images / f"{i:07d}.jpg")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows)
    items = [
        json.dumps(
            [{"type": "image_label", "properties": {"category_name": f"class_{label}", "source": "User"}}]
            + (
                [
                    {
                        "type": "issue",
                        "properties": {
                            "issue_type": "duplicates",
                            "confidence": 0.97,
                            "duplicate_group_id": f"g{i // 3}",
                            "duplicate_threshold": 0.96,
                        },
                    }
                ]
                if i % 7 == 0
                else []
            )
        )
        for i, label in enumerate(labels)
    ]
    table = pa.table(
        {
            "media_id": [f"{i:024x}" for i in range(rows)],
            "media_type": pa.array(["image"] * rows),
            "file_name": [f"{i:07d}.jpg" for i in range(rows)],
            "file_path": [f"all/{i:07d}.jpg" for i in range(rows)],
            "uniqueness_score": rng.random(rows),
            "metadata_items": items,
        }
    )
    pq.write_table(table, folder / "metadata.parquet")
    return folder


def _child(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


BARE = """
import json, resource, time
import pyarrow.parquet as pq, pyarrow.dataset  # imported up front, as the library does
t = time.perf_counter(); table = pq.read_table({path!r}); s = time.perf_counter() - t
print(json.dumps({{"s": s, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

OPEN = """
import json, pickle, resource, time
import pyarrow.dataset, torch
from vl_datasets.loading.dataset import VisualLayerDataset
t = time.perf_counter()
ds = VisualLayerDataset.from_export({folder!r}, cache_dir={cache!r})
s = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); blob = pickle.dumps(ds); p = time.perf_counter() - t
print(json.dumps({{"s": s, "n": len(ds), "rss": rss, "pickle_s": p, "pickle_mib": len(blob) / 2**20}}))
"""

WORKERS = """
import json, multiprocessing, torch
from torch.utils.data import Dataset
from vl_datasets.loading.dataset import VisualLayerDataset

class MetadataOnly(VisualLayerDataset):
    def __getitem__(self, index):  # touch the per-item state, skip the pixels
        return len(self.image_path(index)), self.target(index)

class Stateless(Dataset):  # the same loader with no per-item state: the DataLoader's own growth
    def __init__(self, n):
        self.n, self.task, self.on_error = n, "classification", "raise"
    def __len__(self):
        return self.n
    def __getitem__(self, index):
        return 0, 0

def uss(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{{pid}}/smaps_rollup") if ":" in line)
    return sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty")) / 1024

def growth(dataset):
    from vl_datasets.loading.loader import make_dataloader
    loader = make_dataloader(dataset, 1000, num_workers=2, seed=0, multiprocessing_context="fork")
    it = iter(loader)
    next(it)
    pids = [p.pid for p in multiprocessing.active_children()]
    start = [uss(p) for p in pids]
    for _ in it:
        pass
    result = [uss(p) - s for p, s in zip(pids, start)]
    del it, loader
    return result

ds = VisualLayerDataset.from_export({folder!r}, cache_dir={cache!r})
ds.__class__ = MetadataOnly
print(json.dumps({{"stateless": growth(Stateless(len(ds))), "ours": growth(ds)}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_metadata.md")
    args = parser.parse_args()
    folder = build_export(args.rows)
    cache = DATA / "cache"  # the folder's index goes here, never into the folder
    shutil.rmtree(cache, ignore_errors=True)
    first = _child(OPEN.format(folder=str(folder), cache=str(cache)))  # indexes the export into the cache
    bare = [_child(BARE.format(path=str(folder / "metadata.parquet"))) for _ in range(args.runs)]
    opened = [_child(OPEN.format(folder=str(folder), cache=str(cache))) for _ in range(args.runs)]
    workers = _child(WORKERS.format(folder=str(folder), cache=str(cache)))
    bare_s = statistics.median(r["s"] for r in bare)
    open_s = statistics.median(r["s"] for r in opened)
    extra = [ours - base for ours, base in zip(workers["ours"], workers["stateless"])]
    lines = [
        f"# Metadata benchmark ({args.rows:,} items, median of {args.runs} fresh processes)",
        "",
        "| measurement | value | target |",
        "| --- | ---: | --- |",
        f"| bare `pq.read_table` of metadata.parquet | {bare_s:.3f} s "
        f"(peak RSS {statistics.median(r['rss'] for r in bare):.0f} MiB) | reference |",
        f"| first open (normalizes, resolves images, caches) | {first['s']:.2f} s | once per export |",
        f"| cached open `VisualLayerDataset.from_export` | {open_s:.3f} s "
        f"(peak RSS {statistics.median(r['rss'] for r in opened):.0f} MiB) | |",
        f"| cached open / bare read | {open_s / bare_s:.2f}x | <= 2x |",
        f"| pickle.dumps(dataset) | {statistics.median(r['pickle_s'] for r in opened):.3f} s, "
        f"{statistics.median(r['pickle_mib'] for r in opened):.0f} MiB | fast |",
        f"| worker private memory growth over one epoch, DataLoader alone (stateless dataset) | "
        f"{', '.join(f'{g:+.1f} MiB' for g in workers['stateless'])} | reference |",
        f"| same, VisualLayerDataset touching every item's path and label | "
        f"{', '.join(f'{g:+.1f} MiB' for g in workers['ours'])} | |",
        f"| growth due to the dataset's per-item state | {', '.join(f'{g:+.2f} MiB' for g in extra)} | < 1 MiB each |",
    ]
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
