"""The shared prepared store side by side with litData and Mosaic streaming (issue 21): each builds
a store of the same prepared images in an S3 bucket, then a node with an empty cache reads it.

    pip install -e ".[bench,peers]"              # the corpus's photos, moto, litData, Mosaic streaming
    python benchmarks/bench_shared_peers.py      # prints a table; --images N, --rounds N, --quick

The peers are benchmark-only (the ``peers`` extra); install them in a virtualenv of their own:
mosaicml-streaming pulls torchvision, and so a torch of its own choosing (``torch==2.14.1
torchvision==0.29.1`` from the registry, ~5.5 GB), which is not the package's pinned CPU torch.

One S3 API on loopback (s3_server.py: moto, 50 ms before each GET, HEAD or listing is answered,
counting the requests and the bytes it sends), the 500x375-class corpus of corpus.py (default
2,000 images), images prepared at 256 px on their shorter side and stored as raw uint8 RGB in
shards of 64 MiB, read at 224 px, batch 64, 2 DataLoader workers (persistent), shuffled:

- ours: ``VisualLayerDataset(prepare=256, prepared_root="s3://...")`` and ``ds.prepare()``; read
  with ``image_size=224`` (the 256 px pixels resized to 224x224, antialiased bilinear) in the
  shard-aware order, through the node's shard cache in a fresh ``cache_dir``;
- litData: ``litdata.optimize`` of the same pixels (``prepare_pixels``: the library's own decode
  and shrink, so all three store the same bytes) to the bucket, read by ``StreamingDataset`` and
  ``StreamingDataLoader`` with a fresh cache dir, a 224 px centre crop in the dataset;
- Mosaic: ``streaming.MDSWriter`` (an ``ndarray:uint8`` column, the pixels decoded by a pool of 2
  processes) uploading to the bucket, read by ``StreamingDataset(remote=..., local=fresh dir)``
  and a DataLoader, the same crop.

Each peer is read with its defaults, then tuned: litData with ``batch_decode=False`` (its "auto"
deserializes a run of the chunk's items for every item read, which a shuffled read throws away),
and both with the library's channels-last collate (``--rows`` picks rows). Ours hands the loader
channels-last batches (each image a memcpy into the batch); torch's ``default_collate``, which
the peers use by default, transposes every image into NCHW (~150 us an image). The peers' crop is
a view, where ours resizes 256 to 224 px: per image, the peers have less to do than ours.

The figures come from interleaved rounds (``--rounds``, default 3): each round builds every
system's store afresh, then reads every row, in an order rotated from one round to the next, and
removes its stores; the table gives each figure's median and every round's. Each build and each
read runs in a fresh interpreter. A read is a cold epoch (the node's cache
empty: it includes starting the 2 workers and every download) and 2 later epochs; the server's
requests and the bytes of its answers are counted per epoch (persistent workers may read ahead
into the next epoch, which moves bytes between epochs, not their total). The 1-minute load average
is printed before and after each measurement: the server and the other work on the machine share
its cores with the loader, which a real bucket does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from fresh import call_fresh  # benchmarks/ is the script's folder: on sys.path

HERE = Path(__file__).resolve().parent
SIZE, PREPARE, BATCH, WORKERS, LATENCY_MS, LATER_EPOCHS = 224, 256, 64, 2, 50, 2
SHARD_BYTES = 64 * 2**20
BUCKET = "bench"
# Each row: the store it reads (built by the first row of that store) and the read's settings.
ROWS = {
    "ours": ("ours", ""),
    "litdata": ("litdata", ""),
    "litdata-unbatched": ("litdata", "unbatched"),
    "litdata-tuned": ("litdata", "unbatched,channels-last"),
    "mosaic": ("mosaic", ""),
    "mosaic-tuned": ("mosaic", "channels-last"),
}
NAMES = {
    "ours": "vl_datasets shared store",
    "litdata": "litData, defaults",
    "litdata-unbatched": "litData, batch_decode=False",
    "litdata-tuned": "litData, batch_decode=False, channels-last collate",
    "mosaic": "Mosaic streaming, defaults",
    "mosaic-tuned": "Mosaic streaming, channels-last collate",
}


# -- the corpus, as each peer's writer takes it ---------------------------------------------------


def corpus_items(corpus_dir: str) -> list[tuple[str, int]]:
    """(path, class index) of every image of the corpus, in the export's order."""
    import corpus

    return corpus.image_paths(Path(corpus_dir))


