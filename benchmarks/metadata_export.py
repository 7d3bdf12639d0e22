"""A synthetic metadata-only Parquet export of N items, written in bounded memory (any N).

``build_export(rows)`` writes ``data/metadata_export_v1_<rows>/metadata.parquet`` (git-ignored,
kept for later runs) by batches of 131,072 rows, one Parquet row group each, with a
``ParquetWriter``: the peak memory of building it does not depend on N, so 30M items is feasible
(about 130-160 bytes of Parquet per item, snappy). No image is written: the benchmark reads the images from an
``images_root`` of its own.

How the rows are made (deterministic for a seed; the draws come from numpy, a batch at a time),
at the rates of the local service's bulk datasets (``vl_datasets.server.synthetic_bulk``), so the
two model the same dataset:

- ``media_id`` and ``cluster_id``: uuid4-shaped; one cluster per 50 items, drawn uniformly.
- One item in 100 is a video frame (``media_type`` ``video_frame``,
  ``videos/clip_NNNNNN.mp4/frame_NNNNNN.jpg``: frame names repeat across clips, as in real exports);
  the others are images ``{train|val}/<label>/img_NNNNNNNN.jpg`` (one in five under val).
  ``file_size`` is the platform's text (``"48.27KB"``), log-uniform between 20 KB and 2 MB;
  ``height`` x ``width`` one of five common sizes; ``url`` the web app's link to the item.
- ``image_filename``: the item's name in the export's flat ``images/`` folder, as the platform's
  Parquet has it: the lower-cased file name, or ``<media_id>.jpg`` for the frames whose names repeat.
- ``uniqueness_score``: the square root of a uniform draw (most items fairly unique), 4 decimals;
  ``min_uniqueness=0.3`` drops about 9% of the items.
- ``metadata_items``, JSON text as the platform writes it in Parquet (API contract §6): a ``User``
  image label on every item (ten CIFAR-10 class names, ``original_id`` the class index), a ``Model``
  label on 60% (agreeing with the user's 80% of the time) and a ``Visual Layer`` one on 10%, each
  with its ``source``; issues with a ``confidence`` in [0.5, 1): blur 5%, dark 3%, outliers where
  the uniqueness is under 0.1 (1%), mislabels 3% (``issues_description``: another label);
  duplicates: 10% of the items, in pairs, each item carrying one duplicates issue per threshold
  (0.96, 0.98) with the pair's ``duplicate_group_id``; a ``video_info`` entry on the frames.
  Real exports can carry more image labels (the contract counts about 12 per image on one
  dataset); this one keeps the service's rates, about 220 bytes of JSON per item.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vl_datasets.server.synthetic_bulk import LABELS, issue_entry, label_entry, uuids

DATA = Path(__file__).resolve().parent / "data"
BATCH_ROWS = 131_072
SIZES = ((640, 480), (1024, 768), (800, 600), (1280, 720), (512, 512))
FRAME_EVERY = 100
FRAMES_PER_CLIP = 10
DATASET_ID = "5a0f3c1e-bench-4d2b-9e7a-metadata0001"


def build_export(rows: int, *, seed: int = 0) -> Path:
    """The export folder of ``rows`` items, built on the first call (the module docstring says how)."""
    folder = export_folder(rows)
    target = folder / "metadata.parquet"
    if target.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".metadata.parquet.{os.getpid()}.partial"
    rng = np.random.default_rng(seed)
    clusters = np.array(uuids(rng, max(rows // 50, 1)), dtype=object)
    with pq.ParquetWriter(partial, _SCHEMA, compression="snappy") as writer:
        for start in range(0, rows, BATCH_ROWS):
            batch = _batch(rng, start, min(BATCH_ROWS, rows - start), clusters)
            writer.write_batch(batch, row_group_size=BATCH_ROWS)
    os.replace(partial, target)  # a later run never sees half a file
    return folder


def export_folder(rows: int) -> Path:
    """Where the export of ``rows`` items is (or will be) built."""
    return DATA / f"metadata_export_v1_{rows}"


_SCHEMA = pa.schema(
    [
        ("media_id", pa.string()),
        ("media_type", pa.string()),
        ("file_name", pa.string()),
        ("file_path", pa.string()),
        ("file_size", pa.string()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("uniqueness_score", pa.float64()),
        ("url", pa.string()),
        ("cluster_id", pa.string()),
        ("image_filename", pa.string()),
        ("metadata_items", pa.string()),
    ]
)


def _batch(rng: np.random.Generator, start: int, n: int, clusters: np.ndarray) -> pa.RecordBatch:
    index = np.arange(start, start + n)
    ids = uuids(rng, n)
    labels = rng.integers(0, len(LABELS), n)
    draws = rng.random((n, 8))
    uniqueness = np.round(np.sqrt(draws[:, 0]), 4)
    frame = index % FRAME_EVERY == FRAME_EVERY - 1
    names, paths = _names(index, labels, frame)
    width, height = np.array(SIZES)[rng.integers(0, len(SIZES), n)].T
    size_kb = 20 * 100 ** rng.random(n)
    columns = {
        "media_id": ids,
        "media_type": np.where(frame, "video_frame", "image").tolist(),
        "file_name": names,
        "file_path": paths,
        "file_size": [f"{kb / 1024:.2f}MB" if kb >= 1024 else f"{kb:.2f}KB" for kb in size_kb.tolist()],
        "height": height,
        "width": width,
        "uniqueness_score": uniqueness,
        "url": [f"https://app.visual-layer.com/dataset/{DATASET_ID}/data?media_id={i}" for i in ids],
        "cluster_id": clusters[rng.integers(0, len(clusters), n)].tolist(),
        "image_filename": [f"{i}.jpg" if f else name for i, f, name in zip(ids, frame.tolist(), names)],
        "metadata_items": _metadata_items(rng, index, labels, draws, uniqueness, frame),
    }
    return pa.RecordBatch.from_pydict(columns, schema=_SCHEMA)


def _names(index: np.ndarray, labels: np.ndarray, frame: np.ndarray) -> tuple[list[str], list[str]]:
    names, paths = [], []
    for i, label, is_frame in zip(index.tolist(), labels.tolist(), frame.tolist()):
        if is_frame:
            name = f"frame_{(i // FRAME_EVERY) % FRAMES_PER_CLIP:06d}.jpg"
            paths.append(f"videos/{_clip(i)}/{name}")
        else:
            name = f"img_{i:08d}.jpg"
            paths.append(f"{'val' if i % 5 == 0 else 'train'}/{LABELS[label]}/{name}")
        names.append(name)
    return names, paths


def _clip(i: int) -> str:
    return f"clip_{i // (FRAME_EVERY * FRAMES_PER_CLIP):06d}.mp4"


def _metadata_items(rng, index, labels, draws, uniqueness, frame) -> list[str]:
    """Each item's ``metadata_items`` as JSON text (the module docstring gives the rates)."""
    model = np.where(draws[:, 2] < 0.8, labels, rng.integers(0, len(LABELS), len(labels)))
    other = (labels + 1 + rng.integers(0, len(LABELS) - 1, len(labels))) % len(LABELS)
    visual_layer = rng.integers(0, len(LABELS), len(labels))
    confidence = 0.5 + rng.random(len(labels)) / 2
    rows = zip(
        index.tolist(), labels.tolist(), draws.tolist(), uniqueness.tolist(), frame.tolist(),
        model.tolist(), other.tolist(), visual_layer.tolist(), confidence.tolist(),
    )  # fmt: skip
    return [_entries(*row) for row in rows]


