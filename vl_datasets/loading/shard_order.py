"""A shard-aware epoch order: shards visited in a shuffled order, the items of a few shards at a time
shuffled together, as Mosaic streaming and litData deal the items of a sharded store.

``shard_order(groups, seed=, epoch=, window=)`` is one epoch's order of the items whose shard
numbers ``groups`` gives (in dataset order; -1 for an item in no shard). The shards present are
put in an order drawn from the seed and the epoch, cut into windows of ``window`` consecutive
shards, and the windows are played one after another, the items of each window in a uniformly
shuffled order. So the items of a shard come close together (all within ``window`` shards' worth
of items), a node reads each shard in one stretch of the epoch, and a cache of about two windows'
shards downloads each shard once per epoch.

Items in no shard (-1, read one by one from their originals or the node-local store) are spread
uniformly over the whole order rather than played as one more group: grouping them buys no
locality (each is its own request anyway), while a block of them would concentrate their slower
reads in one stretch of the epoch and skew what a batch holds. With no shard at all, the order is
a uniform permutation.

It is a pure function of (seed, epoch, groups, window), drawn with numpy's PCG64 from a
``SeedSequence`` of the three, holding a few int64 arrays of the dataset's length (no Python loop
per item: about twice a ``torch.randperm`` of the same length). ``benchmarks/bench_order.py``
measures how random it is.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import ConfigurationError

DEFAULT_WINDOW = 8  # shards shuffled together: 8 x ~256 images = 32 batches of 64 (see the README)
MAX_WINDOW = 1 << 20
_STREAM = 0x5A4D  # a fixed word in the seed sequence, so these draws differ from any other of the seed


def shard_order(groups: np.ndarray, *, seed: int, epoch: int, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """The epoch's order (int64 indices of every item) for items in shards ``groups``; see the module."""
    window = checked_window(window)
    groups = np.asarray(groups)
    n = len(groups)
    rng = np.random.default_rng([seed % (1 << 64), epoch, _STREAM])
    in_shard = np.flatnonzero(groups >= 0)
    order = np.empty(n, np.int64)
    sharded = _windowed(in_shard, groups[in_shard], window, rng)
    if len(sharded) == n:
        order[:] = sharded
        return order
    spread = np.zeros(n, bool)
    spread[rng.choice(n, size=n - len(sharded), replace=False)] = True
    order[spread] = rng.permutation(np.flatnonzero(groups < 0))
    order[~spread] = sharded
    return order


def _windowed(items: np.ndarray, shards: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """``items`` (of shard numbers ``shards``) window by window, each window's items shuffled."""
    if len(items) == 0:
        return items.astype(np.int64)
    dense, count = _dense(shards)
    visit = rng.permutation(count)  # the shards' order: visit[k] is the k-th shard played
    window_of = np.empty(count, np.int64)
    window_of[visit] = np.arange(count) // window
    largest = (count - 1) // window
    item_window = window_of[dense].astype(np.uint16 if largest < 1 << 16 else np.int64)  # gathered small
    shuffled = rng.permutation(len(items))
    # A stable sort by window keeps the uniform shuffle within each window.
    return items[shuffled[_stable_argsort(item_window[shuffled], largest)]]


def _dense(shards: np.ndarray) -> tuple[np.ndarray, int]:
    """Each shard number as 0 .. count-1 (in the numbers' order), and the count of distinct ones."""
    top = int(shards.max()) + 1
    if top > 4 * len(shards) + (1 << 20):  # sparse numbers: a table as long as the largest would not pay
        numbers, dense = np.unique(shards, return_inverse=True)
        return dense, len(numbers)
    present = np.bincount(shards, minlength=top) > 0
    return (np.cumsum(present) - 1)[shards], int(present.sum())


def _stable_argsort(keys: np.ndarray, largest: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")``, as radix sorts of 16-bit digits: numpy's stable sort of
    an int64 array is a merge sort, ~6x slower than its radix sort of 16-bit keys at 10M items."""
    if largest >= 1 << 32:
        return np.argsort(keys, kind="stable")
    at = np.argsort(keys.astype(np.uint16, copy=False), kind="stable")  # the low digit (the whole key if small)
    if largest >= 1 << 16:
        at = at[np.argsort((keys[at] >> 16).astype(np.uint16), kind="stable")]
    return at


def checked_window(window: object) -> int:
    """``window`` as a count of shards, or a ``ConfigurationError`` naming ``shard_window``."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 1 <= window <= MAX_WINDOW:
        raise ConfigurationError(f"shard_window must be an integer from 1 to {MAX_WINDOW:,} shards, got {window!r}.")
    return int(window)


def checked_groups(groups: object, size: int) -> np.ndarray:
    """``groups`` as an int32 or int64 array of one shard number per item (-1: in no shard), or a
    ``ConfigurationError`` naming ``groups``. Int32 numbers stay as they are: a dataset's are a
    file mapped by every rank, which a copy to int64 would double in each rank's own memory."""
    array = np.asarray(groups)
    if array.ndim != 1 or len(array) != size or not (array.dtype.kind in "iu" or size == 0):
        raise ConfigurationError(
            f"groups must be one integer shard number per item ({size:,}), got an array of shape "
            f"{array.shape} and dtype {array.dtype}."
        )
    if array.dtype not in (np.int32, np.int64):
        array = array.astype(np.int64)
    if size and array.min() < -1:
        raise ConfigurationError(f"groups holds {int(array.min())}: shard numbers are 0 and up, or -1 for none.")
    return array


def groups_digest(groups: np.ndarray) -> str:
    """A short digest of the shard numbers, so a state saved on one sharding is not resumed on another."""
    return hashlib.blake2b(np.ascontiguousarray(groups, np.int64).tobytes(), digest_size=12).hexdigest()
