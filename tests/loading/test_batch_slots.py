"""Image batches through reused shared-memory slots: never overwritten while the caller holds them, reused after."""

from __future__ import annotations

import gc

import torch

from tests.loading.helpers import ITEMS
from vl_datasets.loading.dataset import VisualLayerDataset


def _in_slots(images, loader):
    pixels = loader.collate_fn.slots.pixels
    return pixels.data_ptr() <= images.data_ptr() < pixels.data_ptr() + pixels.nbytes


def _expected_images(ds, rows):
    position = {media_id: i for i, media_id in enumerate(ds.media_ids)}
    return torch.stack([ds[position[row["media_id"]]][0] for row in rows])


def test_batches_kept_by_the_caller_are_never_overwritten(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=(10, 14))
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    kept = [batch for _ in range(4) for batch in loader]  # more batches than there are slots
    assert any(_in_slots(images, loader) for images, _ in kept), "no batch came through the shared-memory slots"
    assert not all(_in_slots(images, loader) for images, _ in kept), (
        "every kept batch is in a slot, though there are more of them than slots: the rest must go the usual way"
    )
    for images, rows in kept:
        assert torch.equal(images, _expected_images(ds, rows)), (
            f"a kept batch was overwritten: it no longer holds {[row['media_id'] for row in rows]}"
        )
        assert images.is_contiguous(memory_format=torch.channels_last), "a kept batch is not channels_last"


def test_slots_are_reused_once_batches_are_dropped_even_after_unfinished_epochs(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=(10, 14))
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    for _ in range(3):
        next(iter(loader))  # each drops the batches prefetched after it
    gc.collect()
    for _ in range(6):
        for images, rows in loader:
            assert _in_slots(images, loader), "a batch missed the slots: dropped batches did not release theirs"
            assert torch.equal(images, _expected_images(ds, rows)), (
                f"a batch in a reused slot does not hold {[row['media_id'] for row in rows]}"
            )
            del images, rows


def test_spawned_workers_share_the_slots(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=(10, 14))
    loader = ds.dataloader(4, num_workers=1, shuffle=False, multiprocessing_context="spawn")
    batches = list(loader)
    assert _in_slots(batches[0][0], loader), "a spawned worker's batch did not come through the slots"
    assert torch.cat([images for images, _ in batches]).equal(torch.stack([ds[i][0] for i in range(ITEMS)])), (
        "the spawned worker's batches do not hold the dataset's images in order"
    )
