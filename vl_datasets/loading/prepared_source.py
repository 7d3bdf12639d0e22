"""An image source with the prepared-image store in front of it: ``prepare=S``'s read path.

``PreparedSource.read(path)`` answers from the store (``vl_datasets.loading.prepared``) when the
image is there, and otherwise reads the original, shrinks it so its shorter side is ``S`` and adds
it, so the first epoch fills the store as it goes. It stands where the dataset's source stood, so
everything around a read (reads in flight from an images_root, on_error, the skipped list, messages
naming the original's location) is unchanged.

What it returns is the pixels themselves, a height x width x 3 uint8 ``numpy`` array, which the
dataset turns into its image without decoding anything (``prepared_image``); every other source
returns bytes. An original that cannot be decoded is returned as its bytes, so the dataset's own
decode reports it with its media id, exactly as without ``prepare``.

A prepared copy is served only while it stands for its original (``sources.WithIdentity``). A
local original (the export's own images, a folder images_root) is stat-ed on every read, ~2 us:
one replaced since it was prepared is prepared again at once. A remote one would cost a request
per read, so its identity is taken when it is prepared (on S3 the ETag of the GET that reads it;
elsewhere one look-up on a miss) and compared by ``prepare()`` only: run it after replacing
originals under a remote root. An original that is gone leaves its copy served. A store damaged
or removed under a running job changes speed, never results: a copy that fails its checksum, or
a store that is gone, reads as a miss, and the image is prepared again from its original (a
WARNING says so, once).

How an image is shrunk: decoded by ``decode_image`` at the DCT scale that keeps it at least ``S``
(1/2, 1/4 or 1/8), then resized by torch's antialiased *bicubic* kernel, never upscaled. Bicubic,
because the prepared image is resized a second time, to ``image_size``, by the dataset's bilinear
kernel: a bilinear store blurs twice (measured at ``S=256``, 224 px: 1.8 grey levels of mean
absolute difference against the direct path on 500x375 JPEGs), a bicubic one stays under one
(0.95; 0.64 on 2000x1500 originals; benchmarks/bench_prepared.py).
"""

from __future__ import annotations

import io
import logging
import operator
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL.Image
import simplejpeg
import torch
import torch.nn.functional as F

from ..cache.store import LocalExport
from ..errors import ConfigurationError, ImageDecodeError, PreparedStoreError
from .images import JPEG_MAGIC, dct_scaled_size, decode_image, pil_size, to_chw
from .prepared import PreparedStore, StoreSettings, open_store
from .sources import ImageSource, WithIdentity, root_identity

logger = logging.getLogger("vl_datasets")


def prepared_image(
    pixels: np.ndarray, decode: str, size: int | tuple[int, int] | None
) -> torch.Tensor | PIL.Image.Image:
    """The dataset's image of prepared ``pixels`` (height x width x 3, uint8): for
    ``decode="tensor"`` a uint8 CHW tensor (a channels-last view, as ``decode_image`` gives)
    resized to ``size`` by the same antialiased bilinear kernel; for ``"pil"`` a Pillow image
    resized by Pillow's bilinear filter, as the dataset does."""
    if decode == "pil":
        image = PIL.Image.fromarray(pixels)
        return image if size is None else image.resize(pil_size(size), PIL.Image.Resampling.BILINEAR)
    return to_chw(pixels, _hw(size) if size is not None else None)


class PreparedSource:
    """``source``'s images, read from ``store`` once they are prepared there."""

    def __init__(self, source: ImageSource, store: PreparedStore) -> None:
        self.source, self.store = source, store
        self.display_root, self.separator = source.display_root, source.separator
        # Decided once: a runtime-checkable Protocol's isinstance costs more than the stat it guards.
        self._identity = source.identity if isinstance(source, WithIdentity) else None
        self.checks_every_read = self._identity is not None and source.identity_is_cheap  # type: ignore[attr-defined]
        self._warned: set[str] = set()

    def read(self, path: str) -> bytes | np.ndarray:
        """The prepared pixels of ``path``, prepared now if they are not yet (or no longer stand for
        their original); the original's bytes when it cannot be decoded."""
        identity = self.identity(path) if self.checks_every_read else 0
        try:
            pixels = self.store.get(path, source=identity)
        except PreparedStoreError as exc:  # removed under this job: the originals are still there
            self._warn_once("gone", "%s; reading the originals instead", exc)
            pixels = None
        if pixels is not None:
            return pixels
        if self.checks_every_read:
            data = self.source.read(path)  # a failed read raises as without prepare
        else:
            data, identity = self.read_with_identity(path)
        try:
            pixels = prepare_pixels(data, self.store.settings.size)
        except ImageDecodeError:
            return data  # the dataset's decode reports it, with its media id
        try:
            self.store.put(path, pixels, source=identity)
        except OSError as exc:  # a full disk slows later epochs down; it must not stop this one
            self._warn_once("put", "Cannot add images to %s (%s); preparing them again", self.store.path, exc)
        return pixels

    def read_with_identity(self, path: str) -> tuple[bytes, int]:
        """The original's bytes and identity: from one request where the source can tell them
        together (an S3 GET's ETag), else a look-up, then the read (a change in between leaves the
        copy stale, not wrong)."""
        read_with_identity = getattr(self.source, "read_with_identity", None)
        if read_with_identity is not None:
            return read_with_identity(path)
        identity = self.identity(path)
        return self.source.read(path), identity

    def identity(self, path: str) -> int:
        """The original's identity (``sources.WithIdentity``); 0 (any copy will do) where the source
        cannot tell, with a WARNING once when it failed to."""
        if self._identity is None:
            return 0
        try:
            return self._identity(path)
        except Exception as exc:  # the read that follows reports a failing root; a copy is still a copy
            reason = self.source.scrub(f"{type(exc).__name__}: {exc}")
            self._warn_once("identity", "Cannot tell whether originals under %s changed: %s", self.display_root, reason)
            return 0

    def _warn_once(self, what: str, message: str, *args: object) -> None:
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(message, *args)

    def location(self, path: str) -> str:
        return self.source.location(path)

    def scrub(self, text: str) -> str:
        return self.source.scrub(text)

    def __repr__(self) -> str:
        return f"PreparedSource({self.source!r}, {self.store!r})"


