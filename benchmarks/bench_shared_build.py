"""Building a shared prepared store (``prepare=S, prepared_root=URL``): images per second of the
whole build (decode and shrink on every core, pack into shards, upload, manifest), against the
node-local ``ds.prepare()`` of the same images, so the cost of packing and uploading shows.

    pip install scikit-image moto[server] s3fs   # the corpus's photos; S3 on loopback
    python benchmarks/bench_shared_build.py      # prints a table; --images N, --rounds R

Corpus: ``corpus.build("imagenet", N)``, 500x375-class JPEGs (default N=2000), at ``prepare=256``.
Every build starts cold (the node's store and the target removed) in a fresh interpreter, with the
dataset already opened once (its index built). Targets: a local folder (``file://``) and moto's S3
on loopback (a real S3 API, so every shard goes through botocore; the server shares the cores). The
load average of the machine is printed before each build: other work on it slows every row alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import corpus
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import StoreSettings, remove_store, store_path

HERE = Path(__file__).resolve().parent
CACHE = corpus.DATA / "shared_build_cache"
PREPARE = 256


def _open(folder: Path, root: str | None, options: dict | None) -> VisualLayerDataset:
    shared = {"prepared_root": root, "storage_options": options} if root else {}
    return VisualLayerDataset.from_export(folder, cache_dir=CACHE, task=None, prepare=PREPARE, **shared)


def build(folder: Path, root: str | None, options: dict | None) -> tuple[float, float, int, int]:
    """(seconds, CPU seconds of this process and its pool, images, bytes) of one cold build."""
    ds = _open(folder, None, None)
    remove_store(store_path(ds.entry, StoreSettings(PREPARE)))
    ds = _open(folder, root, options)
    before, start = os.times(), time.perf_counter()
    summary = ds.prepare(progress=False)
    seconds, after = time.perf_counter() - start, os.times()
    return seconds, sum(after[:4]) - sum(before[:4]), summary.images, summary.bytes_on_disk


def build_fresh(folder: Path, root: str | None, options: dict | None) -> tuple[float, float, int, int]:
    code = (
        "import bench_shared_build as b, json; from pathlib import Path; "
        f"print(*b.build(Path({str(folder)!r}), {root!r}, json.loads({json.dumps(options)!r})))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"a build failed:\n{result.stderr[-3000:]}")
    seconds, cpu, images, size = result.stdout.split()[-4:]
    return float(seconds), float(cpu), int(images), int(size)


def s3_server() -> tuple[object, dict]:
    """moto's S3 on loopback with a bucket, and the storage options that reach it."""
    import requests
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    requests.put(f"{endpoint}/bench", timeout=10).raise_for_status()
    return server, {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = corpus.build("imagenet", args.images)
    _open(folder, None, None)  # the index, built once
    server, s3 = s3_server()
    rows: dict[str, list[tuple[float, float, int, int]]] = {}
    try:
        with tempfile.TemporaryDirectory() as local:
            for round_ in range(args.rounds):
                targets = {
                    "node-local prepare()": (None, None),
                    "shared, local folder": (f"file://{local}/r{round_}", None),
                    "shared, S3 on loopback": (f"s3://bench/r{round_}", s3),
                }
                for name, (root, options) in targets.items():
                    print(f"{name}: load average {os.getloadavg()[0]:.2f}", flush=True)
                    rows.setdefault(name, []).append(build_fresh(folder, root, options))
                shutil.rmtree(f"{local}/r{round_}", ignore_errors=True)
    finally:
        server.stop()  # type: ignore[attr-defined]
    print(f"\n{args.images} images (500x375-class JPEGs), prepare={PREPARE}, {os.cpu_count()} cores")
    print("| build | img/s (median) | CPU ms/img | GiB per million images |")
    print("|---|---|---|---|")
    for name, runs in rows.items():
        rate = statistics.median(images / seconds for seconds, _, images, _ in runs)
        cpu = statistics.median(cpu / images * 1e3 for _, cpu, images, _ in runs)
        gib = statistics.median(size / images * 1e6 / 2**30 for *_, images, size in runs)
        print(f"| {name} | {rate:,.0f} | {cpu:.1f} | {gib:,.0f} |")


if __name__ == "__main__":
    main()
