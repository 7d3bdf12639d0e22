"""Images read from where they live: a remote source with 50 ms latency against local disk, and opening
a million-item metadata-only export with ``images_root``.

    pip install scikit-image             # the corpus's source photos (benchmarks only)
    python benchmarks/bench_remote.py    # writes benchmarks/RESULTS_remote.md

The remote source is static_server.py: the 500x375 corpus (benchmarks/corpus.py) served over HTTP
from RAM, by a process of its own, one server answering at once and one with a first-byte latency
of 50 ms (what S3 answers in). The export is the corpus's metadata without its images, opened with
``images_root=<server URL>``. At 2 workers, batch 64 and 224 px (``ds.dataloader``), each variant
in a fresh interpreter, img/s over 2 timed epochs after a warm-up epoch:

- local disk: the corpus as an export with its own images (the reference);
- the same files through ``images_root=<folder>`` (the thread-pool path, with no latency);
- HTTP with no latency, and with 50 ms, each with the loader's read-ahead (its batches carry the
  batch each worker loads next: the ``next_indices`` of the ``BatchRequest``s its batch sampler,
  ``vl_datasets.loading.batch_sampler.RequestSampler``, yields) and with it taken off from
  outside, to show what it buys;
- HTTP with 50 ms and ``image_cache``: the warm-up epoch fills the node-local copy, and the timed
  epochs read from it;
- HTTP with 50 ms and ``prepare=256`` (the warm-up epoch fills the store), and the same two from an
  S3 bucket (s3_server.py: moto, 50 ms before each answer).

Both servers count the requests they answer: a second pass reads two epochs of each remote
variant with no worker processes (so none reads ahead into the next epoch) and reports the GETs,
HEADs and listings of each epoch: one GET per image is the target.

The server shares the machine's cores with the loader, which a real bucket does not: its CPU time
is reported next to the rates, and so is the loader's own CPU time per image (main process and
workers), which other work on a shared machine does not change. Workers' memory is read from
/proc at the end of the timed epochs.
Rounds are interleaved and the ratios are medians of per-round ratios, as in bench_loader.py.

Targets (issue 11): with 50 ms, >= 90% of the same source with no latency and >= 60% of local disk;
with image_cache, later epochs >= 95% of local disk. A 1,000,000-item metadata-only export opened
with ``images_root``: report the first open; later opens within 2x a bare pyarrow read.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from fresh import call_fresh  # benchmarks/ is the script's folder: on sys.path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SIZE, BATCH, WORKERS, LATENCY_MS = 224, 64, 2, 50
TIMED_EPOCHS = 2
LOCAL, FOLDER, HTTP0, AHEAD0, HTTP50, AHEAD, CACHED = (
    "local disk (the export's own images)",
    "images_root=<local folder>",
    "HTTP, no latency, read-ahead off",
    "HTTP, no latency",
    f"HTTP, {LATENCY_MS} ms, read-ahead off",
    f"HTTP, {LATENCY_MS} ms",
    f"HTTP, {LATENCY_MS} ms, image_cache (later epochs)",
)
HTTP_PREPARED, S3, S3_PREPARED = (
    f"HTTP, {LATENCY_MS} ms, prepare=256",
    f"S3 (moto), {LATENCY_MS} ms",
    f"S3 (moto), {LATENCY_MS} ms, prepare=256",
)
NO_READ_AHEAD = (HTTP0, HTTP50)
PREPARED = (HTTP_PREPARED, S3_PREPARED)


# -- the image loaders, each measured in a fresh interpreter ------------------------------------


def measure(variant: str, corpus_dir: str, export_dir: str, root: str, cache_dir: str, server: str = "") -> dict:
    """img/s of ``variant`` over the timed epochs after a warm-up one, and its workers' memory."""
    import multiprocessing
    import time

    ds = _open(variant, corpus_dir, export_dir, root, cache_dir, server)
    loader = ds.dataloader(BATCH, num_workers=WORKERS, seed=0)
    if variant in NO_READ_AHEAD:
        loader.batch_sampler.__class__ = _without_read_ahead(type(loader.batch_sampler))
    seen = 0
    for epoch in range(1 + TIMED_EPOCHS):
        if epoch == 1:
            pids = [os.getpid(), *(p.pid for p in multiprocessing.active_children())]
            start, cpu, seen = time.perf_counter(), sum(map(_cpu_s, pids)), 0
        for _, labels in loader:
            seen += len(labels)
    rate = seen / (time.perf_counter() - start)
    cpu_ms = (sum(map(_cpu_s, pids)) - cpu) * 1000 / seen  # the loader's own cost, whatever else runs
    workers = [_memory_mib(p.pid) for p in multiprocessing.active_children()]
    return {"rate": rate, "cpu_ms": cpu_ms, "workers": workers}


