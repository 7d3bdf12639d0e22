"""Read-ahead hints from the batch sampler to the dataset: each batch names the batch its worker loads next.

A DataLoader hands each worker whole batches, and ``VisualLayerDataset.__getitems__`` starts every
read of a batch at once; but the reads of the *next* batch could start while this one decodes,
which is what hides the storage's latency entirely. Only the sampler knows that batch. With
``W`` workers, torch dispatches batches round-robin (batch ``i`` to worker ``i % W``, in order),
so the batch a worker loads after batch ``i`` is batch ``i + W``.

``Lookahead(batch_sampler, workers)`` yields the same batches as ``batch_sampler``, each a
``BatchWithNext``: a list of the same indices that also carries ``next_indices``. It pickles with
them, through the worker's index queue, and ``__getitems__`` starts their reads ahead
(``VisualLayerDataset.prefetch``). Any other dataset ignores the attribute: a ``BatchWithNext`` is
a list. The endless stream of a loader with persistent workers can be wrapped as a whole, so the
hint crosses epoch boundaries too.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence


class BatchWithNext(list):
    """A batch of dataset indices, and the indices of the batch its worker loads next (None: none)."""

    next_indices: list[int] | None = None

    def __init__(self, indices: Iterable[int], next_indices: Sequence[int] | None = None) -> None:
        super().__init__(indices)
        self.next_indices = None if next_indices is None else list(next_indices)


class Lookahead:
    """``batches`` (a batch sampler, or any iterable of index lists), each batch carrying the one
    ``workers`` places later: with 0 or 1 worker the next batch, else the next one of its worker."""

    def __init__(self, batches: Iterable[Sequence[int]], workers: int) -> None:
        self.batches = batches
        self.distance = max(1, workers)

    def __iter__(self) -> Iterator[BatchWithNext]:
        window: collections.deque[Sequence[int]] = collections.deque()
        for batch in self.batches:
            window.append(batch)
            if len(window) > self.distance:
                yield BatchWithNext(window.popleft(), batch)
        while window:
            yield BatchWithNext(window.popleft())

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]  # as the wrapped sampler, when it has one

    def __getattr__(self, name: str):
        # The wrapped sampler's own attributes (``sampler``, ``batch_size``, an epoch stream's
        # ``first_epoch``) stay reachable, for code that inspects the loader's batch sampler.
        if name == "batches":
            raise AttributeError(name)
        return getattr(self.batches, name)
