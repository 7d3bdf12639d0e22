"""The shard-aware order: every item once, shards played a window at a time, items in no shard spread
uniformly, drawn from (seed, epoch, groups, window) alone; and its sampler's resume on the same shards."""

from __future__ import annotations

import numpy as np
import pytest

from vl_datasets.errors import ConfigurationError
from vl_datasets.loading.batch_sampler import RequestSampler
from vl_datasets.loading.sampler import EpochSampler
from vl_datasets.loading.shard_order import shard_order


def sharded(n, per_shard, *, unsharded_every=0):
    groups = np.arange(n) // per_shard
    if unsharded_every:
        groups[::unsharded_every] = -1
    return groups


@pytest.mark.parametrize(
    "groups",
    [
        sharded(1000, 10),
        sharded(1003, 7, unsharded_every=4),
        np.full(50, -1),
        np.array([], np.int64),
        np.array([5_000_000_000, 3, 3, -1, 5_000_000_000, 9]),  # sparse shard numbers
        np.random.default_rng(1).integers(0, 20, 500),  # a shard's items scattered over the dataset
    ],
)
def test_the_order_holds_every_item_once(groups):
    order = shard_order(groups, seed=4, epoch=2, window=3)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(len(groups)))


def test_the_order_is_a_function_of_seed_epoch_groups_and_window():
    groups = sharded(2000, 16, unsharded_every=9)
    first = shard_order(groups, seed=7, epoch=3, window=4)
    assert np.array_equal(first, shard_order(groups.copy(), seed=7, epoch=3, window=4))
    for other in (
        {"seed": 8, "epoch": 3, "window": 4},
        {"seed": 7, "epoch": 4, "window": 4},
        {"seed": 7, "epoch": 3, "window": 5},
    ):
        assert not np.array_equal(first, shard_order(groups, **other)), f"{other} drew the same order"


