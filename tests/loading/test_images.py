"""The fast decode path against Pillow's own decode + resize, every format, every failure."""

from __future__ import annotations

import functools
import io
import pickle
import struct
import zlib

import numpy as np
import pytest
import simplejpeg
import torch
from PIL import Image

from vl_datasets.errors import ConfigurationError, ImageDecodeError
from vl_datasets.loading.images import dct_scaled_size, decode_image, decode_pil


@functools.cache
def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients, a few shapes and mild noise: compresses and resamples like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin((x + y) / 37)], axis=-1)
    pixels[height // 4 : height // 2, width // 3 : width // 2] = (240, 40, 30)
    pixels += rng.normal(0, 3, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@functools.cache
def jpeg(width: int, height: int, **options) -> bytes:
    return encode(photo(width, height), quality=90, **options)


def pillow_reference(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if size is not None:
        image = image.resize((size[1], size[0]), Image.BILINEAR, reducing_gap=None)
    return np.asarray(image, dtype=np.float32)


def mean_abs_diff(tensor: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(tensor.permute(1, 2, 0).numpy().astype(np.float32) - reference).mean())


@pytest.mark.parametrize(
    "source,size",
    [
        ((500, 375), 224),  # ImageNet-like: full decode + torch resize
        ((375, 500), 224),  # portrait
        ((2000, 1500), 224),  # large original: decoded at 1/4 scale
        ((500, 375), (160, 200)),  # (height, width)
        ((500, 375), (400, 600)),  # upsampling
        ((500, 375), None),  # native size
    ],
)
def test_jpeg_matches_pillow(source, size):
    data = jpeg(*source)
    out = decode_image(data, size=size)
    expected = (size, size) if isinstance(size, int) else size or (source[1], source[0])
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == (3, *expected)
    assert mean_abs_diff(out, pillow_reference(data, expected if size else None)) < 2.0


@pytest.mark.parametrize(
    "source,target,decoded",
    [
        ((1500, 2000), (224, 224), (375, 500)),  # 1/4
        ((600, 800), (224, 224), (300, 400)),  # 1/2, not the slower 3/8 (225x300)
        ((375, 500), (224, 224), None),  # 1/2 would give a 188-pixel side: full decode
        ((3000, 4000), (224, 224), (375, 500)),  # 1/8
        ((1500, 2000), (224, 1200), None),  # one side too close to the target
        ((1500, 2000), None, None),
    ],
)
def test_dct_scale_is_a_power_of_two_that_never_undershoots(source, target, decoded):
    assert dct_scaled_size(*source, target) == decoded


@pytest.mark.parametrize("width,height", [(2000, 1500), (800, 600)])
def test_simplejpeg_decodes_at_the_chosen_scale(width, height):
    scaled = dct_scaled_size(height, width, (224, 224))
    pixels = simplejpeg.decode_jpeg(jpeg(width, height), min_height=scaled[0], min_width=scaled[1])
    assert pixels.shape[:2] == scaled


@pytest.mark.parametrize(
    "mode,options",
    [("L", {}), ("CMYK", {}), ("RGB", {"progressive": True}), ("RGB", {"subsampling": 0}), ("RGB", {"subsampling": 1})],
)
def test_grayscale_cmyk_progressive_and_subsampled_jpegs_come_out_rgb(mode, options):
    data = encode(photo(320, 240).convert(mode), quality=92, **options)
    for size in (112, None):
        out = decode_image(data, size=size)
        assert out.shape == (3, *((112, 112) if size else (240, 320))), f"size={size}"
        assert mean_abs_diff(out, pillow_reference(data, (112, 112) if size else None)) < 2.0, f"size={size}"


def test_progressive_large_jpeg_on_the_scaled_path():
    data = encode(photo(2000, 1500), quality=90, progressive=True)
    out = decode_image(data, size=(150, 200))
    assert mean_abs_diff(out, pillow_reference(data, (150, 200))) < 2.0


def test_exif_orientation_is_ignored_on_every_path():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(photo(120, 80), quality=90, exif=exif.tobytes())
    assert decode_image(data).shape == (3, 80, 120)
    assert decode_pil(data).size == (120, 80)
    assert mean_abs_diff(decode_image(data), np.asarray(decode_pil(data), dtype=np.float32)) < 0.5


@pytest.mark.parametrize(
    "fmt,image,options",
    [
        ("PNG", photo(120, 90), {}),
        ("GIF", photo(120, 90).convert("P"), {}),
        ("WEBP", photo(120, 90), {"lossless": True}),
        ("WEBP", photo(120, 90), {"quality": 90}),
        ("BMP", photo(120, 90), {}),
        ("TIFF", photo(120, 90), {}),
        ("PNG", photo(120, 90).convert("L"), {}),
    ],
)
def test_other_formats_match_pillow(fmt, image, options):
    data = encode(image, fmt, **options)
    out = decode_image(data, size=(45, 60))
    assert out.shape == (3, 45, 60)
    assert out.dtype == torch.uint8
    assert mean_abs_diff(out, pillow_reference(data, (45, 60))) < 2.0
    assert torch.equal(decode_image(data), torch.from_numpy(np.array(decode_pil(data))).permute(2, 0, 1)), (
        "at native size, decode_image and decode_pil disagree"
    )


def test_alpha_is_composited_onto_white():
    rgba = photo(120, 90).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((120, 90)))
    expected = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    out = decode_image(encode(rgba, "PNG"))
    assert mean_abs_diff(out, np.asarray(expected, dtype=np.float32)) == 0.0
    clear = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert decode_image(encode(clear, "PNG")).unique().tolist() == [255]
    palette = Image.new("P", (4, 4), 3)
    assert decode_image(encode(palette, "GIF", transparency=3)).unique().tolist() == [255]


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour).convert("P") for colour in ("red", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data)[:, 0, 0].tolist() == [255, 0, 0]


def test_sixteen_bit_grayscale_keeps_its_top_byte():
    levels = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0..65535 in 256 steps
    out = decode_image(encode(Image.fromarray(levels), "PNG"))
    assert torch.equal(out[0], torch.arange(256, dtype=torch.uint8).reshape(16, 16)), (
        f"the 16-bit levels did not map to their top byte: {out[0].flatten()[:8].tolist()}..."
    )


@pytest.mark.parametrize("width,height", [(200, 150), (2000, 1500)])
def test_jpegs_with_stray_bytes_decode_as_pillow_decodes_them(width, height):
    # libjpeg warns "N extraneous bytes before marker 0xd9"; Pillow and torchvision decode such
    # files (ImageNet has some), so decode_image must not drop them.
    data = jpeg(width, height)
    data = data[:-2] + b"\0" * 40 + data[-2:]
    with pytest.raises(ValueError, match="extraneous"):
        simplejpeg.decode_jpeg(data, strict=True)
    assert mean_abs_diff(decode_image(data, size=224), pillow_reference(data, (224, 224))) < 2.0
    assert torch.equal(decode_image(data), torch.from_numpy(np.array(decode_pil(data))).permute(2, 0, 1)), (
        "at native size, decode_image and decode_pil disagree"
    )


BROKEN = {
    "truncated JPEG": jpeg(200, 150)[:-2000],
    "JPEG missing its EOI marker": jpeg(200, 150)[:-2],
    "truncated progressive JPEG": jpeg(200, 150, progressive=True)[:-1000],
    "truncated large JPEG (scaled path)": jpeg(2000, 1500)[:-5000],
    "truncated PNG": encode(photo(200, 150), "PNG")[:-500],
    "truncated WebP": encode(photo(200, 150), "WEBP")[:-300],
    "garbage": b"definitely not an image",
    "empty": b"",
    "JPEG header and nothing else": b"\xff\xd8\xff" + b"\0" * 64,
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_images_raise_naming_media_and_path(name):
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(BROKEN[name], size=64, media_id="m-42", path="/data/x.jpg")
    assert "m-42" in str(caught.value)
    assert "/data/x.jpg" in str(caught.value)
    assert caught.value.media_id == "m-42"
    assert caught.value.path == "/data/x.jpg"
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is ImageDecodeError
    assert str(again) == str(caught.value)
    assert again.media_id == "m-42"
    assert again.path == "/data/x.jpg"
    assert type(ImageDecodeError(str(caught.value))) is ImageDecodeError  # how DataLoader re-raises
    with pytest.raises(ImageDecodeError, match="m-42"):
        decode_pil(BROKEN[name], media_id="m-42")


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(jpeg(64, 48))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: marker, length (2), precision (1), height, width
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(photo(64, 48), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


@pytest.mark.parametrize(
    "data", [_jpeg_declaring(60_000, 60_000), _png_declaring(100_000, 100_000)], ids=["jpeg", "png"]
)
def test_decompression_bombs_are_refused_from_the_header(data):
    # 3.6e9 and 1e10 declared pixels: decoding would allocate 10-30 GB before failing.
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(data, size=224, media_id="bomb")
    with pytest.raises(ImageDecodeError, match="bomb"):
        decode_pil(data, media_id="bomb")


def test_max_pixels_is_the_callers_to_choose():
    data = jpeg(400, 300)
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_image(data, max_pixels=100_000)
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_pil(encode(photo(400, 300), "PNG"), max_pixels=100_000)
    assert decode_image(data, max_pixels=120_000).shape == (3, 300, 400)


@pytest.mark.parametrize("size", [0, -5, (224, 0), True, 22.4, (1, 2, 3), "224"])
def test_bad_sizes_are_configuration_errors(size):
    with pytest.raises(ConfigurationError):
        decode_image(jpeg(64, 48), size=size)


def test_output_is_a_channels_last_view_that_collates():
    out = decode_image(jpeg(500, 375), size=224)
    assert out.stride() == (1, 224 * 3, 3)  # no per-sample contiguous copy
    batch = torch.stack([out, decode_image(encode(photo(120, 90), "PNG"), size=224)])
    assert batch.shape == (2, 3, 224, 224)
    assert torch.equal(batch[0], out), "stacking changed the image"


def test_decode_pil_gives_rgb_images():
    image = decode_pil(encode(photo(64, 48).convert("L")))
    assert image.mode == "RGB"
    assert image.size == (64, 48)
