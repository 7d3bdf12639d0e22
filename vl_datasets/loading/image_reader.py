"""The image side of a dataset: where each item's image comes from, and how it becomes pixels.

``ImageReader(options, items=..., export_images=..., entry=..., cache_dir=...)``
holds the source chain (the export's own images or an ``images_root``, a node-local copy, the
prepared-image store in front: ``sources.py``, ``prepared_source.py``), the reads in flight and
ahead (``reads.py``), decoding and resizing (``images.py``), and the error policy: an unreadable
image raises its typed error, or with ``on_error="skip"`` comes back as a ``SkippedSample``.
It knows nothing of targets; ``ImageOptions`` are its options (and ``transform``, which the
dataset applies once targets and images meet).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import get_worker_info

from ..backoff import RetryPolicy
from ..cache.store import CacheStore, LocalExport
from ..config import is_remote
from ..errors import CacheMissError, ConfigurationError, ImageDecodeError, ImageNotFoundError
from ..metadata.curated import MissingImages, check_missing_images
from ..metadata.options import check_choice, doc
from . import images
from .batches import SkippedSample
from .prepared_source import PreparedSource, check_prepare, prepared_image, prepared_source
from .reads import ReadData, Reads
from .shared_source import SharedPreparedSource, check_prepared_root, with_shared_store
from .sources import ImageSource, check_source_options, image_error, local_copy, open_source, root_reading

if TYPE_CHECKING:
    from .prepare import PrepareSummary
    from .shared_store_writer import SharedPrepareSummary

logger = logging.getLogger("vl_datasets")

Decode = Literal["tensor", "pil"]
OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class ImageOptions:
    """Where images come from and what they become. Its repr leaves out ``images_root`` and
    ``storage_options``, which may carry credentials."""

    image_size: int | tuple[int, int] | None = field(
        default=None, metadata=doc("resize to this: an int for a square, or (height, width); None: as stored")
    )
    decode: Decode = field(default="tensor", metadata=doc('``"tensor"`` (uint8 CHW) or ``"pil"`` (a PIL image)'))
    transform: Any = field(default=None, metadata=doc("a callable applied to each decoded image"))
    on_error: OnError = field(
        default="raise",
        metadata=doc('``"raise"`` on an unreadable image, or ``"skip"`` it in the DataLoader (``loader.skipped``)'),
    )
    missing_images: MissingImages = field(
        default="raise", metadata=doc('``"raise"`` when an item has no image file, or ``"drop"`` the item')
    )
    images_root: str | os.PathLike | None = field(
        default=None,
        metadata=doc(
            "where the images live, read as ``<images_root>/<file_path>``: a folder, or an fsspec URL "
            "(``s3://bucket/prefix``, ``gs://...``, ``https://...``); the export is then fetched without images, "
            "and nothing is listed. None: the export's own images"
        ),
        repr=False,
    )
    storage_options: Mapping[str, Any] | None = field(
        default=None,
        metadata=doc(
            "options for the fsspec filesystem of an ``images_root`` URL and of a ``prepared_root`` (credentials, "
            "``endpoint_url``, ...)"
        ),
        repr=False,
    )
    image_cache: str | int | None = field(
        default=None,
        metadata=doc(
            "keep the images read from ``images_root`` on this machine, under the cache, up to this size "
            '(``"50G"``, or bytes), least recently used evicted first, so later epochs do not read them again'
        ),
    )
    read_retry: RetryPolicy | None = field(
        default=None,
        metadata=doc(
            "how reads from ``images_root`` are retried and bounded in time (``vl_datasets.RetryPolicy``: "
            "attempts, a timeout per attempt, a deadline per image); None: the ``VL_DATASETS_READ_*`` "
            "variables, else 6 attempts, 60 s each, 180 s per image"
        ),
    )
    prepare: int | None = field(
        default=None,
        metadata=doc(
            "decode each image once, shrunk so its shorter side is this many pixels (never enlarged), into a "
            "store of a few large files in the cache, and read it from there in every later epoch; "
            "``ds.prepare()`` fills it ahead, else the first epoch does. Leave room for crops: see the README's "
            '"Prepared images". None: decode every epoch'
        ),
    )
    prepared_root: str | os.PathLike | None = field(
        default=None,
        metadata=doc(
            "with ``prepare``: the prepared images' store shared by every machine of a cluster, under this folder "
            "or fsspec URL (``s3://bucket/prefix``; ``storage_options`` apply), built once by ``ds.prepare()`` or "
            "``vl-datasets prepare SOURCE --size S --to URL``; its shards are downloaded once per node into a cache "
            "under ``cache_dir``. Images it lacks are prepared here, into the node-local store. None: the node-local "
            "store only"
        ),
        repr=False,
    )
    prepared_cache_limit: str | int | None = field(
        default=None,
        metadata=doc(
            "the size limit of the node's cache of a ``prepared_root``'s shards, shared by every process on the "
            'node (``"200G"``, or bytes), least recently used evicted first; None: '
            "``VL_DATASETS_PREPARED_CACHE_LIMIT``, else 50G"
        ),
    )

    def __post_init__(self) -> None:
        check_choice("decode", self.decode, get_args(Decode))
        check_choice("on_error", self.on_error, get_args(OnError))
        check_missing_images(self.missing_images)
        if self.transform is not None and not callable(self.transform):
            raise ConfigurationError(f"transform must be callable, got {type(self.transform).__name__}.")
        check_source_options(self.images_root, self.storage_options, self.image_cache, prepared_root=self.prepared_root)
        check_prepare(self.prepare, self.image_size)
        check_prepared_root(self.prepared_root, self.prepare, self.prepared_cache_limit)
        if self.storage_options is not None:
            object.__setattr__(self, "storage_options", dict(self.storage_options))  # frozen; a copy of the caller's

    def images_options(self) -> Mapping[str, Any] | None:
        """The storage options of the images_root: none for a folder or the export's own images."""
        return self.storage_options if self.images_root is not None and is_remote(self.images_root) else None

    def image_shape(self) -> tuple[int, int, int] | None:
        """The (C, H, W) every image has, when that is known: a fixed size, decoded to a uint8
        tensor with no transform."""
        if self.image_size is None or self.transform is not None or self.decode != "tensor":
            return None
        height, width = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
        return 3, height, width


