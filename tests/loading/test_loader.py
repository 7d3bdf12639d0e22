"""The DataLoader: workers prefetch across epochs, yet every epoch is complete and reproducible, on one rank or many."""

from __future__ import annotations

import json
import os
import sys
from itertools import chain

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SequentialSampler, get_worker_info

from tests.helpers import REPO
from tests.loading.helpers import ITEMS, CountingTransform
from tests.waits import cpu_of_children, run_child, wait_until
from vl_datasets.loading.batch_sampler import RequestSampler
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.loader import VLDataLoader, make_dataloader
from vl_datasets.loading.sampler import EpochSampler


def epoch_ids(loader):
    return [row["media_id"] for _, rows in loader for row in rows]


def test_epochs_are_the_same_with_or_without_workers(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    single = ds.dataloader(3, num_workers=0, seed=5)
    expected = [epoch_ids(single) for _ in range(3)]
    assert all(sorted(ids) == ds.media_ids for ids in expected), "an epoch without workers missed or repeated items"
    assert expected[0] != expected[1] != expected[2]  # reshuffled every epoch
    workers = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    assert len(workers) == 4
    assert [epoch_ids(workers) for _ in range(3)] == expected


def test_workers_prefetch_the_next_epoch_before_it_is_asked_for(folder):
    counter = CountingTransform()
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8, transform=counter)
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    assert len(epoch_ids(loader)) == ITEMS
    wait_until(lambda: counter.count.value > ITEMS, "the workers to begin decoding epoch 2", progress=cpu_of_children())
    assert counter.count.value > ITEMS  # decoding of epoch 2 began while the caller was elsewhere
    assert sorted(epoch_ids(loader)) == ds.media_ids


def test_an_unfinished_epoch_does_not_leak_into_the_next(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    for _ in range(2):
        _, rows = next(iter(loader))  # a notebook peeking at one batch
        assert len(rows) == 3
    for _ in range(2):
        assert sorted(epoch_ids(loader)) == ds.media_ids, "an epoch after a peeked-at one missed or repeated items"
    assert loader.epoch == 4


def test_a_distributed_shard_is_reshuffled_each_epoch_with_workers(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, seed=3)
    loader = ds.dataloader(2, num_workers=2, sampler=sampler, multiprocessing_context="fork")
    epochs = [epoch_ids(loader) for _ in range(3)]
    for epoch, ids in enumerate(epochs):
        sampler.set_epoch(epoch)
        assert ids == [ds.media_ids[i] for i in sampler], f"epoch {epoch} does not follow the sampler's order"
    assert epochs[0] != epochs[1]


# -- datasets fetched from the local quick_vl --------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_batches(quick_vl, quick_client, tmp_path, num_workers):
    ds = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, image_size=24)
    loader = ds.dataloader(3, num_workers=num_workers, seed=1)
    assert loader.persistent_workers == (num_workers > 0)
    first = [labels.tolist() for _, labels in loader]
    second = [labels.tolist() for _, labels in loader]
    images, labels = next(iter(loader))
    assert images.shape == (3, 3, 24, 24)
    assert labels.dtype == torch.int64
    assert sorted(chain.from_iterable(first)) == sorted(chain.from_iterable(second))
    assert len(first) == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_hold_exactly_the_samples_in_channels_last_memory(quick_vl, quick_client, tmp_path, num_workers):
    ds = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, image_size=(20, 28))
    images, labels = next(iter(ds.dataloader(4, shuffle=False, num_workers=num_workers)))
    expected = torch.stack([ds[i][0] for i in range(4)])
    assert images.shape == (4, 3, 20, 28)
    assert torch.equal(images, expected), "the batch does not hold exactly the dataset's first 4 images"
    assert images.is_contiguous(memory_format=torch.channels_last), f"the batch's strides are {images.stride()}"
    assert labels.tolist() == [ds[i][1] for i in range(4)]