def count_requests(variant: str, corpus_dir: str, export_dir: str, root: str, cache_dir: str, server: str) -> dict:
    """The requests ``server`` answered in each of two epochs of ``variant``, read with no worker
    processes, so that nothing is read ahead into the next epoch (persistent workers would)."""
    ds = _open(variant, corpus_dir, export_dir, root, cache_dir, server)
    loader = ds.dataloader(BATCH, num_workers=0, seed=0)
    counts = [_requests(server)]
    for _ in range(2):
        for _ in loader:
            pass
        counts.append(_requests(server))
    per_epoch = [{k: after.get(k, 0) - before.get(k, 0) for k in after} for before, after in itertools.pairwise(counts)]
    return {"requests": per_epoch, "images": len(ds)}


def count_prepare(variant: str, corpus_dir: str, export_dir: str, root: str, cache_dir: str, server: str) -> dict:
    """The requests ``server`` answered for ``prepare()`` into an empty store, then for a second
    ``prepare()`` (each original's identity checked, nothing left to prepare)."""
    ds = _open(variant, corpus_dir, export_dir, root, cache_dir, server)
    counts = [_requests(server)]
    for _ in range(2):
        ds.prepare(num_workers=WORKERS, progress=False)
        counts.append(_requests(server))
    per_run = [{k: after.get(k, 0) - before.get(k, 0) for k in after} for before, after in itertools.pairwise(counts)]
    return {"requests": per_run, "images": len(ds)}


def _open(variant: str, corpus_dir: str, export_dir: str, root: str, cache_dir: str, server: str):
    import torch

    from vl_datasets.loading.dataset import VisualLayerDataset

    torch.set_num_threads(1)
    options: dict = {"image_size": SIZE, "cache_dir": cache_dir}
    if variant == LOCAL:
        return VisualLayerDataset.from_export(corpus_dir, **options)
    if root.startswith("s3://"):
        os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"})
        options["storage_options"] = {"endpoint_url": server}
    options.update({"image_cache": "4G"} if variant == CACHED else {})
    options.update({"prepare": 256} if variant in PREPARED else {})
    return VisualLayerDataset.from_export(export_dir, images_root=root, **options)


def _requests(server: str) -> dict[str, int]:
    """The requests a counting server (static_server.py, s3_server.py) has answered, by kind."""
    if not server:
        return {}
    from urllib.request import urlopen

    with urlopen(f"{server}/__requests", timeout=30) as answer:
        return json.loads(answer.read())


def _without_read_ahead(sampler_class: type) -> type:
    """The loader's batch sampler class with its read-ahead hints taken off: requests name no next
    batch, so each worker's reads start only when its batch arrives (what read-ahead is measured against)."""
    from vl_datasets.loading.batches import BatchRequest

    class NoReadAhead(sampler_class):  # type: ignore[valid-type, misc]
        def __iter__(self):
            return (BatchRequest(tuple(batch)) for batch in self._batches())

    return NoReadAhead


def _memory_mib(pid: int) -> dict:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kib = {k: int(fields[k].split()[0]) for k in ("Rss", "Pss", "Private_Clean", "Private_Dirty")}
    return {"rss": kib["Rss"] / 1024, "uss": (kib["Private_Clean"] + kib["Private_Dirty"]) / 1024}


def measure_fresh(
    variant: str, corpus_dir: Path, export_dir: Path, root: str, cache_dir: Path, server: str, what: str = "measure"
) -> dict:
    """``what`` (``measure`` or ``count_requests``) of ``variant``, in a fresh interpreter."""
    args = (str(a) for a in (corpus_dir, export_dir, root, cache_dir, server))
    return call_fresh("bench_remote", what, variant, *args)


@contextlib.contextmanager
def static_server(root: Path, latency_ms: float, script: str = "static_server.py") -> Iterator[tuple[str, int]]:
    """(URL, pid) of a static_server.py (or ``script``, s3_server.py) serving ``root``; it stops when the block ends."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / script), str(root), "--latency-ms", str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        port = int(process.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()  # the server's signal to stop
        process.wait(timeout=30)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metadata_only(corpus_dir: Path) -> Path:
    """The corpus's export without its images: what ``include_images=False`` fetches."""
    folder = DATA / f"{corpus_dir.name}_metadata_only"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(corpus_dir / "metadata.json", folder / "metadata.json")
    return folder