def prepared_sample(item: tuple[str, int]) -> dict:
    """An image's pixels prepared as ``prepare=256`` prepares them (the library's own decode and
    shrink), and its label: what the peers' stores hold."""
    from vl_datasets.loading.prepared_source import prepare_pixels

    path, label = item
    return {"image": prepare_pixels(Path(path).read_bytes(), PREPARE), "label": label}


def center_crop(pixels, size: int = SIZE):
    """A uint8 CHW tensor of the centre ``size`` x ``size`` of HWC ``pixels`` (a view, no copy)."""
    import torch

    top, left = (pixels.shape[0] - size) // 2, (pixels.shape[1] - size) // 2
    return torch.from_numpy(pixels[top : top + size, left : left + size]).permute(2, 0, 1)


def channels_last(samples: list) -> tuple:
    """(images, labels) of a batch collated as the library's loader does: the HWC crops copied into
    an NCHW batch in channels-last memory (a memcpy each), not transposed into NCHW by
    ``default_collate`` (~150 us an image)."""
    import torch

    from vl_datasets.loading.loader import stack_images

    return stack_images([image for image, _ in samples]), torch.tensor([label for _, label in samples])


# -- the builds ------------------------------------------------------------------------------------


def build_ours(corpus_dir: str, root: str, endpoint: str, cache_dir: str) -> dict:
    """Seconds of ``ds.prepare()`` publishing the corpus at ``root`` (the dataset opened beforehand)."""
    ds = _ours(corpus_dir, root, endpoint, cache_dir)
    start = time.perf_counter()
    summary = ds.prepare(num_workers=WORKERS, progress=False)
    return {"s": time.perf_counter() - start, "images": summary.images}


def build_litdata(corpus_dir: str, root: str, endpoint: str, cache_dir: str) -> dict:
    """Seconds of ``litdata.optimize`` of the prepared pixels to ``root`` (2 worker processes)."""
    import litdata

    _litdata_over_http()
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = f"{cache_dir}/chunks"  # its staging, else the system's temp
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = f"{cache_dir}/data"
    items = corpus_items(corpus_dir)
    start = time.perf_counter()
    litdata.optimize(
        fn=prepared_sample,
        inputs=items,
        output_dir=root,
        num_workers=WORKERS,
        chunk_bytes=SHARD_BYTES,
        storage_options=_boto_options(endpoint),
        verbose=False,
    )
    return {"s": time.perf_counter() - start, "images": len(items)}


def build_mosaic(corpus_dir: str, root: str, endpoint: str, cache_dir: str) -> dict:
    """Seconds of an ``MDSWriter`` uploading the prepared pixels to ``root``, decoded by 2 processes."""
    import multiprocessing

    from streaming import MDSWriter

    items = corpus_items(corpus_dir)
    columns = {"image": "ndarray:uint8", "label": "int"}
    start = time.perf_counter()
    with (
        multiprocessing.get_context("fork").Pool(WORKERS) as pool,
        MDSWriter(columns=columns, out=(f"{cache_dir}/staging", root), size_limit=SHARD_BYTES) as writer,
    ):
        for sample in pool.imap(prepared_sample, items, chunksize=16):
            writer.write(sample)
    return {"s": time.perf_counter() - start, "images": len(items)}


# -- the reads -------------------------------------------------------------------------------------


def read_ours(corpus_dir: str, root: str, endpoint: str, cache_dir: str, settings: str = "") -> dict:
    """The epochs of a node with an empty shard cache reading the store at ``root``."""
    ds = _ours(corpus_dir, root, endpoint, cache_dir, image_size=SIZE)
    loader = ds.dataloader(BATCH, num_workers=WORKERS, seed=0)
    return {"epochs": _epochs(loader, endpoint, ds.images.shard_cache_stats), "images": len(ds)}


