"""A chunked export of a 20,000-item dataset from the local service, capped at 5,000 images per export.

    python benchmarks/bench_chunked.py [--items 20000] [--cap 5000] [--out benchmarks/RESULTS_chunked.md]

Builds (once, under benchmarks/data/, git-ignored) a synthetic dataset of N small JPEGs in the
local service's layout, then fetches it into a fresh cache twice, each in this process against
the local service over real HTTP: once with the platform's cap (the first export is rejected,
the metadata comes alone, the images in selective exports of at most ``--cap`` media ids, four
in flight), and once uncapped (one export) as the reference. Reports the wall time of each and
the requests the chunked fetch made, by kind.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

from vl_datasets import Client, fetch_export
from vl_datasets.testing import LocalVisualLayer, write_dataset

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def build_dataset(items: int) -> Path:
    root = DATA / f"chunked_{items}"
    if not (root / "big" / "metadata.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_dataset(root, "big", n_items=items, n_clusters=max(1, items // 50))
    return root


def timed_fetch(root: Path, cap: int) -> tuple[float, Counter, int]:
    with (
        LocalVisualLayer(root, export_polls=1, max_images_per_export=cap) as service,
        tempfile.TemporaryDirectory() as cache,
    ):
        client = Client(service.url, progress=False, env={})
        start = time.perf_counter()
        entry = fetch_export("big", client=client, cache_dir=cache)
        seconds = time.perf_counter() - start
        kinds = Counter(f"{r.origin} {r.endpoint or '?'} {r.status}" for r in service.requests)
        return seconds, kinds, entry.row_count or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--cap", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_chunked.md")
    args = parser.parse_args()
    root = build_dataset(args.items)
    chunked_s, kinds, rows = timed_fetch(root, args.cap)
    single_s, _, _ = timed_fetch(root, args.items)
    assert rows == args.items, f"the chunked entry holds {rows} rows, not {args.items}"
    lines = [
        f"# Chunked export ({args.items:,} items, at most {args.cap:,} images per export)",
        "",
        "| measurement | value |",
        "| --- | ---: |",
        f"| one export of everything (no cap), wall time | {single_s:.1f} s |",
        f"| chunked export, wall time | {chunked_s:.1f} s ({chunked_s / single_s:.2f}x) |",
        f"| requests of the chunked export | {sum(kinds.values())} |",
        *(f"| &nbsp;&nbsp;{kind} | {count} |" for kind, count in sorted(kinds.items())),
    ]
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
