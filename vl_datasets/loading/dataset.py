"""``VisualLayerDataset``: a curated Visual Layer export as a ``torch.utils.data.Dataset``.

Per-item state lives in Arrow and numpy buffers, never in per-item Python objects, so forked
DataLoader workers share it instead of copying it (pytorch/pytorch#13246), and the dataset pickles
fast. It holds no session, open file or lock.
"""

from __future__ import annotations

import inspect
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, as_completed
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from ..cache.opened import open_export
from ..cache.store import LocalExport
from ..errors import (
    ConfigurationError,
    CurationError,
    ImageDecodeError,
    ImageNotFoundError,
    SchemaError,
    VLDatasetsError,
)
from ..metadata import targets
from ..metadata.curation import CurationRules, CurationSummary, curate, removal_reasons, resolve_rules
from ..metadata.index import IMAGE_COLUMN, build_index, read_index
from ..metadata.read import find_metadata_file, read_metadata_file
from . import images
from .batches import BatchLayout, BatchRequest, LoadedBatch, SkippedSample
from .loader import VLDataLoader, make_dataloader
from .prepared_source import PreparedSource, check_prepare, prepared_image, prepared_source
from .reads import ReadData, Reads
from .sources import ImageSource, check_source_options, image_error, local_copy, open_source, with_source_paths
from .state import fingerprint_ids

if TYPE_CHECKING:
    from ..api.client import Client
    from .prepare import PrepareSummary

logger = logging.getLogger("vl_datasets")

Task = Literal["classification", "multilabel", "detection", None]
InvalidLabels = Literal["raise", "drop"]
Decode = Literal["tensor", "pil"]
OnError = Literal["raise", "skip"]
MissingImages = Literal["raise", "drop"]
ExportFormat = Literal["parquet", "json"]


