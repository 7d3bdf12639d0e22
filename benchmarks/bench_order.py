"""How random the shard-aware epoch order is, and what it saves a node's shard cache, against a uniform
permutation, window by window.

    python benchmarks/bench_order.py                 # 1M items; prints a markdown table
    python benchmarks/bench_order.py --items 10000000

A synthetic dataset of ``--items`` images, ``--per-shard`` to a shard (256: 64 MiB shards of
256x256 RGB images) and ``--classes`` labels, written to shards in label order: the worst case for
a shard-aware order, since a shard then holds one or two labels. One node reads the whole epoch
(one rank, its workers sharing the node's cache; a node of R ranks among N reads each window's
items in the same stretch of the epoch, so its shard counts are the same), batch ``--batch``:

- shards/batch: distinct shards one batch's items come from (each worker loads whole batches);
- downloads/epoch for an LRU cache of C shards: shard downloads in one epoch as a multiple of
  the shard count (1.00: each shard once), C = 2 windows and 64 shards (4 GiB);
- |pos - uniform|: each item's mean position over ``--epochs`` epochs, as a fraction of the epoch,
  minus 1/2, averaged over items (a uniform permutation's is only noise: ~sqrt(1 / (6 pi E)));
- lag-1 corr: the autocorrelation of the shard number from one item of the order to the next;
- labels/batch, entropy: distinct labels and their Shannon entropy (bits) in a batch;
- draw s: seconds to draw one epoch's order (numpy; the uniform row is torch.randperm).
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch

from vl_datasets.loading.shard_order import shard_order


def lru_downloads(shards_in_order: np.ndarray, capacity: int) -> int:
    """Shard downloads of a node reading items of these shards in this order through an LRU cache."""
    runs = shards_in_order[np.r_[True, shards_in_order[1:] != shards_in_order[:-1]]]  # a hit on the same shard is free
    cache: OrderedDict[int, None] = OrderedDict()
    downloads = 0
    for shard in runs.tolist():
        if shard in cache:
            cache.move_to_end(shard)
            continue
        downloads += 1
        cache[shard] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return downloads


def batch_stats(values: np.ndarray, batch: int) -> tuple[float, float]:
    """Mean distinct values per batch, and mean Shannon entropy (bits) of the values in a batch."""
    whole = len(values) // batch * batch
    rows = np.sort(values[:whole].reshape(-1, batch), axis=1)
    starts = np.ones(rows.shape, bool)
    starts[:, 1:] = rows[:, 1:] != rows[:, :-1]
    distinct = starts.sum(axis=1)
    # run lengths of each row's sorted values: the counts of each value in the batch
    positions = np.flatnonzero(np.r_[starts.ravel(), True])
    counts = np.diff(positions)
    row_of = positions[:-1] // batch
    p = counts / batch
    entropy = np.bincount(row_of, weights=-p * np.log2(p), minlength=len(rows))
    return float(distinct.mean()), float(entropy.mean())


def position_bias(draw, n: int, epochs: int) -> float:
    """Mean over items of |mean position over ``epochs`` epochs / n - 1/2|."""
    total = np.zeros(n)
    for epoch in range(epochs):
        order = draw(epoch)
        positions = np.empty(n)
        positions[order] = np.arange(n)
        total += positions
    return float(np.abs(total / epochs / n - 0.5).mean())


def row(name: str, draw, groups: np.ndarray, labels: np.ndarray, args, window: int | None) -> str:
    started = time.perf_counter()
    order = draw(0)
    draw_s = time.perf_counter() - started
    shards = groups[order]
    per_batch, _ = batch_stats(shards, args.batch)
    label_count, entropy = batch_stats(labels[order], args.batch)
    shard_count = int(groups.max()) + 1
    caches = [2 * window if window else 16, 64]
    downloads = [lru_downloads(shards, c) / shard_count for c in caches]
    lag1 = float(np.corrcoef(shards[:-1], shards[1:])[0, 1])
    bias = position_bias(draw, len(groups), args.epochs)
    cache_text = f"{downloads[0]:.2f} (C={caches[0]})"
    return (
        f"| {name} | {per_batch:.1f} | {cache_text} | {downloads[1]:.2f} | {bias:.4f} | {lag1:.3f} "
        f"| {label_count:.1f} | {entropy:.2f} | {draw_s:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8, help="epochs averaged for |pos - uniform|")
    parser.add_argument("--windows", default="1,2,4,8,16,64")
    args = parser.parse_args()
    n = args.items
    groups = np.arange(n, dtype=np.int64) // args.per_shard
    labels = np.arange(n, dtype=np.int64) * args.classes // n  # written to shards in label order
    print(
        f"{n:,} items, {int(groups.max()) + 1:,} shards of {args.per_shard}, {args.classes} labels in shard order, "
        f"batch {args.batch}; |pos - uniform| over {args.epochs} epochs (the uniform row is its noise)\n"
    )
    print(
        "| order | shards/batch | downloads/epoch, C = 2 windows | downloads/epoch, C = 64 "
        "| \\|pos - uniform\\| | lag-1 corr | labels/batch | entropy, bits | draw s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def uniform(epoch: int) -> np.ndarray:
        return torch.randperm(n, generator=torch.Generator().manual_seed(epoch)).numpy()

    print(row("uniform (torch.randperm)", uniform, groups, labels, args, None))
    for window in (int(w) for w in args.windows.split(",")):

        def windowed(epoch: int, window: int = window) -> np.ndarray:
            return shard_order(groups, seed=0, epoch=epoch, window=window)

        print(row(f"shards, window {window}", windowed, groups, labels, args, window))


if __name__ == "__main__":
    main()
