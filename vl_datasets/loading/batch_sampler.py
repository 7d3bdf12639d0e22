"""The loader's batch sampler: each epoch's index batches as ``BatchRequest``s, across epochs.

``VLDataLoader`` passes a ``RequestSampler`` to ``DataLoader`` as its ``batch_sampler`` (public
API), around the per-epoch batches (a ``BatchSampler`` over the loader's sampler, or the caller's
own ``batch_sampler``). It owns three things a plain batch sampler does not:

- the stream of epochs: with persistent workers it runs from one epoch into the next forever, so
  workers prefetch into the next epoch while the caller finishes this one (the loader takes each
  epoch's batches from it); a ``DistributedSampler`` gets ``set_epoch`` as each epoch begins;
- the resume: the first epoch begins after its first ``skip_first`` batches (a state saved with a
  sampler of the caller's own, which is fast-forwarded by batch);
- the read-ahead hint: each request names the batch its worker loads next. torch dispatches batches
  round-robin (batch ``i`` to worker ``i % W``, in order), so that is batch ``i + W``; the dataset
  starts its reads while it decodes batch ``i`` (``VisualLayerDataset.load_batch``). In a
  shard-aware order it also names batch ``i + A``, A being half a shard window's batches, whose
  shards the dataset starts downloading: the next window's download while the epoch plays the
  second half of this one, where the next batch alone would start them one batch before they
  are needed.

It holds no reference to the loader: a cycle through the loader's iterator would keep workers
alive after the loader is dropped, to be shut down later by whichever process collects the cycle.

Around a batch sampler that records the indices of the batches drawn from it (Lightning's, when it
predicts: its prediction writers are given each batch's indices), the request sampler is one of its
class too (``request_sampler_for``), which is what Lightning looks for on a loader, and the loader
records into it the indices of the items of each batch it yields (``seen_batch_indices``). The
wrapped sampler's own record would be wrong here: workers draw batches ahead, into the next epoch
with persistent workers, where the record starts again, and items skipped for an unreadable image
are not in their batch.
"""

from __future__ import annotations

import collections
import functools
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from torch.utils.data import BatchSampler

from .batches import BatchRequest
from .sampler import enter_epoch


class RequestSampler:
    """``per_epoch``'s batches as ``BatchRequest``s, from epoch ``first_epoch`` (after its first
    ``skip_first`` batches): that epoch alone, or with ``endless`` every epoch after it too.

    ``workers`` is the loader's worker count, which places each worker's next batch. ``sampler``
    (the per-epoch sampler, if any) gets ``set_epoch`` when it is a ``DistributedSampler``, and, when
    it has ``window_items`` (a shard-aware order's ``EpochSampler``), places the batch ahead.

    Without ``per_epoch``, the batches are ``BatchSampler(sampler, batch_size, drop_last)``'s: it is
    built with torch's ``BatchSampler`` arguments too, as Lightning rebuilds a loader's batch sampler
    (to predict, with ``drop_last=False``, the rebuilt one wrapped to record the indices).
    """

    records_indices = False  # whether a loader fills its seen_batch_indices (see request_sampler_for)

    def __init__(
        self,
        sampler: Any,
        batch_size: int = 1,
        drop_last: bool = False,
        *,
        per_epoch: Iterable[Sequence[int]] | None = None,
        workers: int = 0,
        endless: bool = False,
    ) -> None:
        self.per_epoch = per_epoch if per_epoch is not None else BatchSampler(sampler, batch_size, drop_last)
        self.sampler = sampler
        self.distance = max(1, workers)
        self.endless = endless
        self.first_epoch = 0
        self.skip_first = 0

    def start_at(self, epoch: int, skip: int = 0) -> None:
        """Make the next iteration begin at ``epoch``, after its first ``skip`` batches."""
        self.first_epoch, self.skip_first = epoch, skip

    def __iter__(self) -> Iterator[BatchRequest]:
        return with_next(self._batches(), self.distance, self.ahead())

    def ahead(self) -> int:
        """How many batches later the batch whose shards download ahead is: half a shard window's
        (0: not a shard-aware order, or batches of no known size)."""
        window_items = getattr(self.sampler, "window_items", None)
        batch_size = getattr(self.per_epoch, "batch_size", None)
        if not callable(window_items) or not isinstance(batch_size, int) or batch_size < 1:
            return 0
        return window_items() // (2 * batch_size)

    def _batches(self) -> Iterator[Sequence[int]]:
        epochs: Iterable[int] = itertools.count(self.first_epoch) if self.endless else (self.first_epoch,)
        for epoch in epochs:
            enter_epoch(self.sampler, epoch)
            skip = self.skip_first if epoch == self.first_epoch else 0
            empty = True
            for batch in itertools.islice(iter(self.per_epoch), skip, None):
                empty = False
                yield batch
            if empty and epoch > self.first_epoch:
                # A whole epoch without a batch (drop_last, fewer items than a batch) has every later
                # one without: the stream ends, where it would spin forever waiting for a first batch.
                # (The first epoch may be a resumed one's empty rest, with whole epochs after it.)
                return

    def epoch_length(self) -> int:
        """Batches in a whole epoch."""
        return len(self.per_epoch)  # type: ignore[arg-type]  # the loader streams only sized samplers

    def __len__(self) -> int:
        # An epoch's batches: what len(loader) reports. Without the stream, an iteration is the
        # resumed epoch alone, after its skipped batches.
        return self.epoch_length() if self.endless else max(self.epoch_length() - self.skip_first, 0)

    def __getattr__(self, name: str) -> Any:
        # The per-epoch batch sampler's own attributes (``batch_size``, ``drop_last``) stay
        # reachable, for code that inspects a loader's batch sampler.
        if name == "per_epoch":
            raise AttributeError(name)
        return getattr(self.per_epoch, name)


