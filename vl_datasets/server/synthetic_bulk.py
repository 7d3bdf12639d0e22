"""Large metadata-only datasets for the local service: millions of realistic items, written streaming.

How the rows are made (deterministic for a seed; random draws come from numpy, a block at a time):

- ``media_id``: uuid4-shaped, from the seeded generator. ``cluster_id``: one of ``n_items // 50``
  cluster ids (at least one), drawn uniformly.
- One item in 100 is a video frame (``media_type`` ``video_frame``): ``videos/clip_NNNNNN.mp4/
  frame_NNNNNN.jpg``, 10 frames per clip, so frame names repeat across clips as in real exports,
  with a ``video_info`` entry (``video_name``, ``frame_timestamp``). The others are images
  ``{train|val}/{label}/img_NNNNNNNN.jpg`` (one in five under val). ``file_size`` is drawn
  log-uniformly between 20 KB and 2 MB; ``height`` x ``width`` from five common sizes.
- Labels (ten CIFAR-10 class names): every item has a ``User`` label (``original_id`` the class
  index); 60% also a ``Model`` label (agreeing with the user's 80% of the time, ``original_id``
  -1), and 10% a ``Visual Layer`` one.
- ``uniqueness_score``: the square root of a uniform draw (most items fairly unique), 4 decimals.
- Issues, each with a ``confidence`` drawn in [0.5, 1): blur 5%, dark 3%, outliers for items
  whose uniqueness is under 0.1, and mislabels 3% (``issues_description``: another label).
- Duplicates: items ``i`` with ``i % 20`` in {0, 1} form pairs (10% of items), each item carrying
  one duplicates issue per threshold (0.96 and 0.98) with the pair's ``duplicate_group_id``.

No image is written: the dataset is exported with ``include_images=false``. The JSON text is made
by formatting, not ``json.dumps``: every string it writes is plain ASCII with nothing to escape.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SIZES = ((640, 480), (1024, 768), (800, 600), (1280, 720), (512, 512))
CREATED_AT = "2025-01-01T00:00:00"
BLOCK_ITEMS = 20_000
FRAME_EVERY = 100
FRAMES_PER_CLIP = 10
_DRAWS = 12


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` uuid4-shaped ids from ``rng``, with no Python object per byte."""
    digits = rng.bytes(16 * n).hex()
    return [
        f"{digits[k : k + 8]}-{digits[k + 8 : k + 12]}-4{digits[k + 13 : k + 16]}-a{digits[k + 17 : k + 20]}-"
        f"{digits[k + 20 : k + 32]}"
        for k in range(0, 32 * n, 32)
    ]


def label_entry(name: str, source: str, original_id: int) -> str:
    """An ``image_label`` entry of ``metadata_items``, as the platform writes it in JSON."""
    return (
        f'{{"type": "image_label", "properties": {{"category_name": "{name}", "source": "{source}", '
        f'"original_id": {original_id}}}}}'
    )


def issue_entry(kind: str, confidence: float, extra: str = "") -> str:
    """An ``issue`` entry of ``metadata_items``; ``extra`` holds more properties, comma first."""
    return f'{{"type": "issue", "properties": {{"issue_type": "{kind}", "confidence": {confidence:.4f}{extra}}}}}'


