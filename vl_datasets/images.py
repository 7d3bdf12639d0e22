"""Encoded image bytes to a uint8 CHW RGB tensor, as fast as a CPU core allows.

Where the time goes (PERF_BASELINE §2): Pillow's resize costs as much as its decode. So JPEGs are
decoded by libjpeg-turbo through simplejpeg and resized by torch's antialiased bilinear uint8
kernel, ~2x Pillow's decode-then-resize per core. An image at least twice the target on both
sides is decoded at a reduced DCT scale (1/2, 1/4 or 1/8, never below the target); the 5/8 and
3/4 scales cost more than a full decode, so they are not used. Other formats go through Pillow.

Decisions:
- EXIF orientation is ignored, as Pillow's ``open`` and torchvision's ``decode_jpeg`` do: the
  export's ``width``/``height`` and object boxes describe the stored pixels.
- The CHW tensor is a view of the decoded HWC buffer (channels-last memory): no per-sample
  contiguous copy, which with 0 workers would wake torch's intra-op threads for nothing. The
  resize kernel is fastest on exactly that layout, and the DataLoader's stack copies anyway.
- Truncated JPEGs raise (``strict``), as Pillow does by default; images declaring more than
  ``max_pixels`` are refused from their header, before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import simplejpeg
import torch
import torch.nn.functional as F

from .errors import ImageDecodeError

# Pillow raises DecompressionBombError above twice its MAX_IMAGE_PIXELS; refuse at the same size.
MAX_PIXELS = 2 * 89_478_485
_JPEG_MAGIC = b"\xff\xd8\xff"
# libjpeg-turbo cannot convert these to RGB itself; Pillow can.
_PIL_ONLY_COLORSPACES = ("CMYK", "YCCK")


def _target(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return int(height), int(width)


def _fail(reason: object, media_id: str | None, path: str | None) -> ImageDecodeError:
    where = f" at {path}" if path else ""
    return ImageDecodeError(f"Cannot decode the image of media_id {media_id!r}{where}: {reason}",
                            media_id=media_id, path=path)


def _check_pixels(height: int, width: int, max_pixels: int, media_id, path) -> None:
    if height * width > max_pixels:
        raise _fail(f"it declares {width}x{height} pixels, over the {max_pixels:,} limit (a decompression bomb?)",
                    media_id, path)


def _decode_jpeg(data: bytes, target, max_pixels: int, media_id, path) -> np.ndarray | None:
    """HWC RGB pixels, or None when the JPEG's colour space needs Pillow."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise _fail(exc, media_id, path) from None
    _check_pixels(height, width, max_pixels, media_id, path)
    if colorspace in _PIL_ONLY_COLORSPACES:
        return None
    scaled = target is not None and height >= 2 * target[0] and width >= 2 * target[1]
    try:
        if scaled:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=target[0], min_width=target[1],
                                          min_factor=2, strict=True)
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as exc:
        raise _fail(exc, media_id, path) from None


def _open_pil(data: bytes, max_pixels: int, media_id, path) -> PIL.Image.Image:
    """A fully loaded RGB Pillow image (first frame of an animation), or ImageDecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            _check_pixels(image.height, image.width, max_pixels, media_id, path)
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels become white, as most viewers show them, not their hidden colour.
                rgba = image.convert("RGBA")
                background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return PIL.Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError,
            PIL.Image.DecompressionBombWarning) as exc:
        raise _fail(exc, media_id, path) from None


def _to_chw(hwc: np.ndarray, target: tuple[int, int] | None) -> torch.Tensor:
    """View HWC pixels as CHW, resized to ``target`` when given."""
    nchw = torch.from_numpy(hwc)[None].permute(0, 3, 1, 2)  # canonical channels-last: the fast kernel's layout
    if target is not None and tuple(nchw.shape[2:]) != target:
        nchw = F.interpolate(nchw, size=target, mode="bilinear", antialias=True, align_corners=False)
    return nchw[0]


def decode_image(data: bytes, *, size: int | tuple[int, int] | None = None, media_id: str | None = None,
                 path: str | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """Decode to a uint8 3xHxW RGB tensor; ``size`` (an int for a square, or (height, width)) resizes.

    Raises ``ImageDecodeError`` naming ``media_id`` and ``path`` for corrupt, truncated or
    oversized images.
    """
    target = _target(size)
    pixels = None
    if data[:3] == _JPEG_MAGIC:
        pixels = _decode_jpeg(data, target, max_pixels, media_id, path)
    if pixels is None:
        pixels = np.array(_open_pil(data, max_pixels, media_id, path))  # a writable copy torch can own
    return _to_chw(pixels, target)


def decode_pil(data: bytes, *, media_id: str | None = None, path: str | None = None,
               max_pixels: int = MAX_PIXELS) -> PIL.Image.Image:
    """Decode to an RGB Pillow image, for transforms written against PIL."""
    return _open_pil(data, max_pixels, media_id, path)
