"""``VisualLayerDataset``: a curated Visual Layer export as a ``torch.utils.data.Dataset``.

It composes two parts, each usable on its own: ``ds.items``, a ``CuratedItems``
(``vl_datasets.metadata.curated``: which rows, their targets, ``classes``, the curation summary,
the fingerprint; no torch), and ``ds.images``, an ``ImageReader``
(``vl_datasets.loading.image_reader``: where bytes come from, reads ahead, decoding, prepared
pixels, the error policy). The dataset turns targets into tensors, fits detection boxes to the
decoded image, applies the transforms, and answers the loader's batch requests (``load_batch``).

Its options come in groups, each a dataclass that owns its fields' defaults, validation and doc
line: ``CurationRules``, ``TargetOptions``, ``ImageOptions``. The signatures of the constructor
and of ``from_export`` and the options part of the class docstring are built from them, so an
option added to a group reaches every entry point; each group is also accepted whole
(``curation=``, ``targets=``, ``images=``).

Per-item state lives in files the cache keeps, memory-mapped: the export's index and the curated
item list (``item_store``), never in per-item Python objects. Forked DataLoader workers share the
mapped pages (pytorch/pytorch#13246), and a spawned one unpickles the files' paths and maps them
too: the dataset pickles to a few KiB at any size. It holds no session, open file or lock.
"""

from __future__ import annotations

import inspect
import os
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import PIL.Image
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from ..cache.entry_index import entry_index
from ..cache.opened import open_export
from ..cache.readers import reading_version
from ..cache.store import LocalExport
from ..errors import VLDatasetsError
from ..metadata.curated import CuratedItems, TargetOptions
from ..metadata.curation import CurationRules, CurationSummary
from ..metadata.deferred import complete_index
from ..metadata.index import IMAGE_COLUMN, build_index
from ..metadata.options import group_from, keyword_parameters, options_doc
from ..metadata.read import find_metadata_file, read_metadata_file
from .batches import BatchLayout, BatchRequest, LoadedBatch, SkippedSample
from .image_reader import ImageOptions, ImageReader
from .item_store import open_items
from .loader import VLDataLoader, make_dataloader
from .sources import RootReading, root_reading, with_source_paths

if TYPE_CHECKING:
    import numpy as np

    from ..api.client import Client
    from .prepare import PrepareSummary
    from .shared_store_writer import SharedPrepareSummary

ExportFormat = Literal["parquet", "json"]


@dataclass(frozen=True)
class _Options:
    """A dataset's option groups, checked."""

    curation: CurationRules
    targets: TargetOptions
    images: ImageOptions


# Each group, the keyword that takes it whole, and the title of its part of the docstring.
_GROUPS = (
    ("curation", CurationRules, "Curation (what to keep; see ``CurationRules`` for the order the rules run in)"),
    ("targets", TargetOptions, "Targets (see ``TargetOptions``)"),
    ("images", ImageOptions, "Images (see ``ImageOptions``)"),
)