def check_prepare(prepare: int | None, image_size: int | tuple[int, int] | None) -> None:
    """Refuse a ``prepare`` that is not a size, or smaller than ``image_size`` (every image would
    then be upscaled from a copy with less detail than its original)."""
    if prepare is None:
        return
    if isinstance(prepare, bool) or not isinstance(prepare, int) or prepare <= 0:
        raise ConfigurationError(f"prepare must be the shorter side in pixels, a positive int; got {prepare!r}.")
    if image_size is not None and max(_hw(image_size)) > prepare:
        raise ConfigurationError(
            f"prepare={prepare} is smaller than image_size={image_size!r}: images would be upscaled from their "
            f"prepared copy. Prepare at least {max(_hw(image_size))}, more for random-resized crops."
        )


def prepared_source(
    source: ImageSource,
    size: int,
    *,
    entry: LocalExport,
    images_root: str | os.PathLike | None,
    storage_options: Mapping[str, Any] | None,
) -> PreparedSource:
    """``source`` behind the store of ``entry``'s version at ``size`` (and, for an images_root, that
    root: another root holds other images)."""
    root = None if images_root is None else root_identity(images_root, source.display_root, storage_options)
    store = open_store(entry, StoreSettings(size, root))
    store.load()  # here, before any fork: the workers share what is already prepared
    return PreparedSource(source, store)


def prepare_pixels(data: bytes, size: int, *, media_id: str | None = None, path: str | None = None) -> np.ndarray:
    """Decode ``data`` and shrink it so its shorter side is ``size`` (kept as is when it is not
    longer): height x width x 3 uint8, C-contiguous. Raises ``ImageDecodeError`` as ``decode_image``."""
    native = _native_size(data)
    if native is None:  # a header neither libjpeg nor Pillow reads: decode_image says why, or copes
        chw = decode_image(data, media_id=media_id, path=path)
        native = (chw.shape[1], chw.shape[2])
    else:
        chw = decode_image(data, size=_decode_size(data, native, size), media_id=media_id, path=path)
    target = shorter_side(native, size)
    if tuple(chw.shape[1:]) != target:
        chw = F.interpolate(chw[None], size=target, mode="bicubic", antialias=True, align_corners=False)[0]
    return chw.permute(1, 2, 0).contiguous().numpy()  # torch's copy: twice as fast as numpy's here


def shorter_side(native: tuple[int, int], size: int) -> tuple[int, int]:
    """(height, width) of a ``native`` (height, width) image with its shorter side shrunk to ``size``."""
    height, width = native
    if min(height, width) <= size:
        return height, width
    if height <= width:
        return size, max(1, round(width * size / height))
    return max(1, round(height * size / width)), size


def _native_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the header, or None when it cannot be read."""
    try:
        if data[:3] == JPEG_MAGIC:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return height, width
        with PIL.Image.open(io.BytesIO(data)) as image:  # reads the header only
            return image.height, image.width
    except Exception:  # any parser's failure: decode_image then names it properly
        return None


def _decode_size(data: bytes, native: tuple[int, int], size: int) -> tuple[int, int] | None:
    """What to ask ``decode_image`` for: a JPEG's smallest DCT-scaled size still at least the
    prepared one (decoded as such, with no resize), else None for the native size."""
    if data[:3] != JPEG_MAGIC:
        return None
    return dct_scaled_size(*native, shorter_side(native, size))


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return operator.index(height), operator.index(width)
