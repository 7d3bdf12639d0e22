"""Prepared images (``prepare=S``): epochs after preparation against the plain Pillow dataset, what
preparing costs, bytes on disk, and how far the prepared pixels are from the direct path.

    pip install scikit-image              # the corpora's source photos (benchmarks only)
    python benchmarks/bench_prepared.py   # writes benchmarks/RESULTS_prepared.md

Corpora (benchmarks/corpus.py): 500x375 JPEGs and 2000x1500 originals. At 2 workers, batch 64,
224x224 uint8 (``image_size=224``), every rate in a fresh interpreter, as in bench_loader.py:

- the plain Pillow dataset (``bench_loader.PlainPillowDataset``), as it starts and with glibc's
  allocator warmed (``bench_loader.WARMED_ALLOCATOR``); the speedup is taken against the faster;
- the direct path: ``VisualLayerDataset`` without ``prepare`` (decodes every epoch);
- prepared: ``VisualLayerDataset(prepare=256)``, its store filled by ``ds.prepare()`` beforehand.

A rate is the images of the timed epochs over their time, after a warm-up epoch. CPU ms per image
(the process and its workers, every epoch) is reported next to it: it does not change when other
work shares the machine. Preparation is timed from a cold store (removed first) in a fresh
interpreter, ``ds.prepare()`` on every core, against one epoch of the direct path (its images over
its rate). Rounds are interleaved and each ratio is the median of its per-round ratios.

Grey levels: every image through ``prepare=256`` and through the direct path at 224 px, mean
absolute difference per image. The format table shows why the store holds raw pixels: for a sample
of each corpus prepared at 256, the bytes per image, the single-core time to turn a stored image
into a 224 px tensor (from bytes in RAM), and its mean absolute difference from the direct path.

Targets (issue 13): epochs after preparation >= 20x the plain Pillow dataset on 2000x1500 and
>= 2.5x on 500x375; preparation <= 1.5x one epoch of the direct path; <= 1.5 grey levels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import simplejpeg
import torch

import bench_loader
import corpus
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.images import decode_image
from vl_datasets.loading.prepared import StoreSettings, remove_store, store_path
from vl_datasets.loading.prepared_source import prepare_pixels, prepared_image

HERE = Path(__file__).resolve().parent
CACHE = corpus.DATA / "prepared_cache"  # its own cache: stores are removed and rebuilt here
SIZE, PREPARE, BATCH, WORKERS, ROUNDS = 224, 256, 64, 2, 3
# Timed epochs: at least ~1,200 images for the plain dataset (bench_loader's), ~4,000 prepared.
PLAIN_EPOCHS = bench_loader.EPOCHS
PREPARED_EPOCHS = {"imagenet": 2, "large": 14}
TARGETS = {"imagenet": 2.5, "large": 20.0}
PREP_TARGET, GREY_TARGET = 1.5, 1.5
PLAIN, WARMED = bench_loader.PLAIN, bench_loader.WARMED
DIRECT, PREPARED = "VisualLayerDataset, direct", f"VisualLayerDataset, prepare={PREPARE}"


def _open(folder: Path, prepare: int | None = None, image_size: int | None = SIZE) -> VisualLayerDataset:
    return VisualLayerDataset.from_export(folder, cache_dir=CACHE, image_size=image_size, prepare=prepare)


def _direct(folder: Path, workers: int):
    return _open(folder).dataloader(BATCH, num_workers=workers, seed=0)


def _prepared(folder: Path, workers: int):
    return _open(folder, PREPARE).dataloader(BATCH, num_workers=workers, seed=0)


LOADERS = {PLAIN: bench_loader._plain, WARMED: bench_loader._plain, DIRECT: _direct, PREPARED: _prepared}


def measure(name: str, folder: Path, workers: int, epochs: int) -> tuple[float, float]:
    """(img/s over ``epochs`` timed epochs after a warm-up one, CPU ms per image over all of them)."""
    before = os.times()
    loader = LOADERS[name](folder, workers)
    seen = total = 0
    for epoch in range(epochs + 1):
        if epoch == 1:
            start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch[1])
            total += len(batch[1])
    rate = seen / (time.perf_counter() - start)
    del loader  # its workers exit, so their CPU time is counted as the children's
    after = os.times()
    cpu = sum(after[:4]) - sum(before[:4])
    return rate, cpu / total * 1e3


def measure_fresh(name: str, folder: Path, epochs: int) -> tuple[float, float]:
    """``measure`` in a fresh interpreter with one intra-op thread in its main process."""
    code = (
        "import torch, bench_prepared as b; from pathlib import Path; torch.set_num_threads(1); "
        f"print(*b.measure({name!r}, Path({str(folder)!r}), {WORKERS}, {epochs}))"
    )
    env = {**os.environ, **(bench_loader.WARMED_ALLOCATOR if name == WARMED else {})}
    return tuple(float(x) for x in _run(code, env).split()[-2:])  # type: ignore[return-value]


def time_preparation(folder: Path) -> tuple[float, float, int, int]:
    """(seconds, CPU seconds, images, bytes on disk) of ``ds.prepare()`` from a cold store; the
    dataset's open is not timed. The CPU time is this process's and its pool's."""
    ds = _open(folder, PREPARE)
    remove_store(store_path(ds.entry, StoreSettings(PREPARE)))
    ds = _open(folder, PREPARE)
    before, start = os.times(), time.perf_counter()
    summary = ds.prepare(progress=False)
    seconds, after = time.perf_counter() - start, os.times()
    return seconds, sum(after[:4]) - sum(before[:4]), summary.images, summary.bytes_on_disk


