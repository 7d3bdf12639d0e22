"""Opening a metadata-only export of 1M-30M items: time, memory, pickles and workers, next to HF datasets.

    pip install -e .[bench]    # Hugging Face datasets (the peer) and psutil
    python benchmarks/bench_metadata.py [--rows 1000000 10000000 30000000] [--out FILE]
        [--measure bare hf ours split workers] [--repeat 3] [--rounds 1] [--timeout-s S] [--max-rss-gib G]

The export is ``metadata_export.build_export(rows)``: a synthetic metadata-only Parquet export of
realistic rows (that module's docstring says how they are made), built once under
benchmarks/data/ (git-ignored) and kept; the caches a run makes (ours, HF's, the linked images) are
deleted after each size, once their size on disk is counted. Every dataset is opened as a training job would, through
public entry points only::

    VisualLayerDataset.from_export(folder, cache_dir=..., images_root=...,
                                   min_uniqueness=0.3, dedupe=True, task="classification", label_source="User")

(``label_source="User"``: the items also carry Model and Visual Layer labels.) Each measurement
runs in a fresh interpreter (this file, ``--child NAME``), with a time limit that records "timed out
after N s" instead of hanging, a limit on its resident memory (60% of the machine's by default) that
stops it before the kernel's OOM killer would pick a process of the machine's other users, and the
1-minute load average at its start and end (the machine is shared). Peak RSS is the child's own
high-water mark (``VmHWM``) at the end of the phase measured; the RSS of its process tree (with any
helper or worker it starts) is sampled every 50 ms for the memory limit.

- baseline: an interpreter with torch imported; the targets count memory above it.
- bare read: ``pyarrow.parquet.read_table`` of the whole file (the reference for reading it).
- HF ``datasets.Dataset.from_parquet(file, cache_dir=...)``: its first load into a fresh cache,
  then its reload from that cache in new processes.
- ``--rounds N``: HF's first load and our first open are measured N times each, in rounds of one
  each whose order alternates (each into a fresh cache), and the median is reported with every
  round and the ratio round by round: on this kind of machine the page cache's writes, gigabytes
  on both sides, cost from one to five times as much depending on how long ago that memory was
  last used.
- HF with the curation: its first load into another fresh cache, then the curation ours does
  (``OPTIONS``), done with ``datasets``' own ``map`` and ``select`` and pandas (``child_hf_curated``
  says how): the work a user of HF does to train on the curated items. Not a target of issue 19,
  which compares the first open with HF's load alone; opt in with ``--measure hf_curated``.
- ours: the first open (index + curation, fresh cache), the cached open of the same curated dataset
  (same options, new processes), and in that process ``len(pickle.dumps(ds))``.
- ``leakage_safe_split(ds, {"train": 0.8, "val": 0.2})`` over the whole export (opened without
  curation, ``task=None``, as the function's docstring suggests: split, then curate each part),
  three times: with seed 0 after the first open of its options (its peak is mostly the open's), with
  seed 1 in a new process after a cached open, where the split's own peak shows (the high-water
  mark is reset once the dataset is open: "its own peak above its start"), and with seed 1 again,
  which maps the split the previous one kept beside the item list, as every other rank would.
- workers: a DataLoader from ``ds.dataloader(64, shuffle=False, num_workers=2,
  multiprocessing_context=...)`` under ``spawn`` and under ``fork``: the time from ``iter(loader)``
  (the epoch's start) to its first batch, and each worker's private memory (USS) once both have sent
  a batch, next to the same loader over ``range(len(ds))`` (an empty worker). The images are one
  8x8 JPEG hard-linked under the names of the first 16 batches in an ``images_root`` of the
  benchmark's own; nothing else is ever read. The fork rows replace the old "growth per forked
  worker per epoch" figure: what a worker holds once it runs, whatever the start method.

Targets (issue 19; set at 10M items on 2 cores, printed PASS/FAIL at every size run):
first open within HF's first load and at most 1.5 GiB above the baseline; cached open within HF's
reload and at most 200 MiB above the baseline; pickle at most 1 MiB; a spawned worker's first batch
within 5 s of the epoch's start and its private memory at most 150 MiB above an empty worker's;
the split's peak at most 1.5 GiB above the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import pickle
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MIB = 2**20
OPTIONS = {"min_uniqueness": 0.3, "dedupe": True, "task": "classification", "label_source": "User"}
FRACTIONS = {"train": 0.8, "val": 0.2}
BATCH = 64
WORKERS = 2
LINKED_BATCHES = 16
MEASUREMENTS = ("bare", "hf", "hf_curated", "ours", "split", "workers")

# -- children: each measurement, in a fresh interpreter ---------------------------------------------


def _peak_mib() -> float:
    """This process's peak RSS so far (since the start, or since the split's reset of it). Not
    ``ru_maxrss``: Linux carries that across ``exec`` from the forking parent, so a child would
    start at the harness's own size."""
    return _status_mib("VmHWM:")


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(key))
    return int(line.split()[1]) / 1024