def read_litdata(corpus_dir: str, root: str, endpoint: str, cache_dir: str, settings: str = "") -> dict:
    """The epochs of litData's ``StreamingDataset`` over ``root`` with an empty cache. ``settings``:
    "unbatched" turns its ``batch_decode`` off ("auto" deserializes a run of the chunk's items for
    each item read, which a shuffled read throws away), "channels-last" collates as ours does."""
    import litdata

    _litdata_over_http()

    class Cropped(litdata.StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return center_crop(sample["image"]), sample["label"]

    batch_decode: str | bool = False if "unbatched" in settings else "auto"
    options = {"storage_options": _boto_options(endpoint), "batch_decode": batch_decode}
    ds = Cropped(root, cache_dir=cache_dir, shuffle=True, seed=0, **options)
    collate = {"collate_fn": channels_last} if "channels-last" in settings else {}
    loader = litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, **collate)
    return {"epochs": _epochs(loader, endpoint), "images": len(ds)}


def read_mosaic(corpus_dir: str, root: str, endpoint: str, cache_dir: str, settings: str = "") -> dict:
    """The epochs of Mosaic's ``StreamingDataset`` over ``root`` with an empty ``local``
    (``settings``: "channels-last" collates as ours does)."""
    import streaming
    from torch.utils.data import DataLoader

    class Cropped(streaming.StreamingDataset):
        def __getitem__(self, index):
            sample = super().__getitem__(index)
            return center_crop(sample["image"]), sample["label"]

    ds = Cropped(remote=root, local=cache_dir, shuffle=True, shuffle_seed=0, batch_size=BATCH)
    collate = {"collate_fn": channels_last} if "channels-last" in settings else {}
    loader = DataLoader(ds, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True, **collate)
    return {"epochs": _epochs(loader, endpoint), "images": len(ds)}


def _epochs(loader, endpoint: str, cache_stats=None) -> list[dict]:
    """Per epoch (a cold one, then LATER_EPOCHS): images, seconds, seconds to the first batch, the
    server's requests and bytes sent, the load average before and after, and the cache's counts."""
    import torch

    torch.set_num_threads(1)
    epochs = []
    for _ in range(1 + LATER_EPOCHS):
        load, before, stats = os.getloadavg()[0], _served(endpoint), cache_stats() if cache_stats else {}
        start, first, seen = time.perf_counter(), 0.0, 0
        for images, labels in loader:
            if not seen:
                first = time.perf_counter() - start
                assert tuple(images.shape[1:]) == (3, SIZE, SIZE) and images.dtype == torch.uint8, images.shape
            seen += len(labels)
        seconds = time.perf_counter() - start
        after = _served(endpoint)
        epoch = {"images": seen, "s": seconds, "first_batch_s": first, "load": [load, os.getloadavg()[0]]}
        epoch.update({k: after[k] - before[k] for k in after})
        if cache_stats:
            epoch["cache"] = {k: v - stats.get(k, 0) for k, v in cache_stats().items() if k != "hit_rate"}
        epochs.append(epoch)
    return epochs


def open_ours(corpus_dir: str, root: str, endpoint: str, cache_dir: str) -> dict:
    """Opens the dataset once: its index is built before the build is timed, as bench_shared_build.py does."""
    return {"images": len(_ours(corpus_dir, root, endpoint, cache_dir))}


def _ours(corpus_dir: str, root: str, endpoint: str, cache_dir: str, image_size: int | None = None):
    import torch

    from vl_datasets.loading.dataset import VisualLayerDataset

    torch.set_num_threads(1)
    options = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
    return VisualLayerDataset.from_export(
        corpus_dir,
        cache_dir=cache_dir,
        image_size=image_size,
        prepare=PREPARE,
        prepared_root=root,
        storage_options=options,
    )


def _litdata_over_http() -> None:
    """litData fetches and uploads chunks with obstore, which refuses a plain-http endpoint (moto on
    loopback) unless asked: the same client options, plus that. A real bucket (https) needs none."""
    from litdata.streaming import downloader

    downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]


