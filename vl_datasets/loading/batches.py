"""What the loader asks a dataset for, and what it gets back: the one contract between the two.

The loader's batch sampler (``vl_datasets.loading.batch_sampler``) hands torch a ``BatchRequest``
for each batch: its indices, and the indices of the batch the same worker loads next, so a dataset
that reads from remote storage can start those reads while it decodes this batch (and in a
shard-aware order, a batch further ahead whose shards it can start downloading). torch's fetcher
passes the request to ``dataset.__getitems__``; ``VisualLayerDataset`` answers with a
``LoadedBatch`` (``VisualLayerDataset.load_batch``): the samples, the items it skipped, and an
error of ours returned instead of raised, which pickles with its fields across the worker's queue
(torch would rebuild it from its message alone). A dataset of another kind iterates the request as
the list of indices it is, and its samples take torch's way.

``BatchLayout`` is what a dataset says about its batches, so the loader builds its collate without
reading the dataset's options.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import VLDatasetsError


class SkippedSample(NamedTuple):
    """An item left out of its batch: its image is unreadable and ``on_error="skip"``."""

    media_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class BatchRequest:
    """The indices of one batch, those of the batch its worker loads next (empty: none known), and,
    in a shard-aware order, those of a batch about half a shard window later (``ahead_indices``),
    whose shards a dataset read from shards can start downloading: the next window's, before the
    epoch reaches it.

    A sequence of ``indices``, so a dataset that knows nothing of requests reads it as a batch.
    """

    indices: tuple[int, ...]
    next_indices: tuple[int, ...] = ()
    ahead_indices: tuple[int, ...] = ()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> int:
        return self.indices[position]


@dataclass
class LoadedBatch:
    """A batch as a dataset loaded it: its samples in order, less the ``skipped`` items, with the
    dataset ``indices`` of those samples (None: the dataset did not say); or the ``error`` of ours
    that loading it raised, with the ``traceback`` of where it was raised."""

    samples: list[Any] = field(default_factory=list)
    skipped: list[SkippedSample] = field(default_factory=list)
    error: VLDatasetsError | None = None
    traceback: str = ""
    indices: tuple[int, ...] | None = None


class BatchLayout(NamedTuple):
    """How a dataset's samples batch: whether targets stay a list (detection dicts, metadata rows)
    rather than being collated, and the (C, H, W) every uint8 image tensor is known to have (None:
    sizes or types may vary), which lets batches travel through reused shared memory."""

    targets_as_list: bool = False
    image_shape: tuple[int, int, int] | None = None


def batch_layout(dataset: Any) -> BatchLayout:
    """A dataset's own ``batch_layout()``; for any other map-style dataset, torch's default batching."""
    layout = getattr(type(dataset), "batch_layout", None)
    return layout(dataset) if callable(layout) else BatchLayout()


def request_indices(indices: BatchRequest | Sequence[int]) -> tuple[Sequence[int], Sequence[int]]:
    """(indices, next_indices) of a request, or of a plain list of indices (no next batch)."""
    if isinstance(indices, BatchRequest):
        return indices.indices, indices.next_indices
    return indices, ()