class VisualLayerDataset(Dataset):
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
        **options: Any,
    ) -> None:
        chosen = _options(options, type(self).__name__)  # before the fetch: a bad option should not cost an export
        from ..exports import fetch_export  # the API side loads only if the cache has no copy

        entry = fetch_export(
            dataset_id,
            client=client,
            cache_dir=cache_dir,
            offline=offline,
            export_format=export_format,
            include_images=chosen.images.images_root is None,
            media_ids=media_ids,
            cluster_ids=cluster_ids,
            refresh=refresh,
            version=version,
        )
        self.dataset_id: str | None = dataset_id
        self._open(entry, chosen, cache_dir)

    @classmethod
    def from_export(
        cls, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, **options: Any
    ) -> VisualLayerDataset:
        """Open a local export, with no network: a ZIP (checked and unpacked into the cache) or its
        extracted folder.

        cache_dir: the cache a ZIP is unpacked into, and a folder's index is kept in (nothing is
            ever written into the folder itself); default None, ``VL_DATASETS_CACHE`` or else
            ``~/.cache/vl_datasets``.
        Every other option (curation, targets, images) is the class's: see ``VisualLayerDataset``.
        """
        chosen = _options(options, f"{cls.__name__}.from_export")
        dataset = cls.__new__(cls)
        dataset.dataset_id = None
        dataset._open(open_export(path, cache_dir=cache_dir), chosen, cache_dir)
        return dataset

    def _open(self, entry: LocalExport, options: _Options, cache_dir: str | os.PathLike | None) -> None:
        self.entry = entry  # the cache entry's exact version: what a checkpoint pins
        self._reading = reading_version(entry)  # held while the dataset lives: a prune leaves the version be
        self.export_dir = entry.path
        self.items = _curated_items(entry, options)
        self.images = ImageReader(
            options.images,
            items=self.items,
            export_images=entry.path / "images",
            entry=entry,
            cache_dir=cache_dir,
        )

    # -- what users inspect --------------------------------------------------------------------

    @property
    def table(self) -> pa.Table:
        """The curated, normalized metadata: one row per index."""
        return self.items.table

    @property
    def classes(self) -> list[str]:
        """The class names, in index order (none for ``task=None``)."""
        return self.items.classes

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Each class name's index."""
        return self.items.class_to_idx

    @property
    def media_ids(self) -> list[str]:
        """The media id of each index."""
        return self.items.column("media_id").to_pylist()

    @property
    def curation_rules(self) -> CurationRules:
        """The curation rules this dataset was built with."""
        return self.items.rules

    @property
    def target_options(self) -> TargetOptions:
        """The target options this dataset was built with."""
        return self.items.options

    @property
    def image_options(self) -> ImageOptions:
        """The image options this dataset was built with."""
        return self.images.options

    @property
    def task(self) -> str | None:
        return self.items.options.task

    @property
    def label_source(self) -> str | tuple[str, ...] | None:
        """The label sources curation and targets count (``curation_rules.label_source``)."""
        return self.items.rules.label_source  # type: ignore[return-value]  # held as a str or a tuple

    @property
    def object_drop_issues(self) -> dict[str, float]:
        return dict(self.items.options.object_drop_issues or {})

    @property
    def target_transform(self) -> Any:
        return self.items.options.target_transform

    @property
    def image_size(self) -> int | tuple[int, int] | None:
        return self.images.options.image_size

    @property
    def decode(self) -> str:
        return self.images.options.decode

    @property
    def transform(self) -> Any:
        return self.images.options.transform

    @property
    def on_error(self) -> str:
        return self.images.options.on_error

    def fingerprint(self) -> str:
        """A hash of the curated item list (the media ids in index order): what a loader state pins,
        so that it is never loaded into a dataset whose indices mean other items."""
        return self.items.fingerprint()

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

    def batch_layout(self) -> BatchLayout:
        """How samples batch, for the loader's collate: targets as a list for detection and
        metadata rows; every image uint8 3 x H x W when a fixed ``image_size`` is decoded to a
        tensor with no transform."""
        return BatchLayout(
            targets_as_list=self.task in ("detection", None), image_shape=self.images.options.image_shape()
        )

    def curation_summary(self) -> CurationSummary:
        """How many items each curation rule removed."""
        return self.items.curation_summary()

    def curation_details(self) -> pa.Table:
        """Every item of the export, kept or not: the normalized metadata plus ``image_path``
        (absolute; null when the export has no image for it) and ``removed_by`` (the first rule
        that removed the item, or null when it is in the dataset). For reports and audits."""
        details = self.items.curation_details(_load_rows(self.entry, own_root=self.images.reading))
        paths = self.images.locations(details.column(IMAGE_COLUMN))
        details = details.drop_columns([IMAGE_COLUMN])
        return details.add_column(details.num_columns - 1, "image_path", paths)

    def read_image(self, image_path: str) -> bytes:
        """The bytes at an ``image_path`` of ``curation_details()``, read from where the images live
        (an images_root in a bucket included, with its storage options): for reports and audits."""
        return self.images.read_original(image_path)

    def report(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write a self-contained HTML curation report to ``path``; see ``vl_datasets.report``."""
        from ..report import write_report  # matplotlib is an optional extra: import it only when asked

        return write_report(self, path, **options)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        classes = f", classes={len(self.classes)}" if self.classes else ""
        images = f", images_root={self.images.root!r}" if self.images.own_root else ""  # shown without secrets
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
            return self.load_batch(
                indices.indices,
                next_indices=indices.next_indices,
                ahead_indices=indices.ahead_indices,
                keep_errors=True,
            )
        return self._samples(indices, (), ())

    def load_batch(
        self,
        indices: Sequence[int],
        *,
        next_indices: Sequence[int] = (),
        ahead_indices: Sequence[int] = (),
        keep_errors: bool = False,
    ) -> LoadedBatch:
        """The samples of a batch, and the items skipped from it (``on_error="skip"``).

        With an images_root every read starts at once and each image is decoded as its bytes
        arrive; the reads of ``next_indices`` (the batch this worker loads next) start too, while
        this one decodes. With a ``prepared_root``, the shards of ``next_indices`` and of
        ``ahead_indices`` (a batch further on) start downloading. ``keep_errors`` returns an error
        of ours in the batch instead of raising it, for a loader to raise in its main process with
        the error's fields.
        """
        try:
            samples = self._samples(indices, next_indices, ahead_indices)
        except VLDatasetsError as exc:
            if not keep_errors:
                raise
            return LoadedBatch(error=exc, traceback=traceback.format_exc())
        kept = [(index, sample) for index, sample in zip(indices, samples) if not isinstance(sample, SkippedSample)]
        skipped = [sample for sample in samples if isinstance(sample, SkippedSample)]
        return LoadedBatch([sample for _, sample in kept], skipped, indices=tuple(int(index) for index, _ in kept))

    def _samples(self, indices: Sequence[int], next_indices: Sequence[int], ahead_indices: Sequence[int]) -> list:
        """The samples of ``indices`` in order, a ``SkippedSample`` where one was skipped."""
        # With a prepared_root: the next batch's shards, and those of the batch further ahead, download meanwhile.
        self.images.prefetch_shards([*next_indices, *ahead_indices])
        if not self._reads_in_flight():
            return [self[index] for index in indices]
        loaded = self.images.load_many(indices, next_indices)
        return [self._sample(index, image) for index, image in zip(indices, loaded)]

    def prefetch(self, indices: Iterable[int]) -> None:
        """Start reading the images of ``indices`` ahead of need, for a later ``load_batch`` or
        ``__getitem__`` to take; a bounded number are held (``vl_datasets.loading.reads``). Only with
        an images_root: the export's own images are read when needed."""
        if self._reads_in_flight():
            self.images.prefetch(indices)

    def _reads_in_flight(self) -> bool:
        # Reads run on threads only from an images_root, and only through this class's own
        # per-item methods: a subclass that overrides them gets them called one by one.
        cls = type(self)
        return (
            self.images.own_root
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

    def image_path(self, index: int) -> str:
        """Where the image of ``index`` is: a path, or a URL without credentials or query string."""
        return self.images.location(index)

    def load_image(self, index: int):
        """The decoded image of ``index``; a ``SkippedSample`` if it is unreadable and ``on_error="skip"``."""
        return self.images.load(index)

    def target(self, index: int):
        """The target of ``index`` as the model takes it: a class index, a float32 multi-hot vector,
        a detection dict of ``boxes`` (float32 xyxy) and ``labels`` (int64) tensors, or the
        metadata row (``task=None``), in the metadata's pixels."""
        target = self.items.target(index)
        if self.task == "multilabel":
            vector = torch.zeros(len(self.classes), dtype=torch.float32)
            vector[torch.tensor(target, dtype=torch.int64)] = 1.0  # a copy: Arrow's buffers are read-only
            return vector
        if self.task == "detection":
            return {**target, "boxes": torch.from_numpy(target["boxes"]), "labels": torch.from_numpy(target["labels"])}
        return target

    def _fit_boxes(self, index: int, target: dict, image) -> dict:
        """The boxes in the pixels of the image as decoded: the metadata gives them in the original's
        pixels, and ``image_size`` (or a prepared copy) resizes the image."""
        height, width = (image.size[1], image.size[0]) if isinstance(image, PIL.Image.Image) else image.shape[-2:]
        if not len(target["boxes"]):
            return target
        scale = self.items.box_scale(index, width, height, target["media_id"])
        return target if scale is None else {**target, "boxes": target["boxes"] * torch.from_numpy(scale)}

    def prepare(
        self, *, num_workers: int | None = None, progress: bool | None = None, **shared: Any
    ) -> PrepareSummary | SharedPrepareSummary:
        """Fill the prepared-image store (``prepare=S``) now, a process per core (``num_workers``),
        with a progress bar; under torchrun the node's ranks split the work and each returns once
        all of it is done. Unreadable images raise, or are skipped and listed, as ``on_error`` says.
        With a ``prepared_root`` the store is built once for a cluster and published there (every
        rank of a torchrun job takes a share). See ``vl_datasets.loading.prepare`` and
        ``vl_datasets.loading.shared_store_writer``."""
        return self.images.prepare(num_workers=num_workers, progress=progress, **shared)

    def dataloader(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        num_workers: int | None = None,
        seed: int | None = None,
        drop_last: bool = False,
        order: str | None = None,
        shard_window: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs: Any,
    ) -> VLDataLoader:
        """A DataLoader with sensible defaults (persistent workers, one thread per worker, the task's
        collate), sharded across ranks under ``torch.distributed``, or across the ``world_size``
        processes of a job it does not run, this one ``rank`` (a multi-host JAX job:
        ``jax.process_index()`` of ``jax.process_count()``); see ``vl_datasets.loader``.

        ``order``: None (default) is "shards" when the images are read from a shared prepared store
        (``item_shards()``), else "uniform"; "shards" deals shards in a shuffled order, the items of
        ``shard_window`` shards at a time shuffled together (default 8; see the README).
        """
        return make_dataloader(
            self,
            batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            seed=seed,
            drop_last=drop_last,
            order=order,
            shard_window=shard_window,
            rank=rank,
            world_size=world_size,
            **kwargs,
        )

    def item_shards(self) -> np.ndarray | None:
        """The shard number of each item in the shared prepared store it is read from (-1: not in
        it), in dataset order; None when the images are not read from one."""
        return self.images.item_shards()


def _options(given: dict[str, Any], caller: str) -> _Options:
    """The option groups of an entry point's ``**options``: each group passed whole, or built from
    its single keywords (never both); a keyword of no group is refused as Python would."""
    given = dict(given)
    groups = {}
    for keyword, group, _ in _GROUPS:
        singles = {f.name: given.pop(f.name, f.default) for f in fields(group)}
        groups[keyword] = group_from(group, given.pop(keyword, None), singles, keyword)
    if given:
        raise TypeError(f"{caller}() got an unexpected keyword argument {next(iter(given))!r}")
    return _Options(**groups)


def _curated_items(entry: LocalExport, options: _Options) -> CuratedItems:
    """The dataset's items: from the list the cache keeps for these options (``item_store``), or,
    for an export the cache holds no index of, curated from its metadata now."""
    own_root, missing = root_reading(options.images.images_root), options.images.missing_images
    index = entry_index(entry)
    if index is not None:
        return open_items(entry, index, options.curation, options.targets, missing_images=missing, own_root=own_root)
    rows = _rows_in_memory(entry, own_root=own_root)
    return CuratedItems(rows, options.curation, options.targets, missing_images=missing, where=str(entry.path))


def _load_rows(entry: LocalExport, *, own_root: RootReading | None) -> pa.Table:
    """The export's index: its normalized metadata plus each row's image path (null when it has none).

    The cache built it when it published the entry, so this is a memory map. With an images_root
    each row's path is its ``file_path``, never looked up in a listing (contract §7).
    """
    table = entry_index(entry)
    if table is None:
        return _rows_in_memory(entry, own_root=own_root)
    table = complete_index(table, entry.index_path)  # with its items, and the columns left in the metadata file
    return with_source_paths(table, own_root) if own_root is not None else table


def _rows_in_memory(entry: LocalExport, *, own_root: RootReading | None) -> pa.Table:
    """``_load_rows`` for a version the cache holds no index of (an ambiguous image name, which
    this then reports; a cache it cannot be written into): read whole, into memory."""
    if own_root is not None:
        return with_source_paths(read_metadata_file(find_metadata_file(entry.path)), own_root)
    return build_index(entry.path)


# -- the signatures and the docstring, built from the option groups -------------------------------

_CLASS_DOC = """Images and targets of a curated Visual Layer export.

    ``VisualLayerDataset("dataset-id", min_uniqueness=0.3, drop_issues={"blur": 0.8}, image_size=224)``
    fetches (or reuses) the export and curates it; ``VisualLayerDataset.from_export(path)`` opens a
    local export (ZIP or folder) with no network. Samples are ``(image, target)``: a uint8 CHW
    tensor and, by ``task``, a class index, a multi-hot vector, a detection dict, or (``task=None``)
    the item's metadata row. Every option is keyword-only. ``ds.items`` (a ``CuratedItems``) and
    ``ds.images`` (an ``ImageReader``) are its two parts.

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

"""


def _group_parameters() -> list[inspect.Parameter]:
    parameters = []
    for keyword, group, _ in _GROUPS:
        kind = inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(keyword, kind, default=None, annotation=f"{group.__name__} | None"))
        parameters.extend(keyword_parameters(group))
    return parameters


def _with_options(function: Any) -> inspect.Signature:
    """``function``'s signature with its ``**options`` spelled out, group by group."""
    signature = inspect.signature(function)
    kept = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return signature.replace(parameters=[*kept, *_group_parameters()])


def _class_doc() -> str:
    sections = [options_doc(title, group, keyword=keyword) for keyword, group, title in _GROUPS]
    return _CLASS_DOC + "\n\n".join("    " + s.replace("\n", "\n    ") for s in sections) + "\n    "


VisualLayerDataset.__init__.__signature__ = _with_options(VisualLayerDataset.__init__)  # type: ignore[attr-defined]
VisualLayerDataset.from_export.__func__.__signature__ = _with_options(  # type: ignore[attr-defined]
    VisualLayerDataset.from_export.__func__  # type: ignore[attr-defined]
)
VisualLayerDataset.__doc__ = _class_doc()