def prepare_fresh(folder: Path) -> tuple[float, float, int, int]:
    code = f"import bench_prepared as b; from pathlib import Path; print(*b.time_preparation(Path({str(folder)!r})))"
    seconds, cpu, images, size = _run(code, dict(os.environ)).split()[-4:]
    return float(seconds), float(cpu), int(images), int(size)


def _run(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"a measurement failed:\n{result.stderr[-3000:]}")
    return result.stdout


def grey_levels(folder: Path) -> tuple[float, float, float]:
    """(mean, largest, 95th percentile) of the per-image mean absolute difference, prepared against
    direct, at 224 px."""
    direct, prepared = _open(folder), _open(folder, PREPARE)
    differences = [(prepared[i][0].float() - direct[i][0].float()).abs().mean().item() for i in range(len(direct))]
    return statistics.fmean(differences), max(differences), float(np.percentile(differences, 95))


def format_rows(folder: Path, sample: int = 100) -> list[tuple[str, float, float, float]]:
    """(format, KiB per image, ms to a 224 px tensor on one core, grey levels) for stored images."""
    torch.set_num_threads(1)
    blobs = [Path(p).read_bytes() for p, _ in corpus.image_paths(folder)[:sample]]
    direct = [decode_image(b, size=SIZE).float() for b in blobs]
    pixels = [prepare_pixels(b, PREPARE) for b in blobs]
    rows = [_format_row("raw RGB (the store)", [p.nbytes for p in pixels], direct, pixels, _from_raw)]
    for quality, subsampling in ((90, "420"), (95, "420"), (95, "444")):
        encoded = [simplejpeg.encode_jpeg(p, quality=quality, colorsubsampling=subsampling) for p in pixels]
        name = f"JPEG q{quality} {subsampling[0]}:{subsampling[1]}:{subsampling[2]}"
        rows.append(_format_row(name, [len(e) for e in encoded], direct, encoded, _from_jpeg))
    return rows


def _from_raw(pixels: np.ndarray) -> torch.Tensor:
    return prepared_image(pixels, "tensor", SIZE)  # type: ignore[return-value]


def _from_jpeg(data: bytes) -> torch.Tensor:
    return decode_image(data, size=SIZE)


def _format_row(name, sizes, direct, stored, read) -> tuple[str, float, float, float]:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        images = [read(s) for s in stored]
        best = min(best, (time.perf_counter() - start) / len(stored))
    grey = statistics.fmean((i.float() - d).abs().mean().item() for i, d in zip(images, direct))
    return name, statistics.fmean(sizes) / 1024, best * 1e3, grey


