"""Our errors reach the main process whole, their fields included, from DataLoader workers.

torch's worker loop wraps what a batch raises in an ``ExceptionWrapper``, which keeps only the
exception's type and formatted traceback, and the main process raises ``type(exc)(message)``: an
``ImageDecodeError`` would arrive with ``media_id`` and ``path`` None. So a dataset asked for a
batch by the loader (a ``BatchRequest``) returns an error of ours in its ``LoadedBatch`` instead
of raising it, with the traceback where it was raised (``VisualLayerDataset.load_batch``); the
batch pickles with the error and its fields (``VLDatasetsError.__reduce__``), the collate passes
it on, and the loader raises it in the main process here. Any other exception takes torch's way.
"""

from __future__ import annotations

from typing import NoReturn

from .batches import LoadedBatch


def raise_in_main(failed: LoadedBatch, *, from_worker: bool) -> NoReturn:
    """Raise a batch's error in the main process; one from a worker keeps the worker's traceback
    as a note (in the main process the error still carries its own)."""
    error = failed.error
    assert error is not None  # only a failed batch comes here
    if from_worker and hasattr(error, "add_note"):  # Python 3.11+
        error.add_note(f"Raised in a DataLoader worker:\n{failed.traceback.rstrip()}")
    try:
        raise error
    finally:
        del error, failed  # no cycle through this frame (see VLDataLoader.__iter__)