def _boto_options(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "aws_access_key_id": "bench", "aws_secret_access_key": "bench"}


def _served(endpoint: str) -> dict[str, int]:
    """The requests the server has answered (GET, HEAD, listings) and the bytes of the GETs' bodies, so far."""
    from urllib.request import urlopen

    with urlopen(f"{endpoint}/__requests", timeout=30) as counts, urlopen(f"{endpoint}/__bytes", timeout=30) as sent:
        return {"requests": sum(json.loads(counts.read()).values()), "bytes": json.loads(sent.read()).get("GET", 0)}


# -- the run ---------------------------------------------------------------------------------------


def fresh(what: str, *args: str) -> dict:
    """``what(*args)`` of this module in a fresh interpreter (the peers' own state starts empty)."""
    return call_fresh("bench_shared_peers", what, *args)


@contextlib.contextmanager
def s3(work: Path) -> Iterator[str]:
    """The endpoint of s3_server.py (moto, LATENCY_MS before each answer) with an empty bucket."""
    empty = work / "empty"
    empty.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "s3_server.py"), str(empty), "--latency-ms", str(LATENCY_MS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline().split()[1])}"
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the server's signal to stop
        process.wait(timeout=30)


def _s3fs(endpoint: str):
    import fsspec

    return fsspec.filesystem("s3", endpoint_url=endpoint, key="bench", secret="bench", skip_instance_cache=True)


def stored_bytes(endpoint: str, root: str) -> int:
    return int(_s3fs(endpoint).du(root.removeprefix("s3://")))


def remove(endpoint: str, root: str) -> None:
    """Remove a store from the bucket: moto holds every object in its memory."""
    _s3fs(endpoint).rm(root.removeprefix("s3://"), recursive=True)


def build(system: str, corpus_dir: Path, work: Path, endpoint: str, root: str) -> dict:
    """``system``'s build of its store at ``root``, in a fresh interpreter, with the load around it."""
    corpus_arg = str(corpus_dir)
    if system == "ours":  # the index, built before the timing
        fresh("open_ours", corpus_arg, root, endpoint, str(work / "ours_build"))
    result = {"load": [os.getloadavg()[0]]}
    result.update(fresh(f"build_{system}", corpus_arg, root, endpoint, str(work / f"{system}_build")))
    result["load"].append(os.getloadavg()[0])
    shutil.rmtree(work / f"{system}_build", ignore_errors=True)  # the writer's node is not the reader's
    result["stored"] = stored_bytes(endpoint, root)
    return result


def read(row: str, corpus_dir: Path, work: Path, endpoint: str, root: str) -> dict:
    """``row``'s read of the store at ``root`` by a node with an empty cache, in a fresh interpreter."""
    system, settings = ROWS[row]
    result = fresh(f"read_{system}", str(corpus_dir), root, endpoint, str(work / f"{row}_read"), settings)
    shutil.rmtree(work / f"{row}_read", ignore_errors=True)
    return result


def run_rounds(rows: list[str], rounds: int, corpus_dir: Path, work: Path, endpoint: str) -> dict[str, dict]:
    """Each round builds every system's store afresh and reads every row, the order rotated from one
    round to the next (so no row always runs first, or right after the same one); a round's stores
    are removed once it is read. Returns each row's builds (its system's) and reads, one per round."""
    systems = list(dict.fromkeys(ROWS[row][0] for row in rows))
    results: dict[str, dict] = {row: {"builds": [], "reads": []} for row in rows}
    for k in range(rounds):
        roots = {system: f"s3://{BUCKET}/{system}-{k}" for system in systems}
        builds = {}
        for system in _rotated(systems, k):
            builds[system] = build(system, corpus_dir, work, endpoint, roots[system])
            print(f"round {k + 1}: {system} built in {builds[system]['s']:.1f} s", flush=True)
        for row in _rotated(rows, k):
            results[row]["reads"].append(read(row, corpus_dir, work, endpoint, roots[ROWS[row][0]]))
            cold = results[row]["reads"][-1]["epochs"][0]
            print(f"round {k + 1}: {NAMES[row]} cold epoch {cold['images'] / cold['s']:,.0f} img/s", flush=True)
        for row in rows:
            results[row]["builds"].append(builds[ROWS[row][0]])
        for root in roots.values():
            remove(endpoint, root)
    return results


