"""Reads in flight: a batch's reads overlap, read-ahead hides the next batch's latency, transient errors retry."""

from __future__ import annotations

import pickle
import threading

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from tests.loading.helpers import split_export as split_export_of
from tests.loading.image_server import ImageServer
from tests.waits import Stall, wait_until
from vl_datasets import errors
from vl_datasets.backoff import image_read_policy
from vl_datasets.loading.batch_sampler import RequestSampler
from vl_datasets.loading.batches import BatchRequest
from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.loader import TaskCollate
from vl_datasets.loading.reads import Reads

LATENCY_S = 0.2


@pytest.fixture
def split_export(tmp_path):
    return split_export_of(tmp_path, 32)  # batches of 16 want more than the shared 12


def open_remote(export, server, tmp_path, **options):
    return VisualLayerDataset.from_export(
        export, images_root=server.url, image_size=8, cache_dir=tmp_path / "c", **options
    )


def test_a_batch_reads_all_its_images_at_once(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source, latency_s=LATENCY_S) as server:
        ds = open_remote(export, server, tmp_path)
        ds[16]  # imports and the HTTP session: once per process
        batch = ds.__getitems__(list(range(16)))
        most = server.most_in_flight
    assert len(batch) == 16
    # Counted by the server, not timed (16 x 200 ms one at a time): a loaded machine slows both ways.
    assert most >= 8, f"at most {most} reads were in flight at once"


def test_read_ahead_starts_the_next_batch_while_this_one_decodes(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source, latency_s=LATENCY_S) as server:
        ds = open_remote(export, server, tmp_path)
        first = ds.load_batch(range(8), next_indices=range(8, 16)).samples
        # The caller's training step: the next batch's reads reach the server before it is asked for.
        wait_until(
            lambda: server.count() == 16,
            "the next batch's 8 reads to reach the server before load_batch asks for them",
            progress=Stall(server.count),
            stall_s=60,
        )
        second = ds.load_batch(range(8, 16)).samples
        assert server.count() == 16, "an image was read twice"
    assert ds.images._reads.pending() == 0
    reference = VisualLayerDataset.from_export(export, images_root=source, image_size=8, cache_dir=tmp_path / "c")
    assert all(torch.equal(a[0], reference[i][0]) for i, a in enumerate(first + second))


def test_the_request_sampler_hands_each_worker_its_next_batch():
    batches = BatchSampler(SequentialSampler(range(10)), batch_size=2, drop_last=False)
    requests = RequestSampler(None, per_epoch=batches, workers=2)
    two = list(requests)
    assert [list(b) for b in two] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [b.next_indices for b in two] == [(4, 5), (6, 7), (8, 9), (), ()]
    zero = RequestSampler(None, per_epoch=batches, workers=0)
    assert [b.next_indices for b in zero] == [(2, 3), (4, 5), (6, 7), (8, 9), ()]
    assert len(requests) == 5
    assert requests.batch_size == 2  # the wrapped sampler's attributes stay reachable
    again = pickle.loads(pickle.dumps(two[0]))  # as it travels to a worker
    assert again == BatchRequest((0, 1), (4, 5))


def test_workers_fed_by_the_lookahead_sampler_load_every_item_once(split_export, tmp_path):
    export, source = split_export
    with ImageServer(source, latency_s=0.02) as server:
        ds = open_remote(export, server, tmp_path, task=None)
        ds[0]  # the parent reads too before it forks: each worker must open its own connections
        per_epoch = BatchSampler(SequentialSampler(ds), batch_size=4, drop_last=False)
        batches = RequestSampler(None, per_epoch=per_epoch, workers=2)
        loader = DataLoader(
            ds, batch_sampler=batches, num_workers=2, collate_fn=TaskCollate(True), multiprocessing_context="fork"
        )
        ids = [row["media_id"] for batch in loader for row in batch.data[1]]
        reads = server.count()
    assert ids == ds.media_ids
    assert reads == len(ds) + 1, f"{reads} reads for {len(ds)} images and one in the parent"


def test_read_ahead_holds_a_bounded_number_of_reads():
    gate = threading.Event()
    reads = Reads(threads=2, max_ahead_reads=3)

    def read(data=b"x"):
        gate.wait(5)
        return data

    reads.ahead([(i, read) for i in range(10)])
    assert reads.pending() == 3
    assert reads.take(0) is None, "the oldest read-ahead was kept past the bound"
    kept = reads.take(9)
    gate.set()
    assert kept.result() == b"x"
    copy = pickle.loads(pickle.dumps(reads))  # a worker's copy starts with no threads and no reads
    assert (copy.pending(), copy._pool) == (0, None)


def test_transient_errors_are_retried_and_a_missing_file_is_not(split_export, tmp_path):
    export, source = split_export
    waits = []
    retry = image_read_policy(env={}, max_attempts=4, sleep=waits.append, random=lambda: 1.0)
    with ImageServer(source) as server:
        ds = open_remote(export, server, tmp_path)
        ds.images._source.retry = retry  # no real sleeps
        server.fail_next(3, 503)
        image, _ = ds[0]
        assert server.count() == 4
        assert waits == [0.1, 0.2, 0.4]
        server.fail_next(4, 503)
        with pytest.raises(errors.ImageDecodeError, match="503") as caught:
            ds[1]
        assert ds.media_ids[1] in str(caught.value)
        waits.clear()
        (source / ds.table.column("file_path")[2].as_py()).unlink()
        before = server.count()
        with pytest.raises(errors.ImageNotFoundError):
            ds[2]
        assert (server.count() - before, waits) == (1, []), "a missing file was retried"
    assert image.shape == (3, 8, 8)