def loader_section(count: int, rounds: int, *, requests_only: bool = False) -> list[str]:
    import corpus

    corpus_dir = corpus.build("imagenet", count)
    export_dir = metadata_only(corpus_dir)
    images = corpus_dir / "images"
    variants = [LOCAL, FOLDER, HTTP0, AHEAD0, HTTP50, AHEAD, CACHED, HTTP_PREPARED, S3, S3_PREPARED]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with (
        static_server(images, 0) as (fast, fast_pid),
        static_server(images, LATENCY_MS) as (slow, slow_pid),
        static_server(images, LATENCY_MS, "s3_server.py") as (s3, s3_pid),
    ):
        http = {HTTP0: fast, AHEAD0: fast, HTTP50: slow, AHEAD: slow, CACHED: slow, HTTP_PREPARED: slow}
        roots = {LOCAL: "", FOLDER: str(images), **http, S3: "s3://bench/photos", S3_PREPARED: "s3://bench/photos"}
        servers = {**http, S3: s3, S3_PREPARED: s3}
        pids = {fast: fast_pid, slow: slow_pid, s3: s3_pid}
        for _ in range(0 if requests_only else rounds):
            for variant in variants:
                server = servers.get(variant, "")
                cache_dir = DATA / "remote_cache"
                shutil.rmtree(cache_dir, ignore_errors=True)  # every cached or prepared run fills its own
                before = _cpu_s(pids[server]) if server else 0.0
                result = measure_fresh(variant, corpus_dir, export_dir, roots[variant], cache_dir, server)
                result["server_cpu_s"] = _cpu_s(pids[server]) - before if server else 0.0
                results[variant].append(result)
                print(f"{variant}: {result['rate']:,.0f} img/s", flush=True)
        counted = {}
        for variant in (AHEAD, CACHED, HTTP_PREPARED, S3, S3_PREPARED):  # read-ahead changes when, not what
            shutil.rmtree(DATA / "remote_cache", ignore_errors=True)
            arguments = (variant, corpus_dir, export_dir, roots[variant], DATA / "remote_cache", servers[variant])
            counted[variant] = measure_fresh(*arguments, what="count_requests")
        for variant in PREPARED:
            shutil.rmtree(DATA / "remote_cache", ignore_errors=True)
            arguments = (variant, corpus_dir, export_dir, roots[variant], DATA / "remote_cache", servers[variant])
            counted[f"{variant}: prepare(), then prepare() again"] = measure_fresh(*arguments, what="count_prepare")
    shutil.rmtree(DATA / "remote_cache", ignore_errors=True)
    timed = [] if requests_only else _loader_report(count, rounds, variants, results)
    return timed + _requests_report(count, counted)


def _loader_report(count: int, rounds: int, variants: list[str], results: dict[str, list[dict]]) -> list[str]:
    def ratio(a: str, b: str) -> float:
        return statistics.median(x["rate"] / y["rate"] for x, y in zip(results[a], results[b]))

    lines = [
        f"## Loader ({count} images of 500x375, {WORKERS} workers, batch {BATCH}, {SIZE} px, "
        f"{TIMED_EPOCHS} timed epochs after a warm-up, median of {rounds} interleaved rounds)",
        "",
        "| source | img/s | per round | loader CPU ms/img | worker RSS / USS (MiB) | server CPU s |",
        "| --- | ---: | --- | ---: | --- | ---: |",
    ]
    for v in variants:
        rates = [r["rate"] for r in results[v]]
        last = results[v][-1]["workers"]
        memory = ", ".join(f"{w['rss']:.0f} / {w['uss']:.0f}" for w in last)
        cpu = statistics.median(r["server_cpu_s"] for r in results[v])
        per_round = ", ".join(f"{r:,.0f}" for r in rates)
        cpu_ms = statistics.median(r["cpu_ms"] for r in results[v])
        lines.append(f"| {v} | {statistics.median(rates):,.0f} | {per_round} | {cpu_ms:.2f} | {memory} | {cpu:.1f} |")
    lines += [
        "",
        f"- {LATENCY_MS} ms / no latency: **{ratio(HTTP50, HTTP0):.0%}** without read-ahead, "
        f"**{ratio(AHEAD, AHEAD0):.0%}** with it, against no latency with it too "
        f"({ratio(AHEAD, HTTP0):.0%} against no latency without it) (target >= 90%)",
        f"- {HTTP50} / local disk: **{ratio(HTTP50, LOCAL):.0%}** without read-ahead, "
        f"**{ratio(AHEAD, LOCAL):.0%}** with it (target >= 60%)",
        f"- image_cache, later epochs / local disk: **{ratio(CACHED, LOCAL):.0%}** (target >= 95%)",
        f"- images_root=<local folder> / local disk: {ratio(FOLDER, LOCAL):.0%}; "
        f"{HTTP0} / local disk: {ratio(HTTP0, LOCAL):.0%}",
        "",
    ]
    return lines