class VisualLayerDataset(Dataset):
    """Images and targets of a curated Visual Layer export.

    ``VisualLayerDataset("dataset-id", min_uniqueness=0.3, drop_issues={"blur": 0.8}, image_size=224)``
    fetches (or reuses) the export and curates it; ``VisualLayerDataset.from_export(path)`` opens a
    local export (ZIP or folder) with no network. Samples are ``(image, target)``: a uint8 CHW
    tensor and, by ``task``, a class index, a multi-hot vector, a detection dict, or (``task=None``)
    the item's metadata row. Every option is keyword-only.

    Fetching (the constructor only; see ``vl_datasets.fetch_export``):
        client: the ``Client`` to export with; default None, a ``Client()`` set up from ``VL_*`` variables.
        cache_dir: where exports are cached, a folder or an fsspec URL; default None,
            ``VL_DATASETS_CACHE`` or else ``~/.cache/vl_datasets``.
        offline: True to use only the cache, with no network call; default None, ``VL_DATASETS_OFFLINE``.
        export_format: the export's metadata format, ``"parquet"`` or ``"json"``; default ``"parquet"``.
        media_ids: export only these items; default None, all.
        cluster_ids: export only the items of these clusters; default None, all.
        refresh: start a new export even when one is cached; default False.
        version: open exactly this version of the cached export (``ds.entry.version``, as a loader
            state names it), from the cache alone; default None, the newest.

    Curation (what to keep; see ``CurationRules``), in this order:
        curation: all the rules below as one ``CurationRules``, not to be combined with any of them;
            default None.
        subset: media ids to keep before any other rule (a part of a split); default None, all.
        labels: keep items with at least one of these label names; default None, all.
        label_source: count only labels from this source (or these sources), for ``labels`` and for
            the targets; default None, every source.
        min_uniqueness: keep items whose uniqueness score is at least this (0 to 1); default None.
        keep_unscored: with ``min_uniqueness``, keep (True) or drop (False) items with no score;
            default None, an error if there are any.
        drop_issues: issue type -> confidence (0 to 1): drop items with such an issue at least that
            sure; default None.
        dedupe: keep the most unique item of each duplicate group: True at the export's lowest
            duplicate threshold, or a threshold (0 to 1); default False.
        where: a ``pyarrow.compute`` expression over the metadata: keep the rows it matches;
            default None.

    Targets:
        task: ``"classification"``, ``"multilabel"``, ``"detection"`` or None (the metadata row);
            default ``"classification"``.
        classes: the class names, in index order; default None, the sorted names present.
        invalid_labels: for classification, ``"raise"`` on items without exactly one known label, or
            ``"drop"`` them; default ``"raise"``.
        object_drop_issues: for detection, issue type -> confidence: leave out boxes with such an
            issue; default None.
        target_transform: a callable applied to each target; default None.

    Images:
        image_size: resize to this: an int for a square, or (height, width); default None, as stored.
        decode: ``"tensor"`` (uint8 CHW) or ``"pil"`` (a PIL image); default ``"tensor"``.
        transform: a callable applied to each decoded image; default None.
        on_error: ``"raise"`` on an unreadable image, or ``"skip"`` it in the DataLoader; default ``"raise"``.
        missing_images: ``"raise"`` when an item has no image file, or ``"drop"`` the item; default ``"raise"``.
        images_root: where the images live, read as ``<images_root>/<file_path>``: a folder, or an fsspec
            URL (``s3://bucket/prefix``, ``gs://...``, ``https://...``); the export is then fetched without
            images, and nothing is listed. Default None, the export's own images.
        storage_options: options for the fsspec filesystem of an ``images_root`` URL (credentials,
            ``endpoint_url``, ...); default None.
        image_cache: keep the images read from ``images_root`` on this machine, under the cache,
            up to this size (``"50G"``, or bytes), least recently used evicted first, so later
            epochs do not read them again; default None, no copy.
        prepare: decode each image once, shrunk so its shorter side is this many pixels (never
            enlarged), into a store of a few large files in the cache, and read it from there in
            every later epoch; ``ds.prepare()`` fills it ahead, else the first epoch does. Leave
            room for crops: see the README's "Prepared images". Default None, decode every epoch.
    """

    def __init__(
        self,
        dataset_id: str,
        *,
        client: Client | None = None,
        cache_dir: str | os.PathLike | None = None,
        offline: bool | None = None,
        export_format: ExportFormat = "parquet",
        media_ids: Iterable[str] | None = None,
        cluster_ids: Iterable[str] | None = None,
        refresh: bool = False,
        version: str | None = None,
        curation: CurationRules | None = None,
        subset: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
        label_source: str | Iterable[str] | None = None,
        min_uniqueness: float | None = None,
        keep_unscored: bool | None = None,
        drop_issues: Mapping[str, float] | None = None,
        dedupe: bool | float = False,
        where: pc.Expression | None = None,
        task: Task = "classification",
        classes: Sequence[str] | None = None,
        invalid_labels: InvalidLabels = "raise",
        object_drop_issues: Mapping[str, float] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        image_size: int | tuple[int, int] | None = None,
        decode: Decode = "tensor",
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError = "raise",
        missing_images: MissingImages = "raise",
        images_root: str | os.PathLike | None = None,
        storage_options: Mapping[str, Any] | None = None,
        image_cache: str | int | None = None,
        prepare: int | None = None,
    ) -> None:
        options = _open_options(locals())  # before the fetch: a bad option should not cost an export
        from ..exports import fetch_export  # the API side loads only if the cache has no copy

        entry = fetch_export(
            dataset_id,
            client=client,
            cache_dir=cache_dir,
            offline=offline,
            export_format=export_format,
            include_images=images_root is None,
            media_ids=media_ids,
            cluster_ids=cluster_ids,
            refresh=refresh,
            version=version,
        )
        self.dataset_id: str | None = dataset_id
        self._open(entry, **options)

    @classmethod
    def from_export(
        cls,
        path: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        curation: CurationRules | None = None,
        subset: Iterable[str] | None = None,
        labels: Iterable[str] | None = None,
        label_source: str | Iterable[str] | None = None,
        min_uniqueness: float | None = None,
        keep_unscored: bool | None = None,
        drop_issues: Mapping[str, float] | None = None,
        dedupe: bool | float = False,
        where: pc.Expression | None = None,
        task: Task = "classification",
        classes: Sequence[str] | None = None,
        invalid_labels: InvalidLabels = "raise",
        object_drop_issues: Mapping[str, float] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
        image_size: int | tuple[int, int] | None = None,
        decode: Decode = "tensor",
        transform: Callable[[Any], Any] | None = None,
        on_error: OnError = "raise",
        missing_images: MissingImages = "raise",
        images_root: str | os.PathLike | None = None,
        storage_options: Mapping[str, Any] | None = None,
        image_cache: str | int | None = None,
        prepare: int | None = None,
    ) -> VisualLayerDataset:
        """Open a local export, with no network: a ZIP (checked and unpacked into the cache) or its
        extracted folder.

        cache_dir: the cache a ZIP is unpacked into, and a folder's index is kept in (nothing is
            ever written into the folder itself); default None, ``VL_DATASETS_CACHE`` or else
            ``~/.cache/vl_datasets``.
        Every other option (curation, targets, images) is the class's: see ``VisualLayerDataset``.
        """
        options = _open_options(locals())
        dataset = cls.__new__(cls)
        dataset.dataset_id = None
        dataset._open(open_export(path, cache_dir=cache_dir), **options)
        return dataset

    def _open(
        self,
        entry: LocalExport,
        *,
        rules: CurationRules,
        task: Task,
        classes: Sequence[str] | None,
        invalid_labels: InvalidLabels,
        object_drop_issues: Mapping[str, float] | None,
        target_transform: Callable[[Any], Any] | None,
        image_size: int | tuple[int, int] | None,
        decode: Decode,
        transform: Callable[[Any], Any] | None,
        on_error: OnError,
        missing_images: MissingImages,
        images_root: str | os.PathLike | None,
        storage_options: Mapping[str, Any] | None,
        image_cache: str | int | None,
        prepare: int | None,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        self.entry = entry  # the cache entry's exact version: what a checkpoint pins
        self.export_dir = entry.path
        self.task, self.image_size, self.decode, self.on_error = task, image_size, decode, on_error
        self.transform, self.target_transform = transform, target_transform
        # The rules' label_source, alone or inside curation=: targets count the labels curation counted.
        self.label_source, self.object_drop_issues = rules.label_source, dict(object_drop_issues or {})

        # Only whether images come from a root of their own: the root itself may carry a credential.
        self._own_root = images_root is not None
        self._source: ImageSource | PreparedSource = open_source(
            self.export_dir / "images",
            images_root=images_root,
            storage_options=storage_options,
            image_cache=image_cache,
            cache_dir=cache_dir,
        )
        self._originals = self._source  # where the images themselves live, prepared or not
        if prepare is not None:  # images read once, then from the prepared store (loading/prepared_source.py)
            self._source = prepared_source(
                self._source, prepare, entry=entry, images_root=images_root, storage_options=storage_options
            )
        self._root = self._source.display_root  # never a credential: it reaches reprs and reports
        self._reads = Reads()  # its threads start in the process that reads, after any fork
        table = _load_rows(entry, own_root=self._own_root)
        self._rules = rules
        rows, summary = curate(table, rules)
        if len(rows) < len(table):  # a take copies every column: skip it when nothing was removed
            table = table.take(pa.array(rows))
        table, summary = _require_images(table, missing_images, summary)
        table, summary = self._build_targets(table, classes, invalid_labels, summary)
        if len(table) == 0:
            raise CurationError(f"No item is left to load from {self.export_dir}: {summary.removed_by}")
        self._paths = table.column(IMAGE_COLUMN).combine_chunks()
        self._table = table.drop_columns([IMAGE_COLUMN])
        self._summary = summary
        self._fingerprint: str | None = None  # computed when a loader state first asks for it

    def _build_targets(
        self, table: pa.Table, classes, invalid_labels: str, summary: CurationSummary
    ) -> tuple[pa.Table, CurationSummary]:
        self.classes: list[str] = []
        self._targets: np.ndarray | pa.ListArray | None = None
        if self.task in ("classification", "multilabel"):
            names = targets.distinct_labels(table, self.label_source)
            # Classification draws its classes from the items it can use: those with one label.
            usable = names if self.task == "multilabel" else names.filter(pc.equal(pc.list_value_length(names), 1))
            self.classes = targets.resolve_classes(pc.list_flatten(usable), classes)
            if self.task == "multilabel":
                self._targets = targets.multilabel_indices(names, self.classes)
                return table, summary
            index, keep = targets.classification_targets(table, names, self.classes, invalid_labels)
            if not keep.all():
                table = table.filter(pa.array(keep))
                summary = _count(summary, "invalid_labels", int((~keep).sum()))
            self._targets = index[keep]
        elif self.task == "detection":
            self.classes = targets.resolve_classes(targets.object_labels(table, self.label_source), classes)
        return table, summary

    # -- what users inspect --------------------------------------------------------------------

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def table(self) -> pa.Table:
        """The curated, normalized metadata: one row per index."""
        return self._table

    @property
    def media_ids(self) -> list[str]:
        """The media id of each index."""
        return self._table.column("media_id").to_pylist()

    @property
    def curation_rules(self) -> CurationRules:
        """The curation rules this dataset was built with."""
        return self._rules

    def fingerprint(self) -> str:
        """A hash of the curated item list (the media ids in index order): what a loader state pins,
        so that it is never loaded into a dataset whose indices mean other items."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_ids(self._table.column("media_id"))
        return self._fingerprint

    def curation_summary(self) -> CurationSummary:
        """How many items each curation rule removed."""
        return self._summary

    def curation_details(self) -> pa.Table:
        """Every item of the export, kept or not: the normalized metadata plus ``image_path``
        (absolute; null when the export has no image for it) and ``removed_by`` (the first rule
        that removed the item, or null when it is in the dataset). For reports and audits."""
        table = _load_rows(self.entry, own_root=self._own_root)
        reasons = removal_reasons(table, self._rules)
        kept = pc.is_in(table.column("media_id"), value_set=self._table.column("media_id"))
        # What curation kept but the dataset does not hold went at a later step: no image, or
        # not a usable label for the task (the summary names which of these ran).
        later = pc.if_else(pc.is_valid(table.column(IMAGE_COLUMN)), "invalid_labels", "missing_images")
        reasons = pc.if_else(kept, pa.scalar(None, pa.string()), pc.coalesce(reasons, later))
        paths = pc.binary_join_element_wise(self._root, table.column(IMAGE_COLUMN), self._source.separator)
        return (
            table.drop_columns([IMAGE_COLUMN]).append_column("image_path", paths).append_column("removed_by", reasons)
        )

    def read_image(self, image_path: str) -> bytes:
        """The bytes at an ``image_path`` of ``curation_details()``, read from where the images live
        (an images_root in a bucket included, with its storage options): for reports and audits."""
        prefix = self._root + self._source.separator
        if not image_path.startswith(prefix):
            raise ImageNotFoundError(f"{image_path} is not under this dataset's images ({self._root}).")
        return self._originals.read(image_path[len(prefix) :])  # the original, never a prepared copy

    def report(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write a self-contained HTML curation report to ``path``; see ``vl_datasets.report``."""
        from ..report import write_report  # matplotlib is an optional extra: import it only when asked

        return write_report(self, path, **options)

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        classes = f", classes={len(self.classes)}" if self.classes else ""
        images = f", images_root={self._root!r}" if self._own_root else ""  # shown without secrets
        return (
            f"{type(self).__name__}(items={len(self)}, task={self.task!r}{classes}, "
            f"export={str(self.export_dir)!r}{images})"
        )

    # -- samples -------------------------------------------------------------------------------

    def __getitem__(self, index: int):
        return self._sample(index, self.load_image(index))

    def __getitems__(self, indices: BatchRequest | Sequence[int]) -> LoadedBatch | list:
        """torch's batch access (its fetcher hands a worker the whole batch). The loader's
        ``BatchRequest`` is answered by ``load_batch``, its errors of ours returned in the batch;
        a plain list of indices (any other caller) by the samples in order, a ``SkippedSample``
        standing for each item skipped."""
        if isinstance(indices, BatchRequest):
            return self.load_batch(indices.indices, next_indices=indices.next_indices, keep_errors=True)
        return self._samples(indices, ())

    def load_batch(
        self, indices: Sequence[int], *, next_indices: Sequence[int] = (), keep_errors: bool = False
    ) -> LoadedBatch:
        """The samples of a batch, and the items skipped from it (``on_error="skip"``).

        With an images_root every read starts at once and each image is decoded as its bytes
        arrive; the reads of ``next_indices`` (the batch this worker loads next) start too, while
        this one decodes. ``keep_errors`` returns an error of ours in the batch instead of raising
        it, for a loader to raise in its main process with the error's fields.
        """
        try:
            samples = self._samples(indices, next_indices)
        except VLDatasetsError as exc:
            if not keep_errors:
                raise
            return LoadedBatch(error=exc, traceback=traceback.format_exc())
        kept = [sample for sample in samples if not isinstance(sample, SkippedSample)]
        return LoadedBatch(kept, [sample for sample in samples if isinstance(sample, SkippedSample)])

    def _samples(self, indices: Sequence[int], next_indices: Sequence[int]) -> list:
        """The samples of ``indices`` in order, a ``SkippedSample`` where one was skipped."""
        if not self._reads_in_flight():
            return [self[index] for index in indices]
        reads: dict[Future, list[int]] = {}
        samples: list = [None] * len(indices)
        local: list[tuple[int, bytes]] = []
        for position, index in enumerate(indices):
            read = self._reads.take(index)
            if read is None:
                # A node-local copy is read here: a thread's hand-off would cost more than the read.
                data = self._local_copy(index)
                if data is not None:
                    local.append((position, data))
                    continue
                read = self._reads.start(partial(self._read, index))
            reads.setdefault(read, []).append(position)
        self.prefetch(next_indices)
        try:
            for position, data in local:
                samples[position] = self._sample(indices[position], self._decoded(indices[position], data))
            for read in as_completed(reads):
                for position in reads[read]:
                    samples[position] = self._sample(indices[position], self._image(indices[position], read))
        except BaseException:
            for read in reads:
                read.cancel()  # those not started yet; the others finish unread
            raise
        return samples

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start reading the images of ``indices`` ahead of need, for a later ``load_batch`` or
        ``__getitem__`` to take; a bounded number are held (``vl_datasets.loading.reads``). Only with
        an images_root: the export's own images are read when needed."""
        if self._reads_in_flight():
            self._reads.ahead([(int(index), self._read_ahead(int(index))) for index in indices])

    def _read_ahead(self, index: int) -> Callable[[], ReadData] | bytes:
        """The bytes of a node-local copy, read now; else the read to start on a thread."""
        return self._local_copy(index) or partial(self._read, index)

    def _local_copy(self, index: int) -> bytes | None:
        """The bytes of ``index``'s node-local copy, if there is one (never with prepared images:
        their store is read instead)."""
        if isinstance(self._source, PreparedSource):
            return None
        return local_copy(self._source, self._paths[index].as_py())

    def _reads_in_flight(self) -> bool:
        # Reads run on threads only from an images_root, and only through this class's own
        # per-item methods: a subclass that overrides them gets them called one by one.
        cls = type(self)
        return (
            self._own_root
            and cls.__getitem__ is VisualLayerDataset.__getitem__
            and cls.load_image is VisualLayerDataset.load_image
        )

    def _sample(self, index: int, image):
        if isinstance(image, SkippedSample):
            return image
        target = self.target(index)
        if self.task == "detection":
            target = self._fit_boxes(index, target, image)  # before the transform: the decoded pixels
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def batch_layout(self) -> BatchLayout:
        """How samples batch, for the loader's collate: targets as a list for detection and
        metadata rows; every image uint8 3 x H x W when a fixed ``image_size`` is decoded to a
        tensor with no transform."""
        shape = None
        if self.image_size is not None and self.transform is None and self.decode == "tensor":
            height, width = (self.image_size,) * 2 if isinstance(self.image_size, int) else self.image_size
            shape = (3, height, width)
        return BatchLayout(targets_as_list=self.task in ("detection", None), image_shape=shape)

    def identity(self) -> dict[str, Any]:
        """What pins a loader state to these items: the cache entry (``dataset_id``, the key's
        ``key`` digest, ``version``), and the curated item list (``items``, ``fingerprint``)."""
        key = self.entry.key
        return {
            "dataset_id": self.dataset_id,
            "key": key.digest if key is not None else None,
            "version": self.entry.version,
            "items": len(self),
            "fingerprint": self.fingerprint(),
        }

    def image_path(self, index: int) -> str:
        """Where the image of ``index`` is: a path, or a URL without credentials or query string."""
        return self._source.location(self._paths[index].as_py())

    def load_image(self, index: int):
        """The decoded image of ``index``; a ``SkippedSample`` if it is unreadable and ``on_error="skip"``."""
        ahead = self._reads.take(index) if self._own_root else None
        if ahead is not None:
            return self._image(index, ahead)
        try:
            data = self._read(index)
        except Exception as exc:  # any filesystem's failure: image_error names the image and types it
            return self._failed(index, exc)
        return self._decoded(index, data)

    def _read(self, index: int) -> ReadData:
        return self._source.read(self._paths[index].as_py())

    def _image(self, index: int, read: Future):
        """The decoded image of a read started earlier (or what ``on_error`` makes of its failure)."""
        try:
            data = read.result()
        except Exception as exc:
            return self._failed(index, exc)
        return self._decoded(index, data)

    def _decoded(self, index: int, data: ReadData):
        if isinstance(data, np.ndarray):  # pixels from the prepared store: nothing to decode
            return prepared_image(data, self.decode, self.image_size)
        media_id = self._table.column("media_id")[index].as_py()
        path = self.image_path(index)
        try:
            if self.decode == "pil":
                image = images.decode_pil(data, media_id=media_id, path=path)
                return (
                    image
                    if self.image_size is None
                    else image.resize(images.pil_size(self.image_size), PIL.Image.Resampling.BILINEAR)
                )
            return images.decode_image(data, size=self.image_size, media_id=media_id, path=path)
        except ImageDecodeError as exc:
            return self._failed(index, exc)

    def _failed(self, index: int, exc: BaseException):
        """Raise the typed error for ``index``'s image, or with ``on_error="skip"`` return its ``SkippedSample``."""
        media_id = self._table.column("media_id")[index].as_py()
        path = self._paths[index].as_py()
        error = image_error(exc, media_id=media_id, source=self._originals, path=path)
        if self.on_error == "raise":
            raise error from None  # the cause may hold a URL's query string: the message has what matters
        logger.warning("Skipping media_id %s: %s", media_id, error)
        return SkippedSample(media_id, self._source.location(path), str(error))

    def target(self, index: int):
        if self.task == "detection":
            return self._detection_target(index)
        if self.task is None:
            return self._table.slice(index, 1).to_pylist()[0]
        assert self._targets is not None  # built for classification and multilabel
        if self.task == "classification":
            return int(self._targets[index])
        vector = torch.zeros(len(self.classes), dtype=torch.float32)  # multilabel: multi-hot
        vector[torch.tensor(self._targets[index].values.to_numpy(), dtype=torch.int64)] = 1.0
        return vector

    def _fit_boxes(self, index: int, target: dict, image) -> dict:
        """The boxes in the pixels of the image as decoded: the metadata gives them in the original's
        pixels, and ``image_size`` (or a prepared copy) resizes the image."""
        height, width = (image.size[1], image.size[0]) if isinstance(image, PIL.Image.Image) else image.shape[-2:]
        original_w, original_h = (self._table.column(name)[index].as_py() for name in ("width", "height"))
        if (original_w, original_h) == (width, height) or not len(target["boxes"]):
            return target
        if not original_w or not original_h:
            raise SchemaError(
                f"media_id {target['media_id']!r}: its boxes cannot be scaled to the {width}x{height} image it is "
                "decoded to, for the metadata gives no width and height.",
                field="width",
                media_id=target["media_id"],
            )
        scale = torch.tensor([width / original_w, height / original_h] * 2, dtype=torch.float32)
        return {**target, "boxes": target["boxes"] * scale}

    def _detection_target(self, index: int) -> dict:
        class_to_idx = self.class_to_idx
        sources = None if self.label_source is None else set(targets.label_sources(self.label_source) or ())
        boxes, labels = [], []
        for obj in self._table.column("objects")[index].as_py():
            if sources is not None and obj.get("source") not in sources:
                continue
            if obj.get("category_name") not in class_to_idx or _has_issue(obj, self.object_drop_issues):
                continue
            if obj.get("bbox") is None:  # a labelled object with no box (the metadata allows it) is no target box
                continue
            x, y, w, h = obj["bbox"]
            boxes.append((x, y, x + w, y + h))  # the export's xywh, top-left origin, to xyxy
            labels.append(class_to_idx[obj["category_name"]])
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "media_id": self._table.column("media_id")[index].as_py(),
        }

    def prepare(self, *, num_workers: int | None = None, progress: bool | None = None) -> PrepareSummary:
        """Fill the prepared-image store (``prepare=S``) now, a process per core (``num_workers``),
        with a progress bar; under torchrun the node's ranks split the work and each returns once
        all of it is done. Unreadable images raise, or are skipped and listed, as ``on_error`` says.
        See ``vl_datasets.loading.prepare``."""
        from .prepare import prepare_images  # the job's pool and progress bar: only when asked

        media_ids = self._table.column("media_id")
        return prepare_images(
            self._source, self._paths, media_ids, on_error=self.on_error, num_workers=num_workers, progress=progress
        )

    def dataloader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        num_workers: int | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> VLDataLoader:
        """A DataLoader with sensible defaults (persistent workers, one thread per worker, the task's
        collate), sharded across ranks under ``torch.distributed``; see ``vl_datasets.loader``."""
        return make_dataloader(
            self, batch_size, shuffle=shuffle, num_workers=num_workers, seed=seed, drop_last=drop_last, **kwargs
        )


