"""The fast decode path against Pillow's own decode + resize, every format, every failure."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vl_datasets.errors import ImageDecodeError
from vl_datasets.images import decode_image, decode_pil


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, a few shapes and mild noise: compresses and resamples like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin((x + y) / 37)], axis=-1)
    pixels[height // 4: height // 2, width // 3: width // 2] = (240, 40, 30)
    pixels += rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pillow_reference(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None:
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def mean_abs_diff(tensor: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(tensor.permute(1, 2, 0).numpy().astype(np.float32) - reference).mean())


@pytest.mark.parametrize("source,size", [
    ((500, 375), 224),          # ImageNet-like, full decode + torch resize
    ((2000, 1500), 224),        # large original: DCT-scaled decode
    ((500, 375), (160, 200)),   # (height, width)
    ((500, 375), None),         # native size
])
def test_jpeg_matches_pillow(source, size):
    data = encode(photo(*source), quality=90)
    out = decode_image(data, size=size)
    expected = (size, size) if isinstance(size, int) else size or (source[1], source[0])
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, *expected)
    assert mean_abs_diff(out, pillow_reference(data, expected if size else None)) < 2.0


@pytest.mark.parametrize("mode,options", [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True})])
def test_grayscale_cmyk_and_progressive_jpegs_come_out_rgb(mode, options):
    data = encode(photo(320, 240).convert(mode), quality=92, **options)
    out = decode_image(data, size=112)
    assert out.shape == (3, 112, 112)
    assert mean_abs_diff(out, pillow_reference(data, (112, 112))) < 2.0


def test_other_formats_go_through_pillow():
    base = photo(120, 90)
    rgba = base.convert("RGBA")
    rgba.putalpha(200)
    for data in (encode(rgba, "PNG"), encode(base.convert("P"), "GIF"), encode(base, "WEBP", lossless=True),
                 encode(base, "BMP"), encode(base, "TIFF")):
        out = decode_image(data, size=(45, 60))
        assert out.shape == (3, 45, 60) and out.dtype == torch.uint8
    native = decode_image(encode(base, "PNG"))
    assert torch.equal(native, torch.from_numpy(np.array(base)).permute(2, 0, 1))


def test_transparent_pixels_become_white():
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert decode_image(encode(clear, "PNG")).unique().tolist() == [255]


@pytest.mark.parametrize("data", [
    encode(photo(200, 150))[:-2000],           # truncated JPEG
    encode(photo(200, 150), "PNG")[:-500],     # truncated PNG
    b"definitely not an image",
    b"\xff\xd8\xff" + b"\0" * 64,              # a JPEG header and nothing else
])
def test_corrupt_images_raise_naming_media_and_path(data):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, size=64, media_id="m-42", path="/data/x.jpg")
    assert "m-42" in str(caught.value) and "/data/x.jpg" in str(caught.value)
    assert caught.value.media_id == "m-42" and caught.value.path == "/data/x.jpg"
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is ImageDecodeError and again.media_id == "m-42"
    with pytest.raises(ImageDecodeError):
        decode_pil(data, media_id="m-42")


def test_decompression_bombs_are_refused_from_the_header():
    jpeg = encode(photo(400, 300))
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(jpeg, max_pixels=100_000)
    png = encode(photo(400, 300), "PNG")
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(png, max_pixels=100_000)
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_pil(png, max_pixels=100_000)


def test_decode_pil_gives_rgb_images():
    image = decode_pil(encode(photo(64, 48).convert("L")))
    assert image.mode == "RGB" and image.size == (64, 48)