def _cpu_s() -> float:
    """This process's CPU time so far (user + system, every thread): on a shared machine the wall
    time varies with the others' load, this much less."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_build(paths: dict) -> dict:
    from metadata_export import build_export

    start = time.perf_counter()
    build_export(paths["rows"])
    return {"s": time.perf_counter() - start, "peak_mib": _peak_mib()}


def child_baseline(paths: dict) -> dict:
    import torch  # noqa: F401  (the baseline is what importing it costs)

    return {"peak_mib": _peak_mib()}


def child_bare(paths: dict) -> dict:
    import pyarrow.parquet as pq

    start = time.perf_counter()
    table = pq.read_table(paths["parquet"])
    return {"s": time.perf_counter() - start, "peak_mib": _peak_mib(), "n": table.num_rows}


def child_hf(paths: dict) -> dict:
    import datasets

    start, cpu = time.perf_counter(), _cpu_s()
    loaded = datasets.Dataset.from_parquet(paths["parquet"], cache_dir=paths["hf_cache"])
    seconds, cpu, peak = time.perf_counter() - start, _cpu_s() - cpu, _peak_mib()
    return {"s": seconds, "cpu_s": cpu, "peak_mib": peak, "n": len(loaded), "pickle_bytes": len(pickle.dumps(loaded))}


def child_hf_curated(paths: dict) -> dict:
    """HF's first load, then the curation ``OPTIONS`` asks of ours, done as a user of ``datasets``
    would, its quickest way found: a batched ``map`` parsing each row's ``metadata_items``
    (``json.loads``) for its User label and its duplicate group at the lowest threshold; pandas over
    the three columns needed (the score, the label, the group) for the rows kept and the most unique
    item of each group; ``select`` of those rows and the sorted class names. It stops there, with
    the targets as names: ``class_encode_column`` through select's index mapping (or
    ``flatten_indices`` first) took 70-150 s more at 1M items."""
    import datasets
    import numpy as np

    start, cpu = time.perf_counter(), _cpu_s()
    loaded = datasets.Dataset.from_parquet(paths["parquet"], cache_dir=paths["hf_cache"])
    parsed = loaded.map(_hf_label_and_group, batched=True, batch_size=10_000, input_columns=["metadata_items"])
    frame = parsed.select_columns(["uniqueness_score", "label", "group"]).to_pandas()
    frame = frame[(frame["uniqueness_score"] >= OPTIONS["min_uniqueness"]) & frame["label"].notna()]
    grouped = frame[frame["group"].notna()]
    best = grouped.sort_values("uniqueness_score", ascending=False, kind="stable").groupby("group", sort=False).head(1)
    keep = frame.index.difference(grouped.index.difference(best.index)).to_numpy()
    curated = parsed.select(np.sort(keep))
    classes = sorted(frame["label"].unique())
    seconds, cpu, peak = time.perf_counter() - start, _cpu_s() - cpu, _peak_mib()
    return {"s": seconds, "cpu_s": cpu, "peak_mib": peak, "n": len(curated), "classes": len(classes)}


def _hf_label_and_group(texts: list) -> dict:
    """Each row's User label and its duplicate group at its lowest duplicate threshold (None: none)."""
    labels, groups = [], []
    for text in texts:
        props = [(item.get("type"), item.get("properties") or {}) for item in (json.loads(text) if text else [])]
        labels.append(
            next((p.get("category_name") for t, p in props if t == "image_label" and p.get("source") == "User"), None)
        )
        dups = [p for t, p in props if t == "issue" and p.get("issue_type") == "duplicates"]
        dups = [
            (p.get("duplicate_threshold", 1.0), p["duplicate_group_id"]) for p in dups if p.get("duplicate_group_id")
        ]
        groups.append(min(dups, key=lambda threshold_group: threshold_group[0])[1] if dups else None)
    return {"label": labels, "group": groups}