class ItemPaths(Protocol):
    """What a reader needs of the items (a ``CuratedItems``): each one's image path and media id, and
    the folder of their list, where what is worked out from them is kept (None: curated in memory)."""

    @property
    def paths(self) -> pa.Array | pa.ChunkedArray: ...

    def all_paths(self) -> pa.Array | pa.ChunkedArray: ...

    @property
    def list_folder(self) -> Path | None: ...

    def __len__(self) -> int: ...

    def image_file(self, index: int) -> str: ...

    def media_id(self, index: int) -> str: ...

    def column(self, name: str) -> pa.ChunkedArray: ...


class ImageReader:
    """The images of ``items`` (their paths are relative to the images' root; media ids name them in errors),
    read and decoded as ``options`` say (see the module)."""

    def __init__(
        self,
        options: ImageOptions,
        *,
        items: ItemPaths,
        export_images: Path,
        entry: LocalExport,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        self.options = options
        self.items = items
        # Only how a root of the images' own reads a path (None: the export's own images): the
        # root itself may carry a credential.
        self.reading = root_reading(options.images_root)
        self._entry, self._cache_dir = entry, cache_dir  # where a shared store's shards are cached
        self._originals: ImageSource = open_source(
            export_images,
            images_root=options.images_root,
            storage_options=options.images_options(),
            image_cache=options.image_cache,
            cache_dir=cache_dir,
            retry=options.read_retry,
        )
        self._source: ImageSource | PreparedSource = self._originals  # where reads go, prepared or not
        if options.prepare is not None:
            self._source = prepared_source(
                self._originals,
                options.prepare,
                entry=entry,
                images_root=options.images_root,
                storage_options=options.storage_options,
            )
            if options.prepared_root is not None:
                self._source = self._with_shared_store(self._source)
        self.root = self._source.display_root  # never a credential: it reaches reprs and reports
        self._reads = Reads()  # its threads start in the process that reads, after any fork

    @property
    def own_root(self) -> bool:
        """Whether the images come from a root of their own (``images_root``)."""
        return self.reading is not None

    def _with_shared_store(self, local: PreparedSource) -> SharedPreparedSource:
        """``local`` behind the shared store under the ``prepared_root``, as it is now."""
        assert self.options.prepared_root is not None
        return with_shared_store(
            local,
            prepared_root=self.options.prepared_root,
            storage_options=self.options.storage_options,
            entry=self._entry,
            cache_dir=self._cache_dir,
            cache_limit=self.options.prepared_cache_limit,
            paths=self.items.paths,
            list_folder=self.items.list_folder,
        )

    def item_shards(self) -> np.ndarray | None:
        """Each item's shard number in the shared prepared store it is read from (-1: not in it);
        None without one (``prepared_root=``): only a shared store keeps images in shards."""
        if isinstance(self._source, SharedPreparedSource):
            return self._source.item_shards
        return None

    def __repr__(self) -> str:
        root = f", images_root={self.root!r}" if self.own_root else ""
        return f"{type(self).__name__}(images={len(self.items)}{root}, image_size={self.options.image_size!r})"

    @property
    def paths(self) -> pa.Array | pa.ChunkedArray:
        """Each item's image path, relative to the images' root."""
        return self.items.paths

    # -- where images are -----------------------------------------------------------------------

    def location(self, index: int) -> str:
        """Where the image of ``index`` is: a path, or a URL without credentials or query string."""
        return self._source.location(self.items.image_file(index))

    def locations(self, files: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
        """The locations of image ``files`` (relative paths; null stays null), for tables."""
        return pc.binary_join_element_wise(self.root, files, self._source.separator)

    def read_original(self, location: str) -> bytes:
        """The bytes at a ``location`` (one of ``locations``), read from where the images live,
        never from a prepared copy. A failed read raises ``ImageNotFoundError`` or
        ``ImageDecodeError`` (``image_error``): a storage library's own error (an HTTP 403, say)
        quotes the signed URL it asked for."""
        prefix = self.root + self._source.separator
        if not location.startswith(prefix):
            raise ImageNotFoundError(f"{location} is not under this dataset's images ({self.root}).")
        path = location[len(prefix) :]
        try:
            return self._originals.read(path)
        except Exception as exc:  # any filesystem's failure: image_error types it and scrubs its message
            failure = exc
        raise image_error(failure, media_id=None, source=self._originals, path=path)  # outside the handler: see _failed

    # -- images ---------------------------------------------------------------------------------

    def load(self, index: int) -> Any:
        """The decoded image of ``index``; a ``SkippedSample`` if it is unreadable and ``on_error="skip"``."""
        ahead = self._reads.take(index) if self.own_root else None
        if ahead is not None:
            return self._image(index, ahead)
        try:
            data = self.read(index)
        except Exception as exc:  # any filesystem's failure: image_error names the image and types it
            failure = exc
        else:
            return self.decoded(index, data)
        return self._failed(index, failure)  # outside the handler: see _failed

    def load_many(self, indices: Sequence[int], next_indices: Sequence[int] = ()) -> list:
        """The images of ``indices``, in order (``SkippedSample`` for one skipped). With an
        images_root every read starts at once, each image is decoded as its bytes arrive, and the
        reads of ``next_indices`` start ahead while these decode."""
        if not self.own_root:
            return [self.load(index) for index in indices]
        reads: dict[Future, list[int]] = {}
        loaded: list = [None] * len(indices)
        local: list[tuple[int, bytes]] = []
        for position, index in enumerate(indices):
            read = self._reads.take(index)
            if read is None:
                # A node-local copy is read here: a thread's hand-off would cost more than the read.
                data = self._local_copy(index)
                if data is not None:
                    local.append((position, data))
                    continue
                read = self._reads.start(partial(self.read, index))
            reads.setdefault(read, []).append(position)
        self.prefetch(next_indices)
        try:
            for position, data in local:
                loaded[position] = self.decoded(indices[position], data)
            for read in as_completed(reads):
                for position in reads[read]:
                    loaded[position] = self._image(indices[position], read)
        except BaseException:
            for read in reads:
                read.cancel()  # those not started yet; the others finish unread
            raise
        return loaded

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start reading the images of ``indices`` ahead of need (only from an images_root: the
        export's own images are read when needed); a bounded number are held (``reads.py``)."""
        if self.own_root:
            self._reads.ahead([(int(index), self._read_ahead(int(index))) for index in indices])

    def prefetch_shards(self, indices: Sequence[int]) -> None:
        """Start downloading the shared store's shards that hold the images of ``indices`` (with a
        ``prepared_root``: the loader's next batch), on a few background threads."""
        if indices and isinstance(self._source, SharedPreparedSource):
            self._source.prefetch([self.items.image_file(int(index)) for index in indices])

    def shard_cache_stats(self) -> dict[str, float] | None:
        """With a ``prepared_root``: the counts of the node's shard cache, over every process that used
        it (``ShardCache.node_stats``: hits, downloads, bytes downloaded, hit_rate); else None."""
        if isinstance(self._source, SharedPreparedSource) and self._source.shared is not None:
            return self._source.shared.cache.node_stats()
        return None

    def read(self, index: int) -> ReadData:
        """The bytes of ``index``'s image, or its pixels from the prepared store."""
        return self._source.read(self.items.image_file(index))

    def decoded(self, index: int, data: ReadData) -> Any:
        """``data`` of ``index`` as the image ``options`` ask for (or what ``on_error`` makes of a failure)."""
        size = self.options.image_size
        if isinstance(data, np.ndarray):  # pixels from the prepared store: nothing to decode
            return prepared_image(data, self.options.decode, size)
        media_id, path = self.items.media_id(index), self.location(index)
        try:
            if self.options.decode == "pil":
                image = images.decode_pil(data, media_id=media_id, path=path)
                return image if size is None else image.resize(images.pil_size(size), PIL.Image.Resampling.BILINEAR)
            return images.decode_image(data, size=size, media_id=media_id, path=path)
        except ImageDecodeError as exc:
            failure = exc
        return self._failed(index, failure)  # outside the handler: see _failed

    def _read_ahead(self, index: int) -> Callable[[], ReadData] | bytes:
        """The bytes of a node-local copy, read now; else the read to start on a thread."""
        return self._local_copy(index) or partial(self.read, index)

    def _local_copy(self, index: int) -> bytes | None:
        """The bytes of ``index``'s node-local copy, if there is one (never with prepared images:
        their store is read instead)."""
        if isinstance(self._source, PreparedSource):
            return None
        return local_copy(self._source, self.items.image_file(index))

    def _image(self, index: int, read: Future) -> Any:
        """The decoded image of a read started earlier (or what ``on_error`` makes of its failure)."""
        try:
            data = read.result()
        except Exception as exc:
            failure = exc
        else:
            return self.decoded(index, data)
        return self._failed(index, failure)  # outside the handler: see _failed

    def _failed(self, index: int, exc: BaseException) -> SkippedSample:
        """Raise the typed error for ``index``'s image, or with ``on_error="skip"`` return its ``SkippedSample``.

        Called outside the ``except`` block that caught ``exc``: raised there, the error would carry
        ``exc`` as its ``__context__`` (``from None`` only hides it from tracebacks), and ``exc`` may
        hold a URL's query string or user info that error trackers would then record."""
        media_id, path = self.items.media_id(index), self.items.image_file(index)
        gone = not self.own_root and not os.path.isdir(self._originals.display_root)
        if isinstance(exc, FileNotFoundError) and gone:
            # The export's own images/ went with its cache entry: not this image's fault, and never
            # one to skip (every later image would be skipped too, an epoch of nothing).
            raise CacheMissError(
                f"The export's images at {self._originals.display_root} are gone (its cache entry pruned, or "
                "its folder moved, while this job ran?): open the dataset again."
            )
        error = image_error(exc, media_id=media_id, source=self._originals, path=path)
        del exc
        if self.options.on_error == "raise":
            raise error  # the message has what matters; the original failure stays behind
        # In a DataLoader worker the skip travels with its batch and the loader warns once per epoch,
        # for the batches it hands over: a warning here would repeat it, and the next epoch's prefetch
        # would warn again before that epoch begins.
        in_worker = get_worker_info() is not None
        logger.log(logging.DEBUG if in_worker else logging.WARNING, "Skipping media_id %s: %s", media_id, error)
        return SkippedSample(media_id, self._originals.location(path), str(error))

    # -- the prepared store ---------------------------------------------------------------------

    def prepare(
        self, *, num_workers: int | None = None, progress: bool | None = None, **shared: Any
    ) -> PrepareSummary | SharedPrepareSummary:
        """Fill the prepared-image store (``prepare=S``) now; see ``vl_datasets.loading.prepare``, and
        with a ``prepared_root`` publish it there (``shared``: ``shard_bytes``, ``share_images``): see
        ``vl_datasets.loading.shared_store_writer``."""
        if self.options.prepared_root is not None and isinstance(self._source, PreparedSource):
            return self._publish_shared(num_workers=num_workers, progress=progress, **shared)
        if shared:
            named = ", ".join(sorted(shared))
            raise ConfigurationError(f"{named} apply to a store under a prepared_root; none was given.")
        from .prepare import prepare_images  # the job's pool and progress bar: only when asked

        return prepare_images(
            self._source,
            self.items.all_paths(),
            self.items.column("media_id"),
            on_error=self.options.on_error,
            num_workers=num_workers,
            progress=progress,
        )

    def _publish_shared(self, *, num_workers: int | None, progress: bool | None, **shared: Any) -> SharedPrepareSummary:
        from .shared_store_writer import publish_shared, store_location  # fsspec and torch.distributed: only here

        assert isinstance(self._source, PreparedSource) and self.options.prepared_root is not None
        settings = self._source.store.settings
        location = store_location(self.options.prepared_root, self.options.storage_options, self._entry, settings)
        summary = publish_shared(
            self._source,
            location,
            self.items.all_paths().to_pylist(),
            self.items.column("media_id").to_pylist(),
            export=CacheStore.content_name(self._entry),
            version=self._entry.version,
            on_error=self.options.on_error,
            num_workers=num_workers,
            progress=progress,
            **shared,
        )
        self._source = self._with_shared_store(self._source)  # read from what was just published
        return summary
