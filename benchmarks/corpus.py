"""JPEG corpora from real photos, laid out as a Visual Layer export and as an ImageFolder tree.

The photos are scikit-image's bundled samples (astronaut, chelsea, coffee, rocket, hubble deep
field, retina, immunohistochemistry, cat, colour wheel, and the brick/grass/gravel textures tinted
to colour): offline, real camera content. ``pip install scikit-image`` (benchmarks only).

- ``imagenet``: 500x375-class images like PERF_BASELINE's corpus: a random crop of 50-100% of
  the area, resized (Lanczos) to an ImageNet-typical size, flipped at random, colour-jittered,
  sharpened, with mild Gaussian noise (sigma 2-5); JPEG quality 90, 4:2:0.
- ``large``: 2000x1500 "originals": the same photos upsampled to camera size with noise added so
  the encoder sees detail at full resolution (an upsampled photo alone compresses unrealistically
  well); JPEG quality 90.

Each corpus folder holds ``metadata.json`` (Visual Layer's JSON export schema: one image label
per item, a uniqueness score), ``images/<label>/<name>.jpg``, and ``imagefolder/<label>/``
(hard links to the same files) for torchvision's ``ImageFolder``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DATA = Path(__file__).resolve().parent / "data"
SIZES = [(500, 375)] * 10 + [(375, 500)] * 3 + [(480, 360), (400, 500), (500, 333), (500, 400)]
LABELS = [f"class_{i}" for i in range(10)]


def source_photos() -> list[Image.Image]:
    import skimage.data as data

    photos = [
        getattr(data, name)()
        for name in (
            "astronaut",
            "chelsea",
            "coffee",
            "rocket",
            "hubble_deep_field",
            "retina",
            "immunohistochemistry",
            "cat",
            "colorwheel",
        )
    ]
    tints = [(1.0, 0.8, 0.6), (0.6, 1.0, 0.7), (0.8, 0.7, 1.0)]
    for name, tint in zip(("brick", "grass", "gravel"), tints):
        gray = getattr(data, name)().astype(np.float32)
        photos.append(np.clip(np.stack([gray * t for t in tint], axis=-1), 0, 255).astype(np.uint8))
    return [Image.fromarray(p[..., :3]) for p in photos]


def _variant(photo: Image.Image, size: tuple[int, int], rng: np.random.Generator, noise: tuple[float, float]):
    w, h = photo.size
    area = rng.uniform(0.5, 1.0)
    aspect = size[0] / size[1]
    cw = int(min(w, np.sqrt(area * w * h * aspect)))
    ch = int(min(h, cw / aspect))
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    image = photo.crop((x, y, x + cw, y + ch)).resize(size, Image.LANCZOS)
    if rng.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.8, 1.2))
    image = image.filter(ImageFilter.UnsharpMask(radius=2, percent=80, threshold=2))
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0, rng.uniform(*noise), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build(kind: str, count: int, *, seed: int = 0) -> Path:
    """The corpus folder for ``kind`` ("imagenet" or "large"), built on first use."""
    folder = DATA / f"{kind}_{count}"
    if (folder / "metadata.json").is_file():
        return folder
    rng = np.random.default_rng(seed)
    photos = source_photos()
    items = []
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        size = SIZES[rng.integers(len(SIZES))] if kind == "imagenet" else (2000, 1500)
        noise = (2.0, 5.0) if kind == "imagenet" else (3.0, 6.0)
        image = _variant(photos[rng.integers(len(photos))], size, rng, noise)
        rel = f"{label}/{kind}_{i:05d}.jpg"
        for root in ("images", "imagefolder"):
            (folder / root / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / "images" / rel, format="JPEG", quality=90)
        os.link(folder / "images" / rel, folder / "imagefolder" / rel)
        items.append(
            {
                "media_id": f"{i:024x}",
                "media_type": "image",
                "file_name": Path(rel).name,
                "file_path": rel,
                "width": size[0],
                "height": size[1],
                "uniqueness_score": float(rng.random()),
                "metadata_items": [{"type": "image_label", "properties": {"category_name": label, "source": "User"}}],
            }
        )
    info = {"schema_version": "1.1", "dataset": f"benchmark-{kind}", "total_media_items": count}
    (folder / "metadata.json").write_text(json.dumps({"info": info, "media_items": items}))
    return folder


def image_paths(folder: Path) -> list[tuple[str, int]]:
    """(path, class index) of every image, for the plain baseline dataset."""
    items = json.loads((folder / "metadata.json").read_text())["media_items"]
    return [
        (
            str(folder / "images" / item["file_path"]),
            LABELS.index(item["metadata_items"][0]["properties"]["category_name"]),
        )
        for item in items
    ]
