"""Encoded image bytes to a uint8 CHW RGB tensor, as fast as a CPU core allows.

Where the time goes (PERF_BASELINE §2): Pillow's resize costs as much as its decode. So JPEGs are
decoded by libjpeg-turbo through simplejpeg and resized by torch's antialiased bilinear uint8
kernel: ~2x Pillow's decode-then-resize per core, and the same pixels as Pillow's
``resize(BILINEAR)`` to within ~0.01 grey levels on average (~0.5 when the DCT-scaled decode
below applies). Other formats go through Pillow, then the same torch resize.

Decisions:
- DCT-scaled decoding only at 1/2, 1/4 or 1/8, and only while both sides stay at or above the
  target: measured here, the 3/8, 5/8 and 3/4 scaled IDCTs cost as much as or more than a full
  decode (and a 1/2 decode, larger than 3/8, is faster than 3/8). A 500x375 image resized to 224
  is therefore decoded in full; a 2000x1500 one at 1/4 (500x375).
- EXIF orientation is ignored, as Pillow's ``open`` and torchvision's ``decode_jpeg`` do, and
  identically on every path (``decode_image`` and ``decode_pil``, JPEG or not): the export's
  ``width``/``height`` and object boxes describe the stored pixels.
- The CHW tensor is a view of the decoded HWC buffer (channels-last memory): no per-sample
  contiguous copy, which with 0 workers wakes torch's intra-op threads to spin for nothing
  (PERF_BASELINE §3). The resize kernel is fastest on that layout, and the DataLoader's collate
  copies into one contiguous batch anyway. Call ``.contiguous()`` if you need a dense CHW tensor.
- Transparent pixels are composited onto white (how viewers show them), not left at their hidden
  colour as ``convert("RGB")`` would; 16-bit greyscale keeps its top 8 bits instead of clipping.
- Truncated images raise, as Pillow does by default (``LOAD_TRUNCATED_IMAGES`` is never set).
  simplejpeg runs ``strict``, which turns every libjpeg warning into an error; a JPEG it refuses
  is handed to Pillow, so exactly the JPEGs ``decode_pil`` accepts decode (a truncated one
  raises; one with stray bytes before a marker, common in scraped data, does not).
  Images declaring more than ``max_pixels`` are refused from their header, before any decoding.
- Nothing is cached at module level, so the functions are safe under fork, spawn and threads.
"""

from __future__ import annotations

import io
import operator
import struct

import numpy as np
import PIL.Image
import simplejpeg
import torch
import torch.nn.functional as F

from ..errors import ConfigurationError, ImageDecodeError

# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS; refuse at the same size.
MAX_PIXELS = 2 * 89_478_485
JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg-turbo cannot convert these to RGB itself; Pillow can (and undoes Adobe's inversion).
_PIL_ONLY_COLORSPACES = ("CMYK", "YCCK")
# The scaled IDCTs that beat a full decode; larger denominators first (smallest output).
_DCT_DENOMINATORS = (8, 4, 2)
# What Pillow's decoders raise for broken files; anything else is a bug worth seeing.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, PIL.Image.DecompressionBombError)


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as (height, width), or None to keep the native size."""
    if size is None:
        return None
    try:
        height, width = size if isinstance(size, (tuple, list)) else (size, size)
        height, width = operator.index(height), operator.index(width)  # ints, numpy ints; not floats
    except (TypeError, ValueError):
        height = width = 0
    if isinstance(size, bool) or height <= 0 or width <= 0:
        raise ConfigurationError(f"size must be a positive int or (height, width), got {size!r}")
    return height, width


def _fail(reason: object, media_id: str | None, path: str | None) -> ImageDecodeError:
    where = f" at {path}" if path else ""
    return ImageDecodeError(
        f"Cannot decode the image of media_id {media_id!r}{where}: {reason}", media_id=media_id, path=path
    )


def _check_pixels(height: int, width: int, max_pixels: int, media_id, path) -> None:
    if height * width > max_pixels:
        raise _fail(
            f"it declares {width}x{height} pixels, over the {max_pixels:,} limit (a decompression bomb?)",
            media_id,
            path,
        )


def dct_scaled_size(height: int, width: int, target: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (height, width) to decode a ``height`` x ``width`` JPEG at for ``target``, or None for full size.

    The smallest 1/8, 1/4 or 1/2 scale that keeps both sides at or above the target, so the
    resize only ever shrinks. libjpeg rounds scaled sizes up, hence the ceiling division.
    """
    if target is None:
        return None
    for denominator in _DCT_DENOMINATORS:
        scaled = (-(-height // denominator), -(-width // denominator))
        if scaled[0] >= target[0] and scaled[1] >= target[1]:
            return scaled
    return None


def _decode_jpeg(data: bytes, target, max_pixels: int, media_id, path) -> np.ndarray | None:
    """HWC RGB pixels, or None to let Pillow decide (CMYK, or anything libjpeg-turbo warned about)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # Pillow parses the header again and names what is wrong
    _check_pixels(height, width, max_pixels, media_id, path)
    if colorspace in _PIL_ONLY_COLORSPACES:
        return None
    # simplejpeg picks the smallest scale meeting both minimums: exactly the one chosen here.
    min_height, min_width = dct_scaled_size(height, width, target) or (0, 0)
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_height, min_width=min_width, strict=True)
    except ValueError:
        # strict fails on every libjpeg warning: truncation, which Pillow refuses too, but also
        # "N extraneous bytes before marker", which Pillow (and every other loader) accepts and
        # real datasets contain. Pillow's strict decode is the arbiter; this path is rare.
        return None


def _to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Any loaded Pillow image as RGB, transparency over white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16"):
        # convert() clips 16-bit values at 255, which turns a 16-bit PNG white; keep the top byte.
        top = (np.asarray(image) >> 8).astype(np.uint8)
        return PIL.Image.fromarray(top).convert("RGB")
    return image.convert("RGB")


def _open_pil(data: bytes, max_pixels: int, media_id, path) -> PIL.Image.Image:
    """A fully loaded RGB Pillow image (first frame of an animation), or ImageDecodeError."""
    try:
        image = PIL.Image.open(io.BytesIO(data))
        _check_pixels(image.height, image.width, max_pixels, media_id, path)
        image.load()
        return _to_rgb(image)
    except ImageDecodeError:
        raise
    except PIL.UnidentifiedImageError:
        # Pillow's own message names only a BytesIO object's address; the first bytes say more.
        raise _fail(
            f"not an image in any format Pillow reads (starts with {bytes(data[:8])!r})", media_id, path
        ) from None
    except _PIL_ERRORS as exc:
        raise _fail(exc, media_id, path) from None


def pil_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` as Pillow's (width, height)."""
    return (size, size) if isinstance(size, int) else (size[1], size[0])


def to_chw(hwc: np.ndarray, target: tuple[int, int] | None) -> torch.Tensor:
    """View HWC pixels as CHW, resized to ``target`` when given."""
    nchw = torch.from_numpy(hwc)[None].permute(0, 3, 1, 2)  # canonical channels-last: the fast kernel's layout
    if target is not None and tuple(nchw.shape[2:]) != target:
        nchw = F.interpolate(nchw, size=target, mode="bilinear", antialias=True, align_corners=False)
    return nchw[0]


def decode_image(
    data: bytes,
    *,
    size: int | tuple[int, int] | None = None,
    media_id: str | None = None,
    path: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> torch.Tensor:
    """Decode to a uint8 3xHxW RGB tensor (a channels-last view).

    ``size``: an int for a size x size square, (height, width), or None for the native size; the
    resize is bilinear with antialiasing and ignores the aspect ratio. ``max_pixels`` bounds the
    declared width x height (for non-JPEG formats Pillow's own limit, ``2 *
    PIL.Image.MAX_IMAGE_PIXELS``, applies too). Raises ``ImageDecodeError`` naming ``media_id``
    and ``path`` for corrupt, truncated, non-image or oversized data.
    """
    target = _target(size)
    pixels = None
    if data[:3] == JPEG_MAGIC:
        pixels = _decode_jpeg(data, target, max_pixels, media_id, path)
    if pixels is None:
        pixels = np.array(_open_pil(data, max_pixels, media_id, path))  # a writable copy torch can own
    return to_chw(pixels, target)


def decode_pil(
    data: bytes, *, media_id: str | None = None, path: str | None = None, max_pixels: int = MAX_PIXELS
) -> PIL.Image.Image:
    """Decode to a native-size RGB Pillow image, for transforms written against PIL.

    Same conversions and errors as ``decode_image``; EXIF orientation is likewise ignored.
    """
    return _open_pil(data, max_pixels, media_id, path)