@pytest.mark.parametrize("window", [1, 3, 8])
def test_shards_are_played_a_window_at_a_time_each_whole(window):
    per_shard, n = 12, 12 * 50
    groups = np.random.default_rng(0).permutation(sharded(n, per_shard))  # shard items anywhere in the dataset
    played = groups[shard_order(groups, seed=1, epoch=0, window=window)]
    stretch = window * per_shard  # a window's items
    for start in range(0, n, stretch):
        shards = set(played[start : start + stretch].tolist())
        assert len(shards) == min(window, 50 - start // per_shard), f"window at {start} holds shards {shards}"
        assert all((played == shard).sum() == per_shard for shard in shards)
    first_seen = played[np.sort(np.unique(played, return_index=True)[1])]
    assert not np.array_equal(first_seen, np.sort(first_seen)), "the shards were played in their own order"


def test_items_in_a_window_are_shuffled_not_played_shard_by_shard():
    groups = sharded(4000, 100)
    played = groups[shard_order(groups, seed=2, epoch=0, window=4)]
    same_as_next = float(np.mean(played[1:] == played[:-1]))
    assert 0.15 < same_as_next < 0.35, f"{same_as_next:.2f} of neighbours share a shard; 1/window is 0.25"


def test_items_in_no_shard_are_spread_over_the_whole_epoch():
    groups = sharded(20_000, 100, unsharded_every=4)  # 5,000 of 20,000 in no shard
    positions = np.flatnonzero(groups[shard_order(groups, seed=3, epoch=1, window=2)] == -1)
    per_tenth = np.bincount(positions * 10 // len(groups), minlength=10)
    assert per_tenth.min() > 400 and per_tenth.max() < 600, f"items in no shard per tenth of the epoch: {per_tenth}"


def test_with_no_shard_at_all_the_order_is_a_shuffle():
    order = shard_order(np.full(1000, -1), seed=3, epoch=0)
    assert sorted(order.tolist()) == list(range(1000))
    assert abs(np.corrcoef(order, np.arange(1000))[0, 1]) < 0.15, "the order follows the dataset's"


@pytest.mark.parametrize("window", [0, -1, 2.5, True, "8", 1 << 30])
def test_a_bad_window_names_shard_window(window):
    with pytest.raises(ConfigurationError, match="shard_window"):
        shard_order(sharded(10, 2), seed=0, epoch=0, window=window)


@pytest.mark.parametrize("groups", [np.arange(9), np.arange(10.0), np.full(10, -2), np.zeros((2, 5), int)])
def test_bad_groups_are_refused_naming_groups(groups):
    with pytest.raises(ConfigurationError, match="groups"):
        EpochSampler(range(10), order="shards", seed=0, groups=groups)


def test_the_shards_order_needs_groups():
    with pytest.raises(ConfigurationError, match="groups"):
        EpochSampler(range(10), order="shards", seed=0)


def test_a_resume_draws_the_states_window_and_refuses_other_shards():
    groups = sharded(60, 5, unsharded_every=7)
    saved = EpochSampler(range(60), order="shards", seed=2, groups=groups, window=3)
    saved.set_epoch(1)
    whole = list(saved)
    state = saved.shard_state()
    assert state["window"] == 3
    resumed = EpochSampler(range(60), order="shards", seed=2, groups=groups, window=9)  # the state's window wins
    resumed.resume_at(epoch=1, position=20, order="shards", seed=2, shards=state)
    assert list(resumed) == whole[20:]
    regrouped = EpochSampler(range(60), order="shards", seed=2, groups=sharded(60, 6), window=3)
    with pytest.raises(ConfigurationError, match="other shards"):
        regrouped.resume_at(epoch=1, position=20, order="shards", seed=2, shards=state)
    unsharded = EpochSampler(range(60), order="random", seed=2)
    with pytest.raises(ConfigurationError, match="has none"):
        unsharded.resume_at(epoch=1, position=20, order="shards", seed=2, shards=state)


def test_int32_shard_numbers_are_held_as_they_are_and_play_the_int64_order(tmp_path):
    # A dataset's shard numbers are an int32 file every rank maps: a sampler must not copy them.
    groups = sharded(500, 7, unsharded_every=11)
    path = tmp_path / "shards.i32"
    groups.astype(np.int32).tofile(path)
    mapped = np.memmap(path, dtype=np.int32, mode="r")
    narrow = EpochSampler(range(500), order="shards", seed=4, groups=mapped, window=2)
    wide = EpochSampler(range(500), order="shards", seed=4, groups=groups.astype(np.int64), window=2)
    assert np.shares_memory(narrow.groups, mapped)
    for epoch in (0, 1):
        narrow.set_epoch(epoch)
        wide.set_epoch(epoch)
        assert list(narrow) == list(wide)
    # A state saved on one resumes on the other: the digest is of the numbers, not of their width.
    assert narrow.shard_state() == wide.shard_state()


def test_each_request_names_a_batch_half_a_window_ahead_whose_shards_come_next():
    # 40 shards of 32 items, windows of 4 shards (128 items, 16 batches of 8): the batch named ahead
    # is 8 batches later, so from the middle of each window the next window's shards are named.
    groups = sharded(40 * 32, 32)
    sampler = EpochSampler(range(len(groups)), order="shards", seed=3, groups=groups, window=4)
    requests = list(RequestSampler(sampler, 8, workers=2))
    assert [r.indices for r in requests[8:]] == [r.ahead_indices for r in requests[:-8]]
    assert all(not r.ahead_indices for r in requests[-8:])
    windows = [{int(groups[i]) for r in requests[w * 16 : w * 16 + 16] for i in r.indices} for w in range(10)]
    for w in range(9):  # the second half of window w names shards of window w + 1 only
        named = {int(groups[i]) for r in requests[w * 16 + 8 : w * 16 + 16] for i in r.ahead_indices}
        assert named and named <= windows[w + 1], f"window {w} named shards {named - windows[w + 1]} of no next window"
    two_ranks = EpochSampler(range(len(groups)), order="shards", seed=3, groups=groups, window=4, world_size=2)
    assert two_ranks.window_items() == 64 and sampler.window_items() == 128
    random = EpochSampler(range(len(groups)), order="random", seed=3)
    assert all(not r.ahead_indices for r in RequestSampler(random, 8, workers=2))