def test_dataloader_accepts_the_callers_collate(quick_vl, quick_client, tmp_path):
    ds = VisualLayerDataset("ds-ready", client=quick_client, cache_dir=tmp_path, image_size=8)
    loader = ds.dataloader(3, num_workers=0, shuffle=False, collate_fn=lambda batch: [label for _, label in batch])
    assert next(iter(loader)) == [ds[i][1] for i in range(3)]


def worker_view(batch):
    """A caller's collate that reports what the worker's copy of the dataset looks like."""
    dataset = get_worker_info().dataset
    return "__getitems__" in vars(dataset), [row["media_id"] for _, row in batch]


def test_the_loader_drives_torch_through_its_public_arguments_alone(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    loader = ds.dataloader(3, num_workers=2, shuffle=False, collate_fn=worker_view, multiprocessing_context="fork")
    private = {name for name in vars(DataLoader) if name.startswith("_") and not name.startswith("__")}
    assert private & set(vars(VLDataLoader)) == set(), "VLDataLoader overrides a private attribute of DataLoader"
    assert isinstance(loader.batch_sampler, RequestSampler)
    assert (type(loader.sampler), loader.batch_size, loader.drop_last, len(loader)) == (EpochSampler, 3, False, 4)
    batches = list(loader)
    assert not any(patched for patched, _ in batches), "a worker's dataset was patched"
    assert [i for _, ids in batches for i in ids] == ds.media_ids


def test_a_callers_batch_sampler_is_wrapped_and_resumed_by_batch(folder):
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)

    def build():
        batches = BatchSampler(SequentialSampler(range(ITEMS)), batch_size=4, drop_last=False)
        return ds.dataloader(1, batch_sampler=batches, sampler=None, num_workers=2, multiprocessing_context="fork")

    whole = [[row["media_id"] for row in rows] for _, rows in build()]
    assert whole == [ds.media_ids[i : i + 4] for i in range(0, ITEMS, 4)]
    loader = build()
    assert len(loader) == len(whole)
    first = next(iter(loader))
    resumed = build()
    resumed.load_state_dict(loader.state_dict())
    assert resumed.state_dict()["order"] == "custom"
    assert [[row["media_id"] for row in rows] for _, rows in resumed] == whole[1:]
    del first