# Where Lightning keeps the wrapper it puts around a batch sampler to predict (pytorch_lightning, or
# the lightning package's copy of it): looked up among the loaded modules, never imported, since
# Lightning wraps batch samplers only once it is loaded.
LIGHTNING_WRAPPERS = ("pytorch_lightning.overrides.distributed", "lightning.pytorch.overrides.distributed")


def request_sampler_for(per_epoch: Any) -> type[RequestSampler]:
    """The class of the request sampler around ``per_epoch``: ``RequestSampler``, or, when
    ``per_epoch`` is Lightning's predict wrapper, a ``RequestSampler`` of the wrapper's class too,
    whose ``seen_batch_indices`` the loader fills."""
    for module in LIGHTNING_WRAPPERS:
        wrapper = getattr(sys.modules.get(module), "_IndexBatchSamplerWrapper", None)
        if isinstance(wrapper, type) and isinstance(per_epoch, wrapper):
            return _recording(wrapper)
    return RequestSampler


@functools.cache
def _recording(wrapper: type) -> type[RequestSampler]:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        RequestSampler.__init__(self, *args, **kwargs)  # not the wrapper's: the batches are per_epoch's
        self.seen_batch_indices = []  # each batch the loader yielded this epoch: its items' indices

    namespace = {"__init__": __init__, "records_indices": True}
    return type(f"Recording{RequestSampler.__name__}", (RequestSampler, wrapper), namespace)


def with_next(batches: Iterable[Sequence[int]], distance: int, ahead: int = 0) -> Iterator[BatchRequest]:
    """Each of ``batches`` as a request naming the batch ``distance`` places later and, with
    ``ahead``, the one ``ahead`` places later (neither past the end)."""
    window: collections.deque[tuple[int, ...]] = collections.deque()
    horizon = max(distance, ahead)
    for batch in batches:
        window.append(tuple(batch))
        if len(window) > horizon:
            yield _request(window, distance, ahead)
            window.popleft()
    while window:
        yield _request(window, distance, ahead)
        window.popleft()


def _request(window: collections.deque[tuple[int, ...]], distance: int, ahead: int) -> BatchRequest:
    """The request for ``window[0]``, the batches after it being the rest of ``window``."""
    later = window[distance] if distance < len(window) else ()
    further = window[ahead] if 0 < ahead < len(window) else ()
    return BatchRequest(window[0], later, further)