def _requests_report(count: int, counted: dict[str, dict]) -> list[str]:
    """What the storage saw: requests in a first epoch and in the next, by kind."""

    def shown(counts: dict[str, int]) -> str:
        return ", ".join(f"{n:,} {kind}" for kind, n in sorted(counts.items()) if n) or "0"

    lines = [
        f"Requests the storage answered per epoch ({count} images, read with no worker processes so that "
        "no epoch reads ahead into the next; the prepared store and the image cache start empty):",
        "",
        "| source | first epoch (or prepare()) | per image | second epoch (or prepare()) |",
        "| --- | --- | ---: | --- |",
    ]
    for variant, result in counted.items():
        first, second = result["requests"]
        per_image = sum(first.values()) / result["images"]
        lines.append(f"| {variant} | {shown(first)} | {per_image:.2f} | {shown(second)} |")
    return [*lines, ""]


# -- opening a million-item metadata-only export -------------------------------------------------


def build_metadata_export(rows: int) -> Path:
    """A metadata-only export of ``rows`` items (bench_metadata.py's schema) and no images at all."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = DATA / f"metadata_only_{rows}"
    if (folder / "metadata.parquet").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows)
    label = '[{{"type": "image_label", "properties": {{"category_name": "class_{}", "source": "User"}}}}]'
    table = pa.table(
        {
            "media_id": [f"{i:024x}" for i in range(rows)],
            "media_type": pa.array(["image"] * rows),
            "file_name": [f"{i:07d}.jpg" for i in range(rows)],
            "file_path": [f"all/{i:07d}.jpg" for i in range(rows)],
            "uniqueness_score": rng.random(rows),
            "metadata_items": [label.format(n) for n in labels],
        }
    )
    pq.write_table(table, folder / "metadata.parquet")
    return folder


BARE = """
import json, time
import pyarrow.parquet as pq, pyarrow.dataset  # imported up front, as the library does
t = time.perf_counter(); table = pq.read_table({path!r}); s = time.perf_counter() - t
print(json.dumps({{"s": s}}))
"""

OPEN = """
import json, time
t = time.perf_counter()
import pyarrow.dataset, torch, fsspec.implementations.http  # imported up front: the reference's imports too
imports = time.perf_counter() - t
from vl_datasets.loading.dataset import VisualLayerDataset
t = time.perf_counter()
ds = VisualLayerDataset.from_export({folder!r}, cache_dir={cache!r}, images_root="https://images.example.com/photos")
s = time.perf_counter() - t
assert ds.image_path(0) == "https://images.example.com/photos/all/0000000.jpg", ds.image_path(0)
print(json.dumps({{"s": s, "n": len(ds), "imports": imports}}))
"""


def _child(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def metadata_section(rows: int, runs: int) -> list[str]:
    folder = build_metadata_export(rows)
    cache = DATA / "metadata_only_cache"
    shutil.rmtree(cache, ignore_errors=True)
    first = _child(OPEN.format(folder=str(folder), cache=str(cache)))
    bare, opened = [], []
    for _ in range(runs):  # interleaved: the machine drifts
        bare.append(_child(BARE.format(path=str(folder / "metadata.parquet")))["s"])
        opened.append(_child(OPEN.format(folder=str(folder), cache=str(cache)))["s"])
    shutil.rmtree(cache, ignore_errors=True)
    ratio = statistics.median(o / b for o, b in zip(opened, bare))
    return [
        f"## Opening a {rows:,}-item metadata-only export with images_root (median of {runs} fresh processes)",
        "",
        "| measurement | value | target |",
        "| --- | ---: | --- |",
        f"| bare `pq.read_table` of metadata.parquet | {statistics.median(bare):.3f} s | reference |",
        f"| first open (normalizes and indexes into the cache; nothing listed) | {first['s']:.2f} s | report |",
        f"| later opens | {statistics.median(opened):.3f} s | |",
        f"| later open / bare read | {ratio:.2f}x | <= 2x |",
        "",
        f"The opens exclude the imports of torch, pyarrow.dataset and fsspec's HTTP filesystem "
        f"({first['imports']:.2f} s, once per process), as bench_metadata.py's do.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images in the 500x375 corpus")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="items of the metadata-only export (0: skip)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_remote.md")
    parser.add_argument("--requests-only", action="store_true", help="count the requests; time nothing")
    args = parser.parse_args()
    lines = [f"# Images from where they live ({len(os.sched_getaffinity(0))} cores)", ""]
    lines += loader_section(args.images, args.rounds, requests_only=args.requests_only)
    print("\n".join(lines), flush=True)
    if args.rows:
        lines += metadata_section(args.rows, args.runs)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