def _open(paths: dict, **options):
    from vl_datasets import VisualLayerDataset

    chosen = {**OPTIONS, **options}
    return VisualLayerDataset.from_export(
        paths["folder"], cache_dir=paths["cache"], images_root=paths["images_root"], **chosen
    )


def child_open(paths: dict) -> dict:
    import torch  # noqa: F401  (imported before the clock starts, as in the baseline)

    from vl_datasets import VisualLayerDataset  # noqa: F401  (as HF's package is imported before its clock)

    start, cpu = time.perf_counter(), _cpu_s()
    ds = _open(paths)
    seconds, cpu, peak = time.perf_counter() - start, _cpu_s() - cpu, _peak_mib()
    start = time.perf_counter()
    blob = pickle.dumps(ds)
    pickle_s = time.perf_counter() - start
    return {"s": seconds, "cpu_s": cpu, "peak_mib": peak, "n": len(ds), "pickle_bytes": len(blob), "pickle_s": pickle_s}


def child_split(paths: dict) -> dict:
    import torch  # noqa: F401

    import vl_datasets

    start = time.perf_counter()
    ds = _open(paths, min_uniqueness=None, dedupe=False, task=None, label_source=None)
    open_s, open_peak = time.perf_counter() - start, _peak_mib()
    split_start = _status_mib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # the peak from here on is the split's own
    start = time.perf_counter()
    parts = vl_datasets.leakage_safe_split(ds, FRACTIONS, seed=paths["seed"])
    split_s, split_peak = time.perf_counter() - start, _peak_mib()
    counts = {name: len(ids) for name, ids in parts.items()}
    return {
        "open_s": open_s,
        "open_peak_mib": open_peak,
        "s": split_s,
        "peak_mib": max(open_peak, split_peak),
        "split_start_mib": split_start,
        "split_own_mib": split_peak - split_start,
        "parts": counts,
    }


def child_workers(paths: dict) -> dict:
    from torch.utils.data import DataLoader, Dataset

    ds = _open(paths)
    _link_images(ds, Path(paths["seed_jpeg"]), LINKED_BATCHES * BATCH)
    result = {}
    for context in ("spawn", "fork"):
        # range pickles as three integers: an empty worker, with the same loader settings.
        items = cast("Dataset[int]", range(len(ds)))
        settings: dict[str, Any] = {"shuffle": False, "num_workers": WORKERS, "multiprocessing_context": context}
        empty = partial(DataLoader, items, BATCH, persistent_workers=True, **settings)
        result[context] = {
            "empty": _first_batches(empty),
            "ours": _first_batches(partial(ds.dataloader, BATCH, seed=0, **settings)),
        }
    return result


def _link_images(ds, seed_jpeg: Path, count: int) -> None:
    """The first ``count`` items' images: one small JPEG under each of their names."""
    for index in range(min(count, len(ds))):
        path = Path(ds.image_path(index))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.link(seed_jpeg, path)


def _first_batches(make_loader: Callable[[], Any]) -> dict:
    """Seconds from the epoch's start to its first batch, and each worker's private memory (MiB)
    once every worker has sent one; the loader and its workers end before it returns."""
    import psutil

    me = psutil.Process()
    before = {child.pid for child in me.children()}
    loader = make_loader()
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    seconds = time.perf_counter() - start
    for _ in range(WORKERS - 1):
        next(batches)
    # multiprocessing's resource tracker is a child too, started with the first spawned workers.
    workers = [c for c in me.children() if c.pid not in before and "resource_tracker" not in " ".join(c.cmdline())]
    uss = [worker.memory_full_info().uss / MIB for worker in workers]
    del batches, loader
    gc.collect()  # the loader's iterator shuts its workers down when it is collected
    return {"s": seconds, "uss_mib": uss}


CHILDREN: dict[str, Callable[[dict], dict]] = {
    "build": child_build,
    "baseline": child_baseline,
    "bare": child_bare,
    "hf": child_hf,
    "hf_curated": child_hf_curated,
    "open": child_open,
    "split": child_split,
    "workers": child_workers,
}