# Read off _open's signature, so an option added there reaches it from both entry points.
_OPEN_OPTIONS = tuple(
    name
    for name, parameter in inspect.signature(VisualLayerDataset._open).parameters.items()
    if parameter.kind is parameter.KEYWORD_ONLY and name != "rules"
)
_CURATION_OPTIONS = tuple(f.name for f in fields(CurationRules))
_CHOICES = {
    "task": targets.TASKS,
    "invalid_labels": targets.INVALID_LABEL_CHOICES,
    "decode": get_args(Decode),
    "on_error": get_args(OnError),
    "missing_images": get_args(MissingImages),
}


def _open_options(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """``_open``'s keywords, checked, from an entry point's ``locals()``.

    Each entry point spells every option out in its signature, for help(), IDEs and type
    checkers; taking them here by name spares a copy of the whole list in each of its bodies.
    """
    for name, choices in _CHOICES.items():
        _check_choice(name, arguments[name], choices)
    check_source_options(arguments["images_root"], arguments["storage_options"], arguments["image_cache"])
    check_prepare(arguments["prepare"], arguments["image_size"])
    rules = resolve_rules(arguments["curation"], {name: arguments[name] for name in _CURATION_OPTIONS})
    return {"rules": rules, **{name: arguments[name] for name in _OPEN_OPTIONS}}


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {list(choices)}, got {value!r}.")


def _count(summary: CurationSummary, rule: str, removed: int) -> CurationSummary:
    return CurationSummary(
        total=summary.total, kept=summary.kept - removed, removed_by={**summary.removed_by, rule: removed}
    )


def _has_issue(obj: dict, thresholds: Mapping[str, float]) -> bool:
    return any(
        issue.get("issue_type") in thresholds and (issue.get("confidence") or 0) >= thresholds[issue["issue_type"]]
        for issue in obj.get("issues") or []
    )


def _load_rows(entry: LocalExport, *, own_root: bool) -> pa.Table:
    """The export's index: its normalized metadata plus each row's image path (null when it has none).

    The cache built it when it published the entry, so this is a memory map. With an images_root
    each row's path is its ``file_path``, never looked up in a listing (contract §7). An index the
    cache could not build (an ambiguous image name, which this then reports) is built here instead.
    """
    if entry.index_path is not None:
        table = read_index(entry.index_path)
        if table is not None:
            return with_source_paths(table) if own_root else table
    if own_root:
        return with_source_paths(read_metadata_file(find_metadata_file(entry.path)))
    return build_index(entry.path)


def _require_images(table: pa.Table, missing_images: str, summary: CurationSummary) -> tuple[pa.Table, CurationSummary]:
    """Rows whose image is missing: an error naming one, or dropped and counted."""
    present = pc.is_valid(table.column(IMAGE_COLUMN))
    missing = len(table) - (pc.sum(present).as_py() or 0)
    if not missing:
        return table, summary
    if missing_images == "raise":
        row = pc.index(present, False).as_py()
        media_id = table.column("media_id")[row].as_py()
        raise ImageNotFoundError(
            f"No image in the export for media_id {media_id!r} (file_path "
            f"{table.column('file_path')[row].as_py()!r}); {missing:,} item(s) have none. Export with "
            "include_images=True, pass images_root= where the images live, or missing_images='drop'.",
            media_id=media_id,
        )
    return table.filter(present), _count(summary, "missing_images", missing)
