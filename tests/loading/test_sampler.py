"""EpochSampler: torch's orders, and the rest of an epoch dealt among any number of ranks by arithmetic alone."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

from vl_datasets.loading.sampler import EpochSampler

SIZES = [1, 7, 12, 13]


def groups_of(size, order):
    """For order "shards": items in shards of 3, every fifth item in none (-1); else None."""
    if order != "shards":
        return None
    groups = np.arange(size) // 3
    groups[::5] = -1
    return groups


def sampler_of(size, order, *, seed=3, **options):
    groups = groups_of(size, order)
    return EpochSampler(range(size), order=order, seed=seed, groups=groups, window=2, **options)


def shards(size, *, world_size, epoch, position=0, order="distributed", drop_last=False, seed=3):
    """Every rank's indices of ``epoch`` resumed at ``position``, on ``world_size`` ranks."""
    out = []
    for rank in range(world_size):
        sampler = sampler_of(size, order, seed=seed, rank=rank, world_size=world_size, drop_last=drop_last)
        state = sampler.shard_state()
        sampler.resume_at(epoch=epoch, position=position, order=order, seed=seed, shards=state)
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == sampler.rank_length(epoch), "rank_length does not count what the rank yields"
        out.append(indices)
    return out


def taken_prefix(size, *, world_size, epoch, taken, order="distributed", seed=3):
    """The global position once every rank took ``taken`` indices, and the indices they took."""
    all_shards = shards(size, world_size=world_size, epoch=epoch, order=order, seed=seed)
    sampler = sampler_of(size, order, seed=seed, world_size=world_size)
    return sampler.position_after(epoch, taken), [i for shard in all_shards for i in shard[:taken]]


@pytest.mark.parametrize("size", SIZES)
def test_a_single_process_follows_random_and_sequential_samplers_epoch_after_epoch(size):
    reference = RandomSampler(range(size), generator=torch.Generator().manual_seed(11))
    sampler = EpochSampler(range(size), order="random", seed=11)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        assert list(sampler) == list(reference), f"epoch {epoch} differs from RandomSampler's"
    sequential = EpochSampler(range(size), order="sequential", seed=0)
    assert list(sequential) == list(SequentialSampler(range(size)))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("order", ["distributed", "sequential"])
def test_ranks_follow_distributed_sampler(size, world_size, drop_last, order):
    for epoch in (0, 3):
        ours = shards(size, world_size=world_size, epoch=epoch, order=order, drop_last=drop_last)
        for rank in range(world_size):
            theirs = DistributedSampler(
                range(size),
                num_replicas=world_size,
                rank=rank,
                shuffle=order == "distributed",
                seed=3,
                drop_last=drop_last,
            )
            theirs.set_epoch(epoch)
            assert ours[rank] == list(theirs), f"rank {rank} of {world_size}, epoch {epoch}"
            ours_len = len(
                EpochSampler(range(size), order=order, seed=3, rank=rank, world_size=world_size, drop_last=drop_last)
            )
            assert ours_len == len(theirs), "len is not a whole epoch's, as DistributedSampler's"


@pytest.mark.parametrize("size", [12, 13])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("new_world_size", [1, 2, 4])
@pytest.mark.parametrize("order", ["distributed", "shards"])
def test_the_rest_of_an_epoch_goes_to_any_world_size_with_none_lost_or_repeated(
    size, world_size, new_world_size, order
):
    epoch = 2
    per_rank = -(-size // world_size)
    for taken in range(per_rank + 1):
        position, done = taken_prefix(size, world_size=world_size, epoch=epoch, taken=taken, order=order)
        rest = shards(size, world_size=new_world_size, epoch=epoch, position=position, order=order)
        assert len({len(shard) for shard in rest}) == 1, f"unequal shards {rest} after {taken} taken"
        seen = Counter(done) + Counter(i for shard in rest for i in shard)
        assert set(seen) == set(range(size)), f"items lost after {taken} taken on {world_size} -> {new_world_size}"
        padding = sum(seen.values()) - size
        assert padding < world_size + new_world_size, f"{padding} repeats is more than padding"
        if taken * world_size <= size and (size - position) % new_world_size == 0:  # no padding either side
            assert max(seen.values()) == 1, f"an item repeated after {taken} taken on {world_size} -> {new_world_size}"


@pytest.mark.parametrize(
    ("order", "world_size"),
    [
        ("random", 1),
        ("sequential", 1),
        ("sequential", 4),
        ("distributed", 2),
        ("distributed", 4),
        ("shards", 1),
        ("shards", 3),
    ],
)
def test_the_same_world_size_continues_each_rank_exactly(world_size, order):
    size, epoch = 13, 3
    whole = shards(size, world_size=world_size, epoch=epoch, order=order)
    for taken in range(len(whole[0]) + 1):
        position, _ = taken_prefix(size, world_size=world_size, epoch=epoch, taken=taken, order=order)
        rest = shards(size, world_size=world_size, epoch=epoch, position=position, order=order)
        assert rest == [shard[taken:] for shard in whole], f"the rest after {taken} is not each rank's own"


@pytest.mark.parametrize("order", ["distributed", "shards"])
def test_drop_last_cuts_the_rest_to_whole_shards(order):
    rest = shards(13, world_size=4, epoch=0, position=4, drop_last=True, order=order)
    assert [len(shard) for shard in rest] == [2, 2, 2, 2]
    assert len({i for shard in rest for i in shard}) == 8, "drop_last repeated an item"


def test_a_resume_draws_only_the_epochs_permutations_and_later_epochs_are_unaffected():
    sampler = EpochSampler(range(10), order="random", seed=4)
    expected = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        expected.append(list(sampler))
    resumed = EpochSampler(range(10), order="random", seed=4)
    resumed.resume_at(epoch=3, position=6, order="random", seed=4)
    resumed.set_epoch(3)
    assert list(resumed) == expected[3][6:]
    resumed.set_epoch(4)
    assert list(resumed) == expected[4]
    resumed.set_epoch(1)  # back in time: drawn again from the seed
    assert list(resumed) == expected[1]
    assert resumed.position_after(3, 100) == 10, "a rank past its end did not finish the epoch"


def test_a_random_state_resumes_without_drawing_the_epochs_before_from_the_seed():
    original = EpochSampler(range(10), order="random", seed=4)
    orders = []
    for epoch in range(5):
        original.set_epoch(epoch)
        orders.append(list(original))
    for saved_at in (3, 4):  # the state before epoch 3's draw, or before epoch 4's as a prefetch leaves it
        state = original.random_state(saved_at)
        assert state[0] == saved_at
        resumed = EpochSampler(range(10), order="random", seed=4)
        # A wrong seed shows the generator state, not the seed, drew the order.
        resumed.resume_at(epoch=4, position=2, order="random", seed=999, random_state=state)
        assert list(resumed) == orders[4][2:], f"the rest of epoch 4 from the state saved at epoch {saved_at}"
    damaged = EpochSampler(range(10), order="random", seed=4)
    damaged.resume_at(epoch=3, position=0, order="random", seed=4, random_state=[3, "bm90IGEgc3RhdGU="])
    assert list(damaged) == orders[3], "a state this torch cannot read did not fall back to the seed"
    assert EpochSampler(range(10), order="distributed", seed=4).random_state(0) is None