# -- the parent: runs the children with a time limit, sampling their memory --------------------------


@dataclass(frozen=True)
class Limits:
    """What one measurement may take before its process tree is killed: a shared machine's other
    users must never meet the kernel's OOM killer because of a benchmark."""

    time_s: float
    rss_mib: float


def run_child(name: str, paths: dict, limits: Limits) -> dict:
    """One measurement in a fresh interpreter: its own report, the tree's sampled peak RSS, the load
    average at start and end; ``error`` instead of figures when it failed or ran out of time."""
    import psutil

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--paths", json.dumps(paths)]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = psutil.Popen(command, stdout=out, stderr=err, env=env, cwd=HERE)
        tree_peak, stopped = _watch(process, limits)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    result: dict = {"load": [load_start, os.getloadavg()[0]], "tree_peak_mib": tree_peak}
    if stopped:
        result["error"] = stopped
    elif process.returncode:
        result["error"] = (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1][:300]
    else:
        result.update(json.loads(stdout.strip().splitlines()[-1]))
        # A warning (a split that could not be kept, an index written again) changes what the
        # figures mean: it goes into the report beside them.
        warnings = [line for line in stderr.splitlines() if line.startswith("WARNING")][-5:]
        if warnings:
            result["warnings"] = warnings
            print(f"  {name}: " + "\n  ".join(warnings), file=sys.stderr)
    if "error" in result:
        print(f"  {name}: {result['error']}", file=sys.stderr)
    return result


def _watch(process, limits: Limits) -> tuple[float, str]:
    """The process tree's peak RSS (MiB), sampled every 50 ms until it exits, and why it was killed
    ("" when it was not): past ``limits.time_s``, or with more than ``limits.rss_mib`` resident."""
    import psutil

    deadline, peak, stopped = time.monotonic() + limits.time_s, 0.0, ""
    while process.poll() is None:
        tree = [process, *process.children(recursive=True)]
        rss = 0
        for member in tree:
            with contextlib.suppress(psutil.Error):  # it ended between the listing and the read
                rss += member.memory_info().rss
        peak = max(peak, rss / MIB)
        if time.monotonic() > deadline:
            stopped = f"timed out after {limits.time_s:.0f} s"
        elif peak > limits.rss_mib:
            stopped = f"stopped at {peak:,.0f} MiB RSS (limit {limits.rss_mib:,.0f} MiB)"
        if stopped:
            for member in reversed(tree):
                with contextlib.suppress(psutil.Error):
                    member.kill()
            process.wait()
            break
        time.sleep(0.05)
    return peak, stopped