def _section(kind: str, count: int) -> list[str]:
    folder = corpus.build(kind, count)
    for path, _ in corpus.image_paths(folder):  # the originals in the page cache, as for every loader
        Path(path).read_bytes()
    originals = statistics.fmean(Path(p).stat().st_size for p, _ in corpus.image_paths(folder))
    rounds = []
    for _ in range(ROUNDS):
        # Preparation next to the direct epoch it is compared with, before the machine drifts.
        seconds, cpu, images, size = prepare_fresh(folder)
        direct = measure_fresh(DIRECT, folder, PLAIN_EPOCHS[kind])
        prepared = measure_fresh(PREPARED, folder, PREPARED_EPOCHS[kind])
        plain = measure_fresh(PLAIN, folder, PLAIN_EPOCHS[kind])
        warmed = measure_fresh(WARMED, folder, PLAIN_EPOCHS[kind])
        rounds.append((plain, warmed, direct, prepared, seconds, size / images, cpu))
        print(f"{kind} round: {rounds[-1]}", flush=True)
    speedups = [p[0] / max(pl[0], w[0]) for pl, w, _, p, *_ in rounds]
    cpu_speedups = [min(pl[1], w[1]) / p[1] for pl, w, _, p, *_ in rounds]
    prep_ratios = [s / (count / d[0]) for _, _, d, _, s, *_ in rounds]
    # The direct path's CPU per image counts its warm-up epoch and worker start too: a fair epoch.
    prep_cpu_ratios = [c / (count * d[1] / 1e3) for _, _, d, _, _, _, c in rounds]
    mean_grey, worst_grey, p95_grey = grey_levels(folder)
    lines = [
        f"## {kind} corpus ({count} images, originals {originals / 1024:.0f} KiB each; prepare={PREPARE}, 224 px, "
        f"{WORKERS} workers)",
        "",
        "| round | plain Pillow | plain, warmed allocator | direct | prepared | prepared / faster plain | "
        "preparation | one direct epoch | preparation / direct epoch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, ((pl, _), (w, _), (d, _), (p, _), s, *_) in enumerate(rounds):
        lines.append(
            f"| {i + 1} | {pl:,.0f} img/s | {w:,.0f} img/s | {d:,.0f} img/s | {p:,.0f} img/s | {p / max(pl, w):.1f}x "
            f"| {s:.2f} s | {count / d:.2f} s | {s / (count / d):.2f}x |"
        )
    cpu = [statistics.median(r[j][1] for r in rounds) for j in range(4)]
    target = TARGETS[kind]
    lines += [
        "",
        f"- epochs after preparation / the faster plain Pillow dataset: **{statistics.median(speedups):.1f}x** "
        f"(median of rounds; {min(speedups):.1f}-{max(speedups):.1f}x; target >= {target:g}x)",
        f"- CPU per image (median): plain {cpu[0]:.2f} ms, warmed {cpu[1]:.2f} ms, direct {cpu[2]:.2f} ms, prepared "
        f"{cpu[3]:.2f} ms: the faster plain / prepared is **{statistics.median(cpu_speedups):.1f}x** in CPU time",
        f"- preparation / one epoch of the direct path: **{statistics.median(prep_ratios):.2f}x** (median of rounds, "
        f"{min(prep_ratios):.2f}-{max(prep_ratios):.2f}x; target <= {PREP_TARGET:g}x); in CPU time "
        f"**{statistics.median(prep_cpu_ratios):.2f}x**",
        f"- bytes on disk per image: **{statistics.median(r[5] for r in rounds) / 1024:.0f} KiB** "
        f"(the originals: {originals / 1024:.0f} KiB)",
        f"- prepared against direct at 224 px: **{mean_grey:.2f}** grey levels mean absolute difference over all "
        f"images (per image: 95th percentile {p95_grey:.2f}, largest {worst_grey:.2f}; target <= {GREY_TARGET:g})",
        "",
        f"Stored formats (a sample of 100 prepared at {PREPARE}; time on one core, bytes in RAM):",
        "",
        "| format | KiB per image | ms to a 224 px tensor | grey levels from direct |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {n} | {kib:.1f} | {ms:.2f} | {grey:.2f} |" for n, kib, ms, grey in format_rows(folder)]
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imagenet", type=int, default=2000, help="images in the 500x375 corpus")
    parser.add_argument("--large", type=int, default=300, help="images in the 2000x1500 corpus")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_prepared.md")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    lines = [f"# Prepared images ({cores} cores, batch {BATCH}, 224x224 uint8)", ""]
    for kind, count in (("imagenet", args.imagenet), ("large", args.large)):
        lines += _section(kind, count)
        print("\n".join(lines), flush=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