class Squares(Dataset):
    """A plain torch dataset: no batch method, layout or identity of ours."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return torch.tensor([index]), index * index


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_plain_torch_dataset_loads_and_resumes_through_the_loader(num_workers):
    def build():
        context = {"multiprocessing_context": "fork"} if num_workers else {}
        return make_dataloader(Squares(), 4, shuffle=False, num_workers=num_workers, **context)

    loader = build()
    images, targets = next(iter(loader))
    assert images.tolist() == [[0], [1], [2], [3]] and targets.tolist() == [0, 1, 4, 9]
    state = loader.state_dict()
    assert state["dataset"] == {"dataset_id": None, "key": None, "version": None, "items": 10, "fingerprint": None}
    resumed = build()
    resumed.load_state_dict(state)
    assert [targets.tolist() for _, targets in resumed] == [[16, 25, 36, 49], [64, 81]]


def test_torchrun_two_ranks_get_equal_disjoint_shards(quick_vl, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(
        "import json, os, sys\n"
        "import torch.distributed as dist\n"
        "from vl_datasets import Client\n"
        "from vl_datasets.loading.dataset import VisualLayerDataset\n"
        "dist.init_process_group('gloo')\n"
        "client = Client(os.environ['VL_TEST_URL'], progress=False)\n"
        "ds = VisualLayerDataset('ds-ready', client=client, cache_dir=os.environ['VL_TEST_CACHE'], image_size=8)\n"
        "loader = ds.dataloader(2, num_workers=0, seed=3)\n"
        "epochs = []\n"
        "for _ in range(2):\n"
        "    seen = []\n"
        "    for images, labels in loader:\n"
        "        seen += [0] * len(labels)\n"
        "    epochs.append([ds.media_ids[i] for i in loader.sampler])\n"
        "out = os.path.join(os.environ['VL_TEST_OUT'], f'rank{dist.get_rank()}.json')\n"
        "json.dump(epochs, open(out, 'w'))\n"
        "dist.destroy_process_group()\n"
    )
    env = dict(
        os.environ,
        VL_TEST_URL=quick_vl.url,
        VL_TEST_CACHE=str(tmp_path / "cache"),
        VL_TEST_OUT=str(tmp_path),
        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    result = run_child(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)], env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for epoch in range(2):
        assert len(rank0[epoch]) == len(rank1[epoch]) == 4, f"epoch {epoch}: shards of unequal or wrong size"
        assert not set(rank0[epoch]) & set(rank1[epoch]), f"epoch {epoch}: both ranks got the same items"
        assert len(set(rank0[epoch]) | set(rank1[epoch])) == 8, f"epoch {epoch}: the ranks together missed items"
    assert rank0[0] != rank0[1]  # reshuffled each epoch without set_epoch
    assert quick_vl.count("export") == 1


def test_epochs_without_a_batch_end_at_once_with_workers(folder):
    """drop_last with fewer items than a batch: every epoch is empty, and the workers' stream of
    such epochs must not spin forever waiting for a first batch (it did, at 100% CPU)."""
    code = (
        "import sys\n"
        "from vl_datasets.loading.dataset import VisualLayerDataset\n"
        f"ds = VisualLayerDataset.from_export({str(folder)!r}, task=None, image_size=8)\n"
        f"loader = ds.dataloader({ITEMS + 5}, num_workers=1, drop_last=True, seed=0, multiprocessing_context='fork')\n"
        "print(len(loader), [len(list(loader)) for _ in range(2)])\n"
    )
    result = run_child([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, limit_s=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 [0, 0]"


@pytest.mark.parametrize("batch_size", [None, 0, -1, 2.5, True])
def test_a_batch_size_that_is_no_positive_integer_is_refused_naming_it(folder, batch_size):
    from vl_datasets import ConfigurationError

    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    with pytest.raises(ConfigurationError, match="batch_size must be a positive integer"):
        ds.dataloader(batch_size)


def test_batches_out_of_order_are_refused_for_they_cannot_resume(folder):
    from vl_datasets import ConfigurationError

    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    with pytest.raises(ConfigurationError, match="in_order=False"):
        ds.dataloader(3, num_workers=2, in_order=False)


@pytest.mark.parametrize("batch_size", [3, 2, 1])
def test_a_state_after_a_drop_last_epochs_last_batch_resumes_to_an_empty_rest_at_any_batch_size(folder, batch_size):
    """The items drop_last left are no rest of the epoch: at another batch size they made a batch more."""
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    loader = ds.dataloader(4, num_workers=0, seed=0, drop_last=True)
    assert ITEMS % 4, "the test needs items that drop_last leaves"
    batches = iter(loader)
    for _ in range(len(loader)):
        next(batches)
    state = loader.state_dict()
    resumed = ds.dataloader(batch_size, num_workers=0, seed=0, drop_last=True)
    resumed.load_state_dict(state)
    assert list(resumed) == [], "the finished epoch's dropped items came back"
    reference = ds.dataloader(batch_size, num_workers=0, seed=0, drop_last=True)
    epoch_ids(reference)  # epoch 0
    assert epoch_ids(resumed) == epoch_ids(reference), "the epoch after it is not epoch 1 as it comes"


def test_an_iterator_of_an_earlier_epoch_takes_nothing_from_a_later_one(folder, caplog):
    """A loop that broke out of an epoch keeps its iterator: used after the next epoch began, it
    took batches from the stream the epochs share, and a later epoch repeated items."""
    ds = VisualLayerDataset.from_export(folder, task=None, image_size=8)
    loader = ds.dataloader(3, num_workers=2, seed=5, multiprocessing_context="fork")
    stale = iter(loader)
    next(stale)
    assert sorted(epoch_ids(loader)) == ds.media_ids
    with caplog.at_level("WARNING", logger="vl_datasets"):
        assert list(stale) == []
    assert "An iterator of epoch 0 was used after a later iter(loader)" in caplog.text
    assert sorted(epoch_ids(loader)) == ds.media_ids, "the epoch after it missed or repeated items"