def _entries(i, label, u, uniqueness, is_frame, model, other, visual_layer, confidence) -> str:
    entries = [label_entry(LABELS[label], "User", label)]
    if u[1] < 0.6:
        entries.append(label_entry(LABELS[model], "Model", -1))
    if u[3] < 0.1:
        entries.append(label_entry(LABELS[visual_layer], "Visual Layer", -1))
    if u[4] < 0.05:
        entries.append(issue_entry("blur", confidence))
    elif u[4] < 0.08:
        entries.append(issue_entry("dark", confidence))
    if uniqueness < 0.1:
        entries.append(issue_entry("outliers", confidence))
    if u[5] < 0.03:
        entries.append(issue_entry("mislabels", confidence, f', "issues_description": "{LABELS[other]}"'))
    if i % 20 < 2:
        group = f'"duplicate_group_id": "dup-{i // 20:09d}"'
        for threshold in (0.96, 0.98):
            entries.append(
                issue_entry("duplicates", 0.96 + u[6] * 0.04, f', {group}, "duplicate_threshold": {threshold}')
            )
    if is_frame:
        seconds = (i // FRAME_EVERY) % FRAMES_PER_CLIP / 25
        entries.append(
            f'{{"type": "video_info", "properties": {{"video_name": "{_clip(i)}", "frame_timestamp": {seconds}}}}}'
        )
    return f"[{', '.join(entries)}]"
