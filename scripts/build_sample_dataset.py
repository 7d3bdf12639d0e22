"""Build the sample dataset shipped in ``vl_datasets/sample/data`` from scikit-learn's digits.

    pip install scikit-learn && python scripts/build_sample_dataset.py

The images are real: the 1,797 labeled 8x8 handwritten digits that scikit-learn ships, scaled to
32x32 greyscale JPEGs. Then real defects are injected, and recorded in ``defects.json`` so the
tests can check that curation finds them:

- near-duplicate copies of some images (slightly brighter or darker, faint noise), same label;
- blurred copies of others (Gaussian blur), same label;
- flipped labels: a share of the original images gets a wrong label.

The Visual Layer metadata is then computed from the pixels alone, the way the platform does it
in spirit (it never sees ``defects.json``):

- embedding: the image's pixels, centred on the dataset's mean image, projected on the top 48
  principal components and L2-normalised; similarity is the cosine of two embeddings;
- ``uniqueness_score``: the mean cosine distance to the 3 nearest neighbours, scaled to 0-1 by
  the dataset's 1st and 99th percentiles (near-duplicates score near 0);
- ``duplicates``: connected components of the "similarity >= t" graph at t = 0.97, 0.99, 0.995,
  one issue per threshold with the item's highest similarity inside its group as confidence;
- ``blur``: variance of the Laplacian, low means blurred; confidence rises from 0 at the
  half the dataset's median variance to 1 at a sixth of it, reported from 0.5;
- ``outliers``: the cosine distance to the 5th nearest neighbour, confidence rising from 0 at
  the dataset's 95th percentile, through 0.5 at its 99th, reported from 0.5 (about 1% of items);
- ``mislabels``: the labels of the 10 nearest neighbours (duplicates of the item excluded) vote;
  when most disagree with the item's label, the issue's confidence is the share of the winning
  label and ``issues_description`` suggests it;
- ``cluster_id``: k-means over the embeddings into fine clusters of about six images each.

Everything is seeded: running the script again gives the same files.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT

SEED = 7
SIZE = 32
N_DUPLICATES = 120
N_BLURRED = 100
FLIP_SHARE = 0.25
DUPLICATE_THRESHOLDS = (0.97, 0.99, 0.995)
EMBEDDING_DIMS = 48
ISSUE_FLOOR = 0.5  # issues below this confidence are not reported, as on the platform


def _to_image(pixels: np.ndarray) -> Image.Image:
    # 0..16 intensities on 8x8, white ink on black as scikit-learn draws them.
    small = Image.fromarray(np.round(pixels.reshape(8, 8) * (255 / 16)).astype(np.uint8), "L")
    return small.resize((SIZE, SIZE), Image.BICUBIC)


def _near_duplicate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    # What a re-save or re-scan does: a slight change of brightness and faint noise.
    array = np.asarray(image, dtype=np.float64) * rng.uniform(0.95, 1.05)
    noisy = array + rng.integers(-6, 7, size=array.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "L")


def _make_images(rng: np.random.Generator):
    digits = load_digits()
    images = [_to_image(p) for p in digits.data]
    true_labels = [int(t) for t in digits.target]
    kinds = ["original"] * len(images)
    sources: list[int | None] = [None] * len(images)
    originals = rng.permutation(len(images))
    for i in originals[:N_DUPLICATES]:
        images.append(_near_duplicate(images[i], rng))
        true_labels.append(true_labels[i])
        kinds.append("near_duplicate")
        sources.append(int(i))
    for i in originals[N_DUPLICATES : N_DUPLICATES + N_BLURRED]:
        images.append(images[i].filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1.6, 2.4)))))
        true_labels.append(true_labels[i])
        kinds.append("blurred")
        sources.append(int(i))
    labels = list(true_labels)
    # Flip labels only on originals with no injected copy, so every defect has one cause.
    untouched = originals[N_DUPLICATES + N_BLURRED :]
    flipped = sorted(int(i) for i in rng.choice(untouched, size=int(FLIP_SHARE * len(digits.data)), replace=False))
    for i in flipped:
        labels[i] = int((labels[i] + rng.integers(1, 10)) % 10)
    return images, labels, true_labels, kinds, sources, flipped


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _embeddings(pixels: np.ndarray) -> np.ndarray:
    centred = pixels - pixels.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ components[:EMBEDDING_DIMS].T
    return projected / np.linalg.norm(projected, axis=1, keepdims=True)


def _components(adjacent: np.ndarray) -> np.ndarray:
    """Connected-component label of each node of a boolean adjacency matrix."""
    labels = np.arange(len(adjacent))
    while True:
        spread = np.where(adjacent, labels[None, :], len(adjacent)).min(axis=1)
        updated = np.minimum(labels, spread)
        if np.array_equal(updated, labels):
            return labels
        labels = updated


def _laplacian_variance(image: Image.Image) -> float:
    a = np.asarray(image, dtype=np.float64)
    lap = -4 * a[1:-1, 1:-1] + a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:]
    return float(lap.var())


def _ramp(value: np.ndarray, zero: float, one: float) -> np.ndarray:
    """0 at ``zero``, 1 at ``one``, linear between, clipped."""
    return np.clip((value - zero) / (one - zero), 0.0, 1.0)


def _issues(images, labels, rng_uuid) -> tuple[list[list[dict]], np.ndarray, np.ndarray]:
    pixels = np.stack([np.asarray(im, dtype=np.float64).ravel() for im in images])
    emb = _embeddings(pixels)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1)
    near = np.take_along_axis(sim, order[:, :3], axis=1)
    distance = 1 - near.mean(axis=1)
    lo, hi = np.percentile(distance, [1, 99])
    uniqueness = _ramp(distance, lo, hi)
    issues: list[list[dict]] = [[] for _ in images]

    for threshold in DUPLICATE_THRESHOLDS:
        adjacent = sim >= threshold
        groups = _components(adjacent)
        for root in np.unique(groups):
            members = np.flatnonzero(groups == root)
            if len(members) < 2:
                continue
            group_id = rng_uuid()
            for m in members:
                issues[m].append(
                    {
                        "issue_type": "duplicates",
                        "confidence": round(float(sim[m, members].max()), 4),
                        "duplicate_group_id": group_id,
                        "duplicate_threshold": threshold,
                    }
                )

    variance = np.array([_laplacian_variance(im) for im in images])
    median = float(np.median(variance))
    blur = _ramp(-variance, -median / 2, -median / 6)
    fifth = 1 - np.take_along_axis(sim, order[:, 4:5], axis=1)[:, 0]
    q95, q99 = np.percentile(fifth, [95, 99])
    outlier = _ramp(fifth, q95, q95 + 2 * (q99 - q95))
    duplicate_of = sim >= min(DUPLICATE_THRESHOLDS)
    for i in range(len(images)):
        if blur[i] >= ISSUE_FLOOR:
            issues[i].append({"issue_type": "blur", "confidence": round(float(blur[i]), 4)})
        if outlier[i] >= ISSUE_FLOOR:
            issues[i].append({"issue_type": "outliers", "confidence": round(float(outlier[i]), 4)})
        neighbours = [j for j in order[i, :20] if not duplicate_of[i, j]][:10]
        votes = np.bincount([labels[j] for j in neighbours], minlength=10)
        winner = int(votes.argmax())
        share = votes[winner] / len(neighbours)
        if winner != labels[i] and share > 0.5:
            issues[i].append(
                {"issue_type": "mislabels", "confidence": round(float(share), 4), "issues_description": str(winner)}
            )
    return issues, uniqueness, emb


def _human_size(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.2f}KB" if n_bytes >= 1024 else f"{n_bytes}B"


def build(root: Path = SAMPLE_ROOT) -> Path:
    rng = np.random.default_rng(SEED)
    ids = random.Random(SEED)

    def new_uuid() -> str:
        return str(uuid.UUID(int=ids.getrandbits(128), version=4))

    images, labels, true_labels, kinds, sources, flipped = _make_images(rng)
    # The metadata is computed from the files as shipped, compression included.
    encoded = [_jpeg(image) for image in images]
    images = [Image.open(io.BytesIO(data)) for data in encoded]
    issues, uniqueness, emb = _issues(images, labels, new_uuid)
    clusters = KMeans(n_clusters=len(images) // 6, random_state=SEED, n_init=1).fit_predict(emb)
    cluster_ids = [new_uuid() for _ in range(clusters.max() + 1)]

    folder = root / SAMPLE_DATASET_ID
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    media_items, media_ids = [], []
    for i, data in enumerate(encoded):
        media_id = new_uuid()
        media_ids.append(media_id)
        name = f"{i:05d}.jpg"
        (folder / "images" / f"{labels[i]}").mkdir(exist_ok=True)
        (folder / "images" / f"{labels[i]}" / name).write_bytes(data)
        media_items.append(
            {
                "media_id": media_id,
                "media_type": "image",
                "file_name": name,
                "file_path": f"{labels[i]}/{name}",
                "file_size": _human_size(len(data)),
                "height": SIZE,
                "width": SIZE,
                "uniqueness_score": round(float(uniqueness[i]), 4),
                "url": f"https://app.visual-layer.com/dataset/{SAMPLE_DATASET_ID}/data?media_id={media_id}",
                "cluster_id": cluster_ids[clusters[i]],
                "metadata_items": [
                    {
                        "type": "image_label",
                        "properties": {"category_name": str(labels[i]), "source": "User", "original_id": i},
                    },
                    *({"type": "issue", "properties": issue} for issue in issues[i]),
                ],
            }
        )
    info = {
        "schema_version": "1.1",
        "dataset": "Sample: handwritten digits",
        "description": "scikit-learn's 1,797 handwritten digits with injected duplicates, blur and "
        "flipped labels; metadata computed by scripts/build_sample_dataset.py",
        "dataset_url": f"https://app.visual-layer.com/dataset/{SAMPLE_DATASET_ID}",
        "export_time": "2026-01-01T00:00:00",
        "dataset_creation_time": "2026-01-01T00:00:00",
        "exported_by": "vl_datasets",
        "total_media_items": len(media_items),
    }
    (folder / "metadata.json").write_text(json.dumps({"info": info, "media_items": media_items}, separators=(",", ":")))
    defects = {
        "near_duplicate": {media_ids[i]: media_ids[s] for i, s in enumerate(sources) if kinds[i] == "near_duplicate"},
        "blurred": {media_ids[i]: media_ids[s] for i, s in enumerate(sources) if kinds[i] == "blurred"},
        "flipped_label": {media_ids[i]: {"label": str(labels[i]), "true_label": str(true_labels[i])} for i in flipped},
    }
    (folder / "defects.json").write_text(json.dumps(defects, indent=1))
    return folder


if __name__ == "__main__":
    print(build())