def _rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def report(count: int, rounds: int, results: dict[str, dict]) -> list[str]:
    lines = [
        f"{count:,} images (500x375-class JPEGs), prepare={PREPARE} stored as raw RGB in 64 MiB shards, "
        f"S3 (moto) on loopback with {LATENCY_MS} ms before each answer, {SIZE} px, batch {BATCH}, "
        f"{WORKERS} workers, {len(os.sched_getaffinity(0))} cores; {rounds} interleaved rounds: the median, "
        "then each round's figure",
        "",
        "| system | build img/s | stored MiB | cold epoch img/s | first batch s | later epochs img/s "
        "| requests, MiB downloaded: cold / later epochs (round 1) | images per epoch | cache hit rate "
        "| load avg (1 min), lowest-highest |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    first_of_system: set[str] = set()
    for row, result in results.items():
        system = ROWS[row][0]
        reads = [r["epochs"] for r in result["reads"]]
        build, stored = "same store", ""
        loads = [load for epochs in reads for e in epochs for load in e["load"]]
        if system not in first_of_system:
            first_of_system.add(system)
            build = _median_each([b["images"] / b["s"] for b in result["builds"]])
            stored = f"{result['builds'][0]['stored'] / 2**20:,.0f}"
            loads += [load for b in result["builds"] for load in b["load"]]
        cold = _median_each([e[0]["images"] / e[0]["s"] for e in reads])
        first = _median_each([e[0]["first_batch_s"] for e in reads], "{:.1f}")
        later = _median_each([sum(x["images"] for x in e[1:]) / sum(x["s"] for x in e[1:]) for e in reads])
        traffic = " / ".join(f"{e['requests']:,}, {e['bytes'] / 2**20:,.0f}" for e in reads[0])
        seen = sorted({e["images"] for epochs in reads for e in epochs})
        lines.append(
            f"| {NAMES[row]} | {build} | {stored} | {cold} | {first} | {later} | {traffic} "
            f"| {', '.join(f'{n:,}' for n in seen)} | {_hit_rate(reads)} | {min(loads):.1f}-{max(loads):.1f} |"
        )
    return [*lines, ""]


def _median_each(values: list[float], form: str = "{:,.0f}") -> str:
    """The median of ``values`` and, in brackets, each of them in order."""
    return f"{form.format(statistics.median(values))} ({', '.join(form.format(v) for v in values)})"


def _hit_rate(reads: list[list[dict]]) -> str:
    """The node's shard cache hit rate over every read (ours only: the peers count nothing alike)."""
    epochs = [e for read in reads for e in read]
    if "cache" not in epochs[0]:
        return "n/a"
    total = {k: sum(e["cache"][k] for e in epochs) for k in epochs[0]["cache"]}
    uses = total["hits"] + total["misses"] + total["waits"]
    return f"{(total['hits'] + total['waits']) / uses:.1%}" if uses else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the 500x375 corpus")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 images")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"which to measure, in this order (of {', '.join(ROWS)})"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every build and read")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (its path is printed)")
    args = parser.parse_args()
    count = 200 if args.quick else args.images
    import corpus

    work = Path(tempfile.mkdtemp(prefix="peerbench-"))
    print(f"working folder {work}", flush=True)
    try:
        corpus.DATA = work / "corpus"  # the corpus lives and dies with the run
        corpus_dir = corpus.build("imagenet", count)
        with s3(work) as endpoint:
            os.environ.update(
                {
                    "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": endpoint,  # boto3 and obstore (litData)
                    "S3_ENDPOINT_URL": endpoint,  # Mosaic streaming
                    "AWS_ALLOW_HTTP": "true",  # obstore refuses plain http otherwise
                }
            )
            results = run_rounds(args.rows.split(","), args.rounds, corpus_dir, work, endpoint)
        print("\n".join(report(count, args.rounds, results)))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
