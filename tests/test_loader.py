"""The DataLoader: workers prefetch across epochs, yet every epoch is complete and reproducible."""

from __future__ import annotations

import gc
import multiprocessing
import time

import pytest
import torch
from torch.utils.data import DistributedSampler

from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.testing import write_dataset

ITEMS = 11  # with batch 3: four batches, the last one short


def make_items(count):
    return [{"media_id": f"m{i:03d}", "media_type": "image", "file_name": f"img_{i}.jpg",
             "file_path": f"folder/img_{i}.jpg", "height": 12, "width": 16, "uniqueness_score": 0.5,
             "cluster_id": "c0", "url": "", "metadata_items": []} for i in range(count)]


@pytest.fixture
def folder(tmp_path):
    write_dataset(tmp_path, "loader", media_items=make_items(ITEMS))
    return tmp_path / "loader"


def epoch_ids(loader):
    return [row["media_id"] for _, rows in loader for row in rows]


class CountingTransform:
    """Counts decoded images across worker processes (shared by fork)."""

    def __init__(self):
        self.count = multiprocessing.get_context("fork").Value("i", 0)

    def __call__(self, image):
        with self.count.get_lock():
            self.count.value += 1
        return image


def test_epochs_are_the_same_with_or_without_workers(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    single = ds.dataloader(3, num_workers=0, seed=5)
    expected = [epoch_ids(single) for _ in range(3)]
    assert all(sorted(ids) == ds.media_ids for ids in expected)
    assert expected[0] != expected[1] != expected[2]  # reshuffled every epoch
    workers = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    assert len(workers) == 4
    assert [epoch_ids(workers) for _ in range(3)] == expected


def test_workers_prefetch_the_next_epoch_before_it_is_asked_for(folder):
    counter = CountingTransform()
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8, transform=counter)
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    assert len(epoch_ids(loader)) == ITEMS
    deadline = time.monotonic() + 60
    while counter.count.value <= ITEMS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counter.count.value > ITEMS  # decoding of epoch 2 began while the caller was elsewhere
    assert sorted(epoch_ids(loader)) == ds.media_ids


def test_an_unfinished_epoch_does_not_leak_into_the_next(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    for _ in range(2):
        _, rows = next(iter(loader))  # a notebook peeking at one batch
        assert len(rows) == 3
    for _ in range(2):
        assert sorted(epoch_ids(loader)) == ds.media_ids
    assert loader.epoch == 4


def test_a_distributed_shard_is_reshuffled_each_epoch_with_workers(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, seed=3)
    loader = ds.dataloader(2, num_workers=2, sampler=sampler, multiprocessing_context="fork")
    epochs = [epoch_ids(loader) for _ in range(3)]
    for epoch, ids in enumerate(epochs):
        sampler.set_epoch(epoch)
        assert ids == [ds.media_ids[i] for i in sampler]
    assert epochs[0] != epochs[1]


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
    assert any(_in_slots(images, loader) for images, _ in kept)
    assert not all(_in_slots(images, loader) for images, _ in kept)  # the rest went the usual way
    for images, rows in kept:
        assert torch.equal(images, _expected_images(ds, rows))
        assert images.is_contiguous(memory_format=torch.channels_last)


def test_slots_are_reused_once_batches_are_dropped_even_after_unfinished_epochs(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=(10, 14))
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    for _ in range(3):
        next(iter(loader))  # each drops the batches prefetched after it
    gc.collect()
    for _ in range(6):
        for images, rows in loader:
            assert _in_slots(images, loader)
            assert torch.equal(images, _expected_images(ds, rows))
            del images, rows


def test_spawned_workers_share_the_slots(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=(10, 14))
    loader = ds.dataloader(4, num_workers=1, shuffle=False, multiprocessing_context="spawn")
    batches = list(loader)
    assert _in_slots(batches[0][0], loader)
    assert torch.cat([images for images, _ in batches]).equal(torch.stack([ds[i][0] for i in range(ITEMS)]))
