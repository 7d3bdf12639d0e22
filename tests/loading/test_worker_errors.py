"""An error of ours raised in a real DataLoader worker reaches the main process with every field."""

from __future__ import annotations

import pytest

from vl_datasets import errors
from vl_datasets.loading.dataset import VisualLayerDataset


@pytest.fixture
def corrupt(folder):
    """The export with m004's image truncated: (dataset, that image's path)."""
    path = folder / "images" / "folder" / "img_4.jpg"
    path.write_bytes(path.read_bytes()[:100])
    return VisualLayerDataset.from_export(folder, task=None, image_size=8), path


def noted_worker_init(worker_id):
    """A caller's own worker_init_fn."""


def error_of(loader):
    """What an epoch of ``loader`` raised: (type, media_id, path, message, notes).

    The error itself is not kept: pytest.raises would hold it, its traceback and so the loader in a
    reference cycle, and torch's workers then shut down only at a later garbage collection, 5 s each.
    """
    try:
        list(loader)
    except errors.VLDatasetsError as exc:
        return type(exc), exc.media_id, exc.path, str(exc), getattr(exc, "__notes__", [])
    raise AssertionError("the epoch raised nothing")


@pytest.mark.parametrize(
    "options",
    [
        {"multiprocessing_context": "fork"},
        {"multiprocessing_context": "fork", "worker_init_fn": noted_worker_init},
    ],
    ids=["ours", "callers-init"],
)
def test_an_image_decode_error_from_a_worker_keeps_media_id_and_path(corrupt, options):
    ds, path = corrupt
    kind, media_id, where, message, notes = error_of(ds.dataloader(2, num_workers=2, shuffle=False, **options))
    assert kind is errors.ImageDecodeError
    assert (media_id, where) == ("m004", str(path)), "the error lost its fields on the way from the worker"
    assert "m004" in message
    assert not message.startswith("Caught"), "the error was rebuilt from torch's traceback text"
    assert any("DataLoader worker" in note for note in notes), "the worker's traceback was not kept"


def test_the_loader_goes_on_after_an_error_from_a_worker(corrupt):
    ds, _ = corrupt
    loader = ds.dataloader(3, num_workers=2, shuffle=False, multiprocessing_context="fork")
    for _ in range(2):
        assert error_of(loader)[0] is errors.ImageDecodeError
    _, rows = next(iter(loader))  # the next epoch starts cleanly, its first batch before the bad image
    assert [row["media_id"] for row in rows] == ["m000", "m001", "m002"]
