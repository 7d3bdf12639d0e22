"""Our errors reach the main process whole, their fields included, from DataLoader workers.

torch's worker loop wraps what a batch raises in an ``ExceptionWrapper``, which keeps only the
exception's type and formatted traceback, and the main process raises ``type(exc)(message)``: an
``ImageDecodeError`` arrives with ``media_id`` and ``path`` None. So each worker of a loader with
the task collate reads its batches through ``KeepErrorFields``: a ``VLDatasetsError`` raised while
a batch's samples are read comes back as the batch itself, a ``RaisedInWorker`` that pickles the
error with its fields (``VLDatasetsError.__reduce__``); ``TaskCollate`` passes it on, and the
loader raises it in the main process, with the worker's traceback as a note. Any other exception
takes torch's way, unchanged.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, NoReturn

import torch
from torch.utils.data import get_worker_info

from ..errors import VLDatasetsError


class RaisedInWorker(NamedTuple):
    """What a worker sends in place of a batch whose reading raised one of our errors."""

    error: VLDatasetsError
    traceback: str


class KeepErrorFields:
    """A worker's batch reader: its dataset's ``__getitems__`` (or one ``dataset[i]`` per index),
    with our errors returned as the batch instead of raised.

    Set on the worker's own copy of the dataset as ``__getitems__``, the batch access torch's
    fetcher calls when a dataset has one; the main process's dataset is never touched.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.read_batch: Callable[[Any, Sequence[int]], list] | None = getattr(type(dataset), "__getitems__", None)

    def __call__(self, indices: Sequence[int]) -> list:
        try:
            if self.read_batch is not None:
                return self.read_batch(self.dataset, indices)
            return [self.dataset[i] for i in indices]
        except VLDatasetsError as exc:
            return [RaisedInWorker(exc, traceback.format_exc())]


class WorkerInit:
    """The loader's ``worker_init_fn``: one intra-op thread (unless the caller brought their own
    init, which then runs instead, as before), and our errors kept whole (see the module)."""

    def __init__(self, then: Callable[[int], None] | None = None, *, one_thread: bool = True) -> None:
        self.then = then
        self.one_thread = one_thread

    def __call__(self, worker_id: int) -> None:
        if self.one_thread:
            # Two workers on two cores must not fight over OpenMP threads.
            torch.set_num_threads(1)
        info = get_worker_info()
        # A dataset that takes no attributes keeps torch's way.
        with contextlib.suppress(AttributeError):
            info.dataset.__getitems__ = KeepErrorFields(info.dataset)  # type: ignore[union-attr]
        if self.then is not None:
            self.then(worker_id)


def raise_in_main(raised: RaisedInWorker) -> NoReturn:
    """Raise a worker's error in the main process, its traceback there kept as a note."""
    error = raised.error
    if hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(f"Raised in a DataLoader worker:\n{raised.traceback.rstrip()}")
    try:
        raise error
    finally:
        del error, raised  # no cycle through this frame (see VLDataLoader.__iter__)