def _median_of(runs: list[dict]) -> dict:
    """The run of median time (one run as it happened, not a mix of runs); a failed run if any failed."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    return sorted(runs, key=lambda run: run["s"])[len(runs) // 2]


def _disk_mib(path: Path) -> float:
    sizes = (entry.stat().st_size for entry in path.rglob("*") if entry.is_file() and not entry.is_symlink())
    return sum(sizes) / MIB if path.exists() else 0.0


def _seed_jpeg() -> Path:
    import io

    from PIL import Image

    path = DATA / "seed_8x8.jpg"
    if not path.is_file():
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (120, 30, 200)).save(buffer, format="JPEG")
        path.write_bytes(buffer.getvalue())
    return path


def measure_size(rows: int, chosen: set[str], repeat: int, rounds: int, limits: Limits) -> dict:
    """Every chosen measurement at ``rows`` items; the caches it makes are deleted afterwards."""
    from metadata_export import export_folder

    folder = export_folder(rows)
    built = {"s": 0.0, "peak_mib": 0.0} if (folder / "metadata.parquet").is_file() else None
    built = built or run_child("build", {"rows": rows}, Limits(4 * limits.time_s, limits.rss_mib))
    if "error" in built:
        return {"rows": rows, "build": built}
    paths = {
        "folder": str(folder),
        "parquet": str(folder / "metadata.parquet"),
        "cache": str(DATA / f"metadata_cache_{rows}"),
        "hf_cache": str(DATA / f"metadata_hf_cache_{rows}"),
        "images_root": str(DATA / f"metadata_images_{rows}"),
        "seed_jpeg": str(_seed_jpeg()),
    }
    for made in ("cache", "hf_cache", "images_root"):
        shutil.rmtree(paths[made], ignore_errors=True)
    Path(paths["images_root"]).mkdir(parents=True)
    found: dict = {"rows": rows, "build": built, "parquet_mib": _disk_mib(folder)}
    found["baseline"] = _median_peak([run_child("baseline", paths, limits) for _ in range(repeat)])
    if "bare" in chosen:
        found["bare"] = _median_of([run_child("bare", paths, limits) for _ in range(repeat)])
    firsts = _first_loads(paths, chosen, rounds, limits)
    if "hf" in firsts:
        found.update(_measure_hf(paths, firsts["hf"], repeat, limits))
    elif "hf" in chosen:
        found["hf_missing"] = True
    if "hf_curated" in chosen:
        curated_cache = {**paths, "hf_cache": paths["hf_cache"] + "_curated"}
        found["hf_curated"] = run_child("hf_curated", curated_cache, limits)
        shutil.rmtree(curated_cache["hf_cache"], ignore_errors=True)
    if "ours" in chosen:
        found["first"], found["first_rounds"] = _median_of(firsts["ours"]), firsts["ours"]
        found["cached"] = _median_of([run_child("open", paths, limits) for _ in range(repeat)])
    if "split" in chosen:
        # Each seed is a split of its own: the first two split (after a first, then a cached open),
        # the third maps the split the second kept beside the item list, as every other rank would.
        found["split"] = run_child("split", {**paths, "seed": 0}, limits)
        found["split_cached"] = run_child("split", {**paths, "seed": 1}, limits)  # its open maps the cache's files
        found["split_kept"] = run_child("split", {**paths, "seed": 1}, limits)
    if "workers" in chosen:
        found["workers"] = run_child("workers", paths, limits)
    if Path(paths["cache"]).exists():
        found["cache_mib"] = _disk_mib(Path(paths["cache"]))
    for made in ("cache", "images_root"):
        shutil.rmtree(paths[made], ignore_errors=True)
    return found


def _median_peak(runs: list[dict]) -> dict:
    good = [run for run in runs if "error" not in run]
    return {**runs[0], "peak_mib": statistics.median(run["peak_mib"] for run in good)} if good else runs[0]


def _first_loads(paths: dict, chosen: set[str], rounds: int, limits: Limits) -> dict[str, list[dict]]:
    """HF's first load and our first open, each into a fresh cache, in ``rounds`` rounds of one
    each, which goes first alternating: the machine's moments (its load, how warm the memory the
    page cache takes is) fall on both alike. Each starts once what the one before wrote is on disk:
    the kernel writes a cache back on a core of its own, which the next load would otherwise lose
    (HF's 5 GiB at 10M items, ours 2.5). The caches of the last round stay, for the reloads."""
    import importlib.util

    sides = [side for side in ("hf", "ours") if side in chosen]
    if "hf" in sides and importlib.util.find_spec("datasets") is None:
        sides.remove("hf")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for number in range(rounds):
        for side in sides if number % 2 == 0 else sides[::-1]:
            shutil.rmtree(paths["hf_cache" if side == "hf" else "cache"], ignore_errors=True)
            os.sync()
            runs[side].append(run_child("hf" if side == "hf" else "open", paths, limits))
    return runs


def _measure_hf(paths: dict, firsts: list[dict], repeat: int, limits: Limits) -> dict:
    reload = _median_of([run_child("hf", paths, limits) for _ in range(repeat)])
    disk = _disk_mib(Path(paths["hf_cache"]))
    shutil.rmtree(paths["hf_cache"], ignore_errors=True)  # several GiB at 10M and more: not kept
    return {"hf_first": _median_of(firsts), "hf_first_rounds": firsts, "hf_reload": reload, "hf_cache_mib": disk}


def _rounds(found: dict, key: str) -> str | None:
    """Each round's time of a first load, in the order they ran (a failed one as its error)."""
    runs = found.get(key)
    return None if runs is None else ", ".join(_cell(run.get("error", run.get("s"))) for run in runs)


def _ratios(found: dict) -> str | None:
    """Our first open over HF's first load, round by round."""
    ours, hf = found.get("first_rounds"), found.get("hf_first_rounds")
    if not ours or not hf:
        return None
    pairs = [(a.get("s"), b.get("s")) for a, b in zip(ours, hf)]
    return ", ".join(f"{a / b:.2f}" if a and b else "n/a" for a, b in pairs)


# -- the report -------------------------------------------------------------------------------------


def _get(found: dict, key: str, field: str) -> float | str | None:
    """A figure of one measurement: its value, its error, or None when it did not run."""
    run = found.get(key)
    if run is None:
        return None
    if "error" in run:
        return run["error"]
    return run.get(field)


def _above_baseline(found: dict, key: str) -> float | str | None:
    peak = _get(found, key, "peak_mib")
    base = _get(found, "baseline", "peak_mib")
    return peak - base if isinstance(peak, float) and isinstance(base, float) else peak


def _worker(found: dict, context: str, side: str, field: str) -> float | str | None:
    run = found.get("workers")
    if run is None or "error" in run:
        return None if run is None else run["error"]
    figures = run[context][side]
    return figures["s"] if field == "s" else max(figures["uss_mib"])


def _worker_extra(found: dict, context: str) -> float | str | None:
    ours, empty = _worker(found, context, "ours", "uss"), _worker(found, context, "empty", "uss")
    return ours - empty if isinstance(ours, float) and isinstance(empty, float) else ours


def _worker_later(found: dict, context: str) -> float | str | None:
    ours, empty = _worker(found, context, "ours", "s"), _worker(found, context, "empty", "s")
    return ours - empty if isinstance(ours, float) and isinstance(empty, float) else ours


def _kib(found: dict, key: str) -> float | str | None:
    size = _get(found, key, "pickle_bytes")
    return size / 1024 if isinstance(size, (int, float)) else size


Figure = tuple[str, str, Callable[[dict], "float | str | None"]]
FIGURES: list[Figure] = [
    ("export build (0 when already built)", "s", lambda f: _get(f, "build", "s")),
    ("export build, peak RSS (0 when already built)", "MiB", lambda f: _get(f, "build", "peak_mib")),
    ("metadata.parquet on disk", "MiB", lambda f: f.get("parquet_mib")),
    ("baseline: interpreter with torch imported, peak RSS", "MiB", lambda f: _get(f, "baseline", "peak_mib")),
    ("bare `pq.read_table` of the file", "s", lambda f: _get(f, "bare", "s")),
    ("bare `pq.read_table`, peak RSS", "MiB", lambda f: _get(f, "bare", "peak_mib")),
    ("HF `Dataset.from_parquet`, first load", "s", lambda f: _get(f, "hf_first", "s")),
    ("HF first load, each round", "s", lambda f: _rounds(f, "hf_first_rounds")),
    ("HF first load, CPU time", "s", lambda f: _get(f, "hf_first", "cpu_s")),
    ("HF first load, peak RSS", "MiB", lambda f: _get(f, "hf_first", "peak_mib")),
    ("HF reload from its cache", "s", lambda f: _get(f, "hf_reload", "s")),
    ("HF reload, peak RSS", "MiB", lambda f: _get(f, "hf_reload", "peak_mib")),
    ("HF cache on disk", "MiB", lambda f: f.get("hf_cache_mib")),
    ("HF `len(pickle.dumps(dataset))`", "KiB", lambda f: _kib(f, "hf_reload")),
    ("HF first load + the same curation (map, pandas, select)", "s", lambda f: _get(f, "hf_curated", "s")),
    ("HF first load + curation, CPU time", "s", lambda f: _get(f, "hf_curated", "cpu_s")),
    ("HF first load + curation, peak RSS", "MiB", lambda f: _get(f, "hf_curated", "peak_mib")),
    ("HF items kept by that curation", "", lambda f: _get(f, "hf_curated", "n")),
    ("first open (index + curation, fresh cache)", "s", lambda f: _get(f, "first", "s")),
    ("first open, each round", "s", lambda f: _rounds(f, "first_rounds")),
    ("first open over HF's first load, each round", "", _ratios),
    ("first open, CPU time", "s", lambda f: _get(f, "first", "cpu_s")),
    ("first open, peak RSS above baseline", "MiB", lambda f: _above_baseline(f, "first")),
    ("items kept by the curation", "", lambda f: _get(f, "first", "n")),
    ("cached open of the curated dataset", "s", lambda f: _get(f, "cached", "s")),
    ("cached open, peak RSS above baseline", "MiB", lambda f: _above_baseline(f, "cached")),
    (
        "our cache on disk at the end (index, read columns, item lists, splits)",
        "MiB",
        lambda f: f.get("cache_mib"),
    ),
    ("`len(pickle.dumps(ds))`", "KiB", lambda f: _kib(f, "cached")),
    ("`pickle.dumps(ds)` time", "s", lambda f: _get(f, "cached", "pickle_s")),
    ("spawn: worker's first batch after the epoch's start", "s", lambda f: _worker(f, "spawn", "ours", "s")),
    ("spawn: empty worker's first batch", "s", lambda f: _worker(f, "spawn", "empty", "s")),
    ("spawn: first batch later than an empty worker's", "s", lambda f: _worker_later(f, "spawn")),
    ("spawn: worker private memory (USS, larger of 2)", "MiB", lambda f: _worker(f, "spawn", "ours", "uss")),
    ("spawn: empty worker private memory", "MiB", lambda f: _worker(f, "spawn", "empty", "uss")),
    ("spawn: worker private memory above an empty worker's", "MiB", lambda f: _worker_extra(f, "spawn")),
    ("fork: worker's first batch after the epoch's start", "s", lambda f: _worker(f, "fork", "ours", "s")),
    ("fork: worker private memory above an empty worker's", "MiB", lambda f: _worker_extra(f, "fork")),
    ("`leakage_safe_split` of the whole export", "s", lambda f: _get(f, "split", "s")),
    ("split: the uncurated open before it", "s", lambda f: _get(f, "split", "open_s")),
    ("split: peak RSS above baseline (open + split)", "MiB", lambda f: _above_baseline(f, "split")),
    ("split after a cached open", "s", lambda f: _get(f, "split_cached", "s")),
    ("split after a cached open: peak RSS above baseline", "MiB", lambda f: _above_baseline(f, "split_cached")),
    (
        "split after a cached open: its own peak above its start",
        "MiB",
        lambda f: _get(f, "split_cached", "split_own_mib"),
    ),
    ("the same split again: the kept one mapped (another rank)", "s", lambda f: _get(f, "split_kept", "s")),
    (
        "the kept split mapped: its own peak above its start",
        "MiB",
        lambda f: _get(f, "split_kept", "split_own_mib"),
    ),
]
LOADS = (
    "baseline",
    "bare",
    "hf_first",
    "hf_reload",
    "hf_curated",
    "first",
    "cached",
    "split",
    "split_cached",
    "split_kept",
    "workers",
)
GIB_1_5 = 1.5 * 1024


def _cell(value: float | str | None) -> str:
    if value is None:
        return "not run"
    if isinstance(value, str):
        return value.replace("|", "/")
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _growth(sizes: list[int], values: list) -> str:
    """Each step's ratio, scaled to a 10x step in items: ``v_b / v_a`` to the ``1 / log10(b / a)``."""
    steps = []
    for (rows_a, a), (rows_b, b) in zip(zip(sizes, values), zip(sizes[1:], values[1:])):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0:
            steps.append(f"x{(b / a) ** (1 / math.log10(rows_b / rows_a)):.2g} ({_size(rows_a)}->{_size(rows_b)})")
    return ", ".join(steps)


def _load(run: dict | None) -> str:
    return "" if run is None else f"{run['load'][0]:.1f} -> {run['load'][1]:.1f}"


def _size(rows: int) -> str:
    return f"{rows / 1e6:g}M" if rows >= 1_000_000 else f"{rows:,}"


def targets(found: dict) -> list[tuple[str, float | str | None, bool | None]]:
    """Issue 19's targets: (what, the figure, passed; None when it could not be judged)."""

    def at_most(value, limit) -> bool | None:
        both = isinstance(value, (int, float)) and isinstance(limit, (int, float))
        return value <= limit if both else None

    first, cached, worker_s = (
        _get(found, "first", "s"),
        _get(found, "cached", "s"),
        _worker(found, "spawn", "ours", "s"),
    )
    first_peak, cached_peak = _above_baseline(found, "first"), _above_baseline(found, "cached")
    split_cached = _above_baseline(found, "split_cached")
    split_peak, pickle_kib, worker_extra = (
        _above_baseline(found, "split"),
        _kib(found, "cached"),
        _worker_extra(found, "spawn"),
    )
    return [
        ("first open <= HF first load (s)", first, at_most(first, _get(found, "hf_first", "s"))),
        ("first open peak <= baseline + 1.5 GiB (MiB above)", first_peak, at_most(first_peak, GIB_1_5)),
        ("cached open <= HF reload (s)", cached, at_most(cached, _get(found, "hf_reload", "s"))),
        ("cached open peak <= baseline + 200 MiB (MiB above)", cached_peak, at_most(cached_peak, 200)),
        ("pickle <= 1 MiB (KiB)", pickle_kib, at_most(pickle_kib, 1024)),
        ("spawned worker's first batch <= 5 s after the epoch's start", worker_s, at_most(worker_s, 5)),
        ("spawned worker <= empty worker + 150 MiB (MiB above)", worker_extra, at_most(worker_extra, 150)),
        ("split peak <= baseline + 1.5 GiB (MiB above)", split_peak, at_most(split_peak, GIB_1_5)),
        (
            "split after a cached open, peak <= baseline + 1.5 GiB (MiB above)",
            split_cached,
            at_most(split_cached, GIB_1_5),
        ),
    ]


def report(results: list[dict]) -> str:
    sizes = [found["rows"] for found in results]
    head = " | ".join(_size(rows) for rows in sizes)
    lines = [
        f"# Metadata at scale ({', '.join(_size(rows) for rows in sizes)} items, {os.cpu_count()} CPUs)",
        "",
        "Written by `python benchmarks/bench_metadata.py`; each figure from a fresh process (median of the "
        "repeats for the bare read, HF's reload and the cached open; of the rounds for the first loads). "
        "Growth: each step's ratio scaled to 10x items.",
        "",
        f"| figure | unit | {head} | growth per 10x |",
        f"| --- | --- |{' ---: |' * len(sizes)} --- |",
    ]
    for label, unit, get in FIGURES:
        values = [get(found) for found in results]
        lines.append(f"| {label} | {unit} | {' | '.join(_cell(v) for v in values)} | {_growth(sizes, values)} |")
    lines += ["", f"Load average (1 min) at the start and end of each measurement ({os.cpu_count()} CPUs):", ""]
    lines += [f"| measurement | {head} |", f"| --- |{' --- |' * len(sizes)}"]
    for key in LOADS:
        loads = [_load(found.get(key)) for found in results]
        lines.append(f"| {key} | {' | '.join(loads)} |")
    warned = [
        f"- {_size(found['rows'])} {key}: {line}"
        for found in results
        for key in LOADS
        for line in (found.get(key) or {}).get("warnings", [])
    ]
    if warned:
        lines += ["", "Warnings the measurements logged (each changes what its figures mean):", "", *warned]
    for found in results:
        lines += ["", f"Targets of issue 19 (set at 10M) at {_size(found['rows'])}:", ""]
        for what, value, passed in targets(found):
            verdict = "n/a" if passed is None else "PASS" if passed else "FAIL"
            lines.append(f"- {verdict}: {what}: {_cell(value)}")
    return "\n".join(lines) + "\n"


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument(
        "--measure", nargs="+", choices=MEASUREMENTS, default=[m for m in MEASUREMENTS if m != "hf_curated"]
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of the cheap measurements (median)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of HF's first load and our first open (median)"
    )
    parser.add_argument("--timeout-s", type=float, help="per measurement; default 120 s + 90 s per 1M items")
    parser.add_argument(
        "--max-rss-gib", type=float, help="per measurement's process tree; default 60%% of this machine's memory"
    )
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS_metadata.md")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        print(json.dumps(CHILDREN[args.child](json.loads(args.paths))))
        return
    results = []
    for rows in args.rows:
        limits = Limits(args.timeout_s or 120 + 90 * rows / 1e6, (args.max_rss_gib or 0.6 * _memory_gib()) * 1024)
        print(f"{_size(rows)} items (each measurement limited to {limits})", file=sys.stderr)
        results.append(measure_size(rows, set(args.measure), args.repeat, args.rounds, limits))
        args.out.write_text(report(results))  # what is done so far survives a later size's failure
    print(args.out.read_text())


if __name__ == "__main__":
    main()