def _entries(i: int, label: int, draws: list[float], video: str | None) -> list[str]:
    u = draws
    entries = [label_entry(LABELS[label], "User", label)]
    if u[0] < 0.6:
        model = label if u[1] < 0.8 else int(u[2] * len(LABELS))
        entries.append(label_entry(LABELS[model], "Model", -1))
    if u[3] < 0.1:
        entries.append(label_entry(LABELS[int(u[4] * len(LABELS))], "Visual Layer", -1))
    confidence = 0.5 + u[5] / 2
    if u[6] < 0.05:
        entries.append(issue_entry("blur", confidence))
    if 0.05 <= u[6] < 0.08:
        entries.append(issue_entry("dark", confidence))
    if math.sqrt(u[7]) < 0.1:
        entries.append(issue_entry("outliers", confidence))
    if u[8] < 0.03:
        other = LABELS[(label + 1 + int(u[9] * 9)) % len(LABELS)]
        entries.append(issue_entry("mislabels", confidence, f', "issues_description": "{other}"'))
    if i % 20 < 2:
        group = f"dup-{i // 20:09d}"
        for threshold in (0.96, 0.98):
            extra = f', "duplicate_group_id": "{group}", "duplicate_threshold": {threshold}'
            entries.append(issue_entry("duplicates", 0.96 + u[10] * 0.04, extra))
    if video is not None:
        seconds = (i // FRAME_EVERY) % FRAMES_PER_CLIP / 25
        entries.append(
            f'{{"type": "video_info", "properties": {{"video_name": "{video}", "frame_timestamp": {seconds}}}}}'
        )
    return entries


def _item(i: int, media_id: str, cluster: str, label: int, size: int, draws: list[float], dataset_id: str) -> str:
    video = None
    if i % FRAME_EVERY == FRAME_EVERY - 1:
        video = f"clip_{i // (FRAME_EVERY * FRAMES_PER_CLIP):06d}.mp4"
        name, kind = f"frame_{(i // FRAME_EVERY) % FRAMES_PER_CLIP:06d}.jpg", "video_frame"
        path = f"videos/{video}/{name}"
    else:
        name, kind = f"img_{i:08d}.jpg", "image"
        path = f"{'val' if i % 5 == 0 else 'train'}/{LABELS[label]}/{name}"
    width, height = SIZES[size]
    file_kb = 20 * 100 ** draws[11]
    entries = ", ".join(_entries(i, label, draws, video))
    return (
        f'{{"media_id": "{media_id}", "media_type": "{kind}", "file_name": "{name}", "file_path": "{path}", '
        f'"file_size": "{file_kb:.2f}KB", "height": {height}, "width": {width}, '
        f'"uniqueness_score": {math.sqrt(draws[7]):.4f}, '
        f'"url": "https://app.visual-layer.com/dataset/{dataset_id}/data?media_id={media_id}", '
        f'"cluster_id": "{cluster}", "metadata_items": [{entries}]}}'
    )


def _block(rng: np.random.Generator, start: int, n: int, clusters: list[str], dataset_id: str) -> str:
    ids = uuids(rng, n)
    labels = rng.integers(0, len(LABELS), n).tolist()
    sizes = rng.integers(0, len(SIZES), n).tolist()
    chosen = rng.integers(0, len(clusters), n).tolist()
    draws = rng.random((n, _DRAWS)).tolist()
    return ",\n".join(
        _item(start + j, ids[j], clusters[chosen[j]], labels[j], sizes[j], draws[j], dataset_id) for j in range(n)
    )


def write_metadata_dataset(root: str | Path, dataset_id: str, n_items: int, *, seed: int = 0) -> Path:
    """Write ``root/dataset_id/metadata.json`` holding ``n_items`` synthetic items (the module's
    docstring says how they are made), without images; returns the folder. The file appears whole
    or not at all (written beside it, then renamed)."""
    folder = Path(root) / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clusters = uuids(rng, max(n_items // 50, 1))
    info = {
        "schema_version": "1.1",
        "dataset": dataset_id,
        "description": f"{n_items:,} synthetic items without images",
        "dataset_url": f"https://app.visual-layer.com/dataset/{dataset_id}/data",
        "export_time": CREATED_AT,
        "dataset_creation_time": CREATED_AT,
        "exported_by": "vl_datasets",
        "total_media_items": n_items,
    }
    target = folder / "metadata.json"
    partial = folder / f".metadata.json.{os.getpid()}.partial"
    with open(partial, "w", encoding="ascii") as out:
        out.write(f'{{"info": {json.dumps(info)}, "media_items": [\n')
        for start in range(0, n_items, BLOCK_ITEMS):
            if start:
                out.write(",\n")
            out.write(_block(rng, start, min(BLOCK_ITEMS, n_items - start), clusters, dataset_id))
        out.write("\n]}\n")
    os.replace(partial, target)
    return folder
