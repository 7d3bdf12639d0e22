"""DataLoaders with the defaults a VisualLayerDataset wants, on one process or many ranks.

- Workers are persistent (no re-fork and re-import each epoch) and run one intra-op thread each,
  so two workers on two cores do not fight over OpenMP threads.
- With workers, prefetching runs across epoch boundaries: the workers see one endless stream of
  epochs (the loader's batch sampler, ``vl_datasets.loading.batch_sampler``, passed to
  ``DataLoader`` as ``batch_sampler``), and each ``iter(loader)`` takes the next epoch's batches
  from it. A plain DataLoader
  stops prefetching at the end of an epoch, so while the last batch is decoded the other
  workers idle, and the next epoch starts with an empty pipeline. Batches and their order are
  the same as without the stream; an epoch left unfinished (``break``) drops what was prefetched
  after it, as a plain DataLoader does, so the next epoch still starts cleanly.
- Image batches come from the workers through shared-memory slots allocated once and lent to
  the caller until the batch is garbage, instead of a new shared-memory file per batch
  (``vl_datasets.batch_slots``): on 2 cores that is ~9% more images per second at 224 px.
- Under ``torch.distributed`` every rank gets an equal, disjoint shard, reshuffled every epoch
  without the caller having to call ``set_epoch``.
- With ``on_error="skip"`` unreadable images are dropped from their batch and reported when the
  epoch ends.
- ``state_dict()`` / ``load_state_dict()`` as torchdata's ``StatefulDataLoader`` names them: the
  state after the batches yielded so far, loaded before the next ``iter(loader)``, which then
  yields exactly the rest of the interrupted epoch, on any number of ranks and workers (see
  ``vl_datasets.loading.state`` and ``vl_datasets.loading.sampler``).
- The loader asks the dataset for each batch with a ``BatchRequest`` and the dataset answers with
  a ``LoadedBatch`` (``vl_datasets.loading.batches``); an error of ours raised in a worker comes
  back in it and reaches the main process with its fields (``vl_datasets.loading.worker_errors``).
  Nothing in torch's DataLoader is overridden but ``__iter__`` and ``__len__``'s inputs: it is
  given a batch sampler and a collate, through its public arguments.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from ..config import usable_cores
from ..errors import ConfigurationError
from .batch_sampler import RequestSampler, request_sampler_for
from .batch_slots import BatchSlots, SlotBatch
from .batches import BatchLayout, LoadedBatch, SkippedSample, batch_layout
from .sampler import EpochSampler, enter_epoch, epoch_sampler
from .state import STATE_FORMAT, check_state, dataset_identity
from .worker_errors import raise_in_main

logger = logging.getLogger("vl_datasets")


def stack_images(images: list) -> torch.Tensor:
    """Stack same-size CHW images into an NCHW batch.

    Decoded images are views of HWC pixels (channels-last memory). ``torch.stack`` would
    transpose each into a contiguous NCHW batch, ~150 us per 224x224 image; copying them into a
    channels-last batch is a plain memcpy, ~25 us. The batch has the usual NCHW shape in
    channels-last memory, the layout PyTorch's CPU convolutions prefer; ``.contiguous()`` gives
    the classic layout. In a worker the batch is allocated in shared memory, as default_collate
    does, so it reaches the main process without another copy.
    """
    first = images[0]
    channels_last = (
        isinstance(first, torch.Tensor)
        and first.dim() == 3
        and first.stride(0) == 1
        and all(isinstance(i, torch.Tensor) and i.shape == first.shape and i.dtype == first.dtype for i in images)
    )
    if not channels_last:
        return default_collate(images)
    c, h, w = first.shape
    if get_worker_info() is not None:
        storage = first._typed_storage()._new_shared(len(images) * first.numel(), device=first.device)
        batch = first.new(storage).resize_(len(images), h, w, c)
    else:
        batch = first.new_empty((len(images), h, w, c))
    for slot, image in zip(batch, images):
        slot.copy_(image.permute(1, 2, 0))
    return batch.permute(0, 3, 1, 2)


class CollatedBatch(NamedTuple):
    """What a worker sends for a batch: the collated samples, the items skipped from it, the
    error of ours that loading it raised (then with no data), and the dataset indices of the
    samples (None: the dataset did not say); the loader unwraps it."""

    data: Any
    skipped: list[SkippedSample]
    error: LoadedBatch | None = None
    indices: tuple[int, ...] | None = None


def loaded(batch: LoadedBatch | list) -> LoadedBatch:
    """A dataset's answer as a ``LoadedBatch``: a dataset of another kind returns a plain list
    of samples, in which ``SkippedSample``s may stand."""
    if isinstance(batch, LoadedBatch):
        return batch
    kept = [s for s in batch if not isinstance(s, SkippedSample)]
    return LoadedBatch(kept, [s for s in batch if isinstance(s, SkippedSample)])


class TaskCollate:
    """Collate for a task: images stacked (see ``stack_images``; through ``slots`` when there are
    some: a ``SlotBatch``, the loader's own wire format, then stands for them), targets by torch's
    default collate, or kept as a list (detection dicts, metadata rows), in which case images of
    different sizes stay a list too."""

    def __init__(self, targets_as_list: bool, slots: BatchSlots | None = None) -> None:
        self.targets_as_list = targets_as_list
        self.slots = slots

    def __call__(self, batch: LoadedBatch | list) -> CollatedBatch:
        batch = loaded(batch)
        if batch.error is not None or not batch.samples:
            return CollatedBatch(None, batch.skipped, batch if batch.error is not None else None)
        images = [image for image, _ in batch.samples]
        targets = [target for _, target in batch.samples]
        stacked: SlotBatch | torch.Tensor | list | None = self.slots.put(images) if self.slots is not None else None
        if stacked is None:
            same_size = all(isinstance(i, torch.Tensor) and i.shape == images[0].shape for i in images)
            stacked = stack_images(images) if same_size or not self.targets_as_list else images
        data = (stacked, targets if self.targets_as_list else default_collate(targets))
        return CollatedBatch(data, batch.skipped, indices=batch.indices)


class CallerCollate:
    """The caller's own ``collate_fn``, given the batch's samples as a list, as torch gives them;
    skipped items and errors of ours go to the loader around it."""

    def __init__(self, collate_fn: Callable[[list], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, batch: LoadedBatch | list) -> CollatedBatch:
        batch = loaded(batch)
        if batch.error is not None or not batch.samples:
            return CollatedBatch(None, batch.skipped, batch if batch.error is not None else None)
        return CollatedBatch(self.collate_fn(batch.samples), batch.skipped, indices=batch.indices)


class VLDataLoader(DataLoader):
    """A DataLoader that prefetches across epochs, reshuffles its distributed shard each epoch,
    reports skipped samples, and resumes part-way through an epoch.

    It drives ``DataLoader`` through its public arguments alone: a batch sampler of its own
    (``RequestSampler``, which asks the dataset for each batch with a ``BatchRequest``) and a
    collate; its own ``__iter__`` keeps the epoch and resume bookkeeping.

    ``epoch`` counts the epochs begun; ``skipped`` lists the samples left out during the last epoch.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Any = None,
        batch_sampler: Any = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        """``DataLoader``'s arguments, with the same meaning; ``kwargs`` are its keyword-only ones."""
        if kwargs.get("in_order", True) is not True:
            raise ConfigurationError(
                "in_order=False yields batches as workers finish them, out of the order a state_dict counts: a "
                "resume would repeat some items and lose others. The loader keeps order (its reads run ahead)."
            )
        if batch_size is not None:  # None: torch's unbatched loading
            _check_batch_size(batch_size)
        self._skip_batches = 0  # the resumed epoch's batches to skip, with a sampler of the caller's own
        options = {"num_workers": num_workers, "pin_memory": pin_memory, **kwargs}
        if isinstance(dataset, IterableDataset) or (batch_size is None and batch_sampler is None):
            # No batches of indices to ask for: torch's own way, epoch bookkeeping aside.
            self._requests: RequestSampler | None = None
            super().__init__(
                dataset,
                batch_size,
                shuffle,
                sampler,
                batch_sampler,
                collate_fn=collate_fn,
                drop_last=drop_last,
                **options,
            )
        else:
            self._init_with_requests(
                dataset, batch_size, shuffle, sampler, batch_sampler, collate_fn, drop_last, options
            )
        self.epoch = 0
        self.skipped: list[SkippedSample] = []
        self._stream: Iterator[Any] | None = None  # the workers' endless iterator, once started
        self._epoch_unfinished = False
        # Where the epoch in progress stands, for state_dict: batches taken from the index sampler
        # (the last one yielded included, and any that every image was skipped from), batches
        # yielded, and the samples skipped so far.
        self._finished = True  # no epoch in progress: the last one ended, or none began
        self._taken = 0
        self._yielded = 0
        self._skipped: list[SkippedSample] = []
        self._pending: dict[str, Any] | None = None  # a loaded state, for the next iter
        self._iterations = 0  # epochs begun on the stream: an iterator of an earlier one ends
        self._epoch_batches_count: int | None = None  # batches the epoch in progress takes (None: unknown)
        self._reported = True  # whether the epoch in progress has reported its skipped samples

    def _init_with_requests(
        self, dataset, batch_size, shuffle, sampler, batch_sampler, collate_fn, drop_last, options: dict[str, Any]
    ) -> None:
        """DataLoader given our batch sampler (``RequestSampler``) around the per-epoch batches the
        arguments describe, and a collate that unwraps the dataset's ``LoadedBatch``."""
        sampler, per_epoch, batch_size = _per_epoch(
            dataset, batch_size, shuffle, sampler, batch_sampler, drop_last, options.get("generator")
        )
        workers = options["num_workers"]
        streams = workers > 0 and options.get("persistent_workers", False)
        self._requests = request_sampler_for(per_epoch)(
            sampler, per_epoch=per_epoch, workers=workers, endless=bool(streams) and hasattr(per_epoch, "__len__")
        )
        if not isinstance(collate_fn, TaskCollate):
            collate_fn = CallerCollate(collate_fn or default_collate)
        # Its batches are BatchRequests, sequences of indices: torch's types say lists.
        super().__init__(dataset, batch_sampler=self._requests, collate_fn=collate_fn, **options)  # type: ignore[arg-type]
        # DataLoader shows a loader given a batch_sampler as unbatched, with a sequential sampler:
        # show the one the caller built (state_dict and resumes read these too). DataLoader's
        # __setattr__ refuses these names once it is built, against changing a running loader;
        # this is still its construction.
        for name, value in (("sampler", sampler), ("batch_size", batch_size), ("drop_last", drop_last)):
            object.__setattr__(self, name, value)

    def _unpacked(self, data: Any) -> Any:
        """A batch as the caller gets it: a task collate's images from their shared-memory slot."""
        if not isinstance(self.collate_fn, TaskCollate):
            return data
        images, targets = data
        if isinstance(images, SlotBatch):  # only a TaskCollate with slots sends one
            assert self.collate_fn.slots is not None
            images = self.collate_fn.slots.take(images)
        return images, targets

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the loader stands, after the batches it has yielded so far: a small dict of plain
        values (see ``vl_datasets.loading.state``) for ``load_state_dict`` in a later run.

        Every rank's state holds the same epoch and global position: any one of them resumes every
        rank, at any world size. Only ``skipped`` is the rank's own.
        """
        if self._pending is not None:
            return dict(self._pending)  # loaded, not yet iterated: still the loaded one
        epoch = self.epoch if self._finished else self.epoch - 1
        position = 0 if self._finished else self._position(epoch)
        rank, world_size = _rank_of(self.sampler)
        own = self.sampler if isinstance(self.sampler, EpochSampler) else None
        return {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "position": position,
            "batches_yielded": 0 if self._finished else self._yielded,
            "order": own.order if own is not None else "custom",
            "seed": own.seed if own is not None else None,
            "random_state": own.random_state(epoch) if own is not None else None,
            "shards": own.shard_state() if own is not None else None,
            "world_size": world_size,
            "rank": rank,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "dataset": dataset_identity(self.dataset),
            "skipped": [] if self._finished else [list(s) for s in self._skipped],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``'s state: the next ``iter(loader)`` yields exactly the rest of
        its epoch, and the epochs after it as they would have come. ``{}`` leaves the loader as it is.

        Raises ``DatasetMismatchError`` when the state was saved on other items than this dataset's,
        and ``ConfigurationError`` when it is not a loader state.
        """
        if state == {}:
            return
        check_state(state, self.dataset)
        if (state["order"] == "custom") == isinstance(self.sampler, EpochSampler):
            raise ConfigurationError(
                "This loader state and this loader disagree on the sampler: one uses a sampler of the "
                "caller's own (sampler= or batch_sampler=), the other the loader's. Build both the same way."
            )
        if isinstance(self.sampler, EpochSampler):
            self.sampler.check_shards(state["order"], state.get("shards"))
            self.sampler.check_random_state(state["seed"], state["random_state"])
        else:
            self._check_same_batches(state)
        self._pending = dict(state)
        self.epoch = state["epoch"]

    def _check_same_batches(self, state: dict[str, Any]) -> None:
        """With a sampler of the caller's own, a state's position counts this rank's batches: at
        another batch size, drop_last or world size it would fall on other items (seen twice, or
        never). The loader's own order counts items, and resumes at any of them."""
        _, world_size = _rank_of(self.sampler)
        saved = (state["batch_size"], state["drop_last"], state["world_size"])
        if saved != (self.batch_size, self.drop_last, world_size):
            raise ConfigurationError(
                "This loader state counts batches of a sampler of the caller's own, made with batch_size="
                f"{saved[0]}, drop_last={saved[1]} on {saved[2]} rank(s); this loader's are batch_size="
                f"{self.batch_size}, drop_last={self.drop_last} on {world_size}: its position would fall on "
                "other items. Resume with the same three (the loader's own order resumes at any)."
            )

    def _position(self, epoch: int) -> int:
        """How far the epoch in progress is: items of its global order done by all ranks together,
        or with a sampler of the caller's own, index batches done by this rank."""
        if isinstance(self.sampler, EpochSampler):
            if self.drop_last and self._taken >= self._batches_in(epoch):
                # Its last batch taken, the epoch is done: the items drop_last left are no rest,
                # which at another batch size or world size would make a batch more.
                return self.sampler.size
            return self.sampler.position_after(epoch, self._taken * (self.batch_size or 1))
        return self._skip_batches + self._taken

    def _resume(self, state: dict[str, Any]) -> None:
        """Make the next epoch begun the state's, from its position."""
        epoch = state["epoch"]
        if isinstance(self.sampler, EpochSampler):
            self.sampler.resume_at(
                epoch=epoch,
                position=state["position"],
                order=state["order"],
                seed=state["seed"],
                random_state=state["random_state"],
                shards=state.get("shards"),
            )
        else:
            self._skip_batches = state["position"]
        self.epoch = epoch
        self._yielded = state["batches_yielded"]
        rank, _ = _rank_of(self.sampler)
        # A rank's skipped samples are its own: another rank's state resumes the order, not them.
        self._skipped = [SkippedSample(*s) for s in state["skipped"]] if state["rank"] == rank else []

    def _batches_in(self, epoch: int) -> int:
        """How many batches ``epoch`` has on this rank, from its start (a resume's position included)."""
        if isinstance(self.sampler, EpochSampler) and self.batch_size:
            items = self.sampler.rank_length(epoch)
            return items // self.batch_size if self.drop_last else math.ceil(items / self.batch_size)
        assert self._requests is not None  # only a loader that asks for batches streams them
        return max(self._requests.epoch_length() - self._skip_batches, 0)

    # -- epochs ----------------------------------------------------------------------------------

    def end_epoch(self) -> None:
        """End the epoch in progress after the batches yielded so far, its rest left untaken (a
        trainer's limit of batches an epoch): ``state_dict()`` then names the next epoch's start, as
        after an epoch's last batch, and the next ``iter(loader)`` begins it. That epoch's iterator
        is done with: drop it. Without this, a state saved at the limit would resume to the rest."""
        if self._finished:
            return
        self._finished = True
        self.skipped = self._skipped

    def _begin_epoch(self) -> tuple[int, bool]:
        """Count an epoch begun: the loaded state's, the one a caller's ``set_epoch`` asked for, or the
        next. Returns it, and whether it is another than the stream runs on into (resumed or asked)."""
        state, self._pending = self._pending, None
        # Taken either way: a loaded state names its own epoch, and an ask left for later would
        # send the epoch after the resumed one back to the resumed one's number.
        asked = self.sampler.take_asked_epoch() if isinstance(self.sampler, EpochSampler) else None
        jumped = state is not None or (asked is not None and asked != self.epoch)
        if state is not None:
            self._resume(state)
        else:
            if asked is not None:  # the caller's set_epoch on loader.sampler, as with a DistributedSampler
                self.epoch = asked
            self._skip_batches = 0
            self._yielded = 0
            self._skipped = []
        epoch = self.epoch
        self.epoch += 1
        self._taken = 0
        self._finished = False
        self._reported = False
        return epoch, jumped

    def _epoch_batches(self):
        """This epoch's collated batches, from the endless stream when workers prefetch across epochs."""
        epoch, jumped = self._begin_epoch()
        sized = self._requests is not None and hasattr(self._requests.per_epoch, "__len__")
        count = self._epoch_batches_count = self._batches_in(epoch) if sized else None
        if self._requests is None:
            enter_epoch(self.sampler, epoch)
            yield from super().__iter__()
            return
        if not self._requests.endless:
            self._requests.start_at(epoch, self._skip_batches)  # an iteration is this epoch alone
            yield from super().__iter__()
            return
        if self._stream is None or self._epoch_unfinished or jumped:
            # First epoch, the last one was left unfinished, or a state was loaded or set_epoch named
            # another epoch than the one the stream prefetched: (re)start the stream here.
            # DataLoader.__iter__ resets its persistent workers, dropping what they prefetched.
            self._requests.start_at(epoch, self._skip_batches)
            self._stream = super().__iter__()
        self._epoch_unfinished = True
        self._iterations += 1
        this = self._iterations
        assert count is not None  # the stream runs only over a sized batch sampler
        for _ in range(count):
            if self._iterations != this:
                # An iterator of an earlier epoch, used after a later one began: it would take that
                # epoch's batches from the one stream they share.
                logger.warning("An iterator of epoch %d was used after a later iter(loader): it ends here.", epoch)
                return
            yield next(self._stream)
        self._epoch_unfinished = False

    def __iter__(self):
        recorded: list[list[int]] | None = None
        if self._requests is not None and self._requests.records_indices:
            # Lightning reads the list again at each batch: a new one each epoch, filled as batches are yielded.
            recorded = self._requests.seen_batch_indices = []  # type: ignore[attr-defined]
        for batch in self._epoch_batches():
            if not isinstance(batch, CollatedBatch):  # torch's own way (see __init__)
                self._taken += 1
                self._yielded += 1
                yield batch
                continue
            if batch.error is not None:
                failed, batch = batch.error, None
                try:
                    raise_in_main(failed, from_worker=self.num_workers > 0)
                finally:
                    # No cycle from the error back through this frame: the workers shut down when the
                    # caller lets go of the error, not at some later garbage collection, where torch's
                    # shutdown finds its queues collected and waits 5 s for each worker.
                    del failed
            self._taken += 1
            self._skipped.extend(batch.skipped)
            if batch.data is None:
                continue
            self._yielded += 1
            if recorded is not None:
                recorded.append(list(batch.indices or ()))  # () where the dataset did not say
            if self._taken == self._epoch_batches_count:
                # The epoch's last batch: a caller that counts its batches (Lightning's loops) asks
                # for none after it, so what the epoch skipped is reported now, not at its end.
                self._report_skipped()
            yield self._unpacked(batch.data)
        self._finished = True
        self._report_skipped()

    def _report_skipped(self) -> None:
        """``skipped`` set to the epoch's skipped samples, and a warning naming them: once an epoch."""
        if self._reported:
            return
        self._reported = True
        self.skipped = skipped = self._skipped
        if skipped:
            shown = ", ".join(s.media_id for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            logger.warning(
                "Epoch %d skipped %d unreadable images (media ids: %s); see loader.skipped",
                self.epoch,
                len(skipped),
                shown,
            )


def _per_epoch(
    dataset, batch_size, shuffle, sampler, batch_sampler, drop_last, generator
) -> tuple[Any, Any, int | None]:
    """(sampler, per-epoch batch sampler, batch size) as DataLoader builds them from its arguments,
    with its checks: the caller's batch_sampler, or a BatchSampler over the caller's sampler or
    the one ``shuffle`` picks."""
    if batch_sampler is not None:
        if batch_size != 1 or shuffle or sampler is not None or drop_last:
            raise ValueError(
                "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last"
            )
        return SequentialSampler(dataset), batch_sampler, None
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    elif shuffle:
        raise ValueError("sampler option is mutually exclusive with shuffle")
    return sampler, BatchSampler(sampler, batch_size, drop_last), batch_size


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}.")


def _rank_of(sampler) -> tuple[int, int]:
    """(rank, world size) of a sampler: a DistributedSampler's, else (0, 1)."""
    if isinstance(sampler, DistributedSampler):
        return sampler.rank, sampler.num_replicas
    return 0, 1


def make_dataloader(
    dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    num_workers: int | None = None,
    seed: int | None = None,
    drop_last: bool = False,
    order: str | None = None,
    shard_window: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    **kwargs: Any,
) -> VLDataLoader:
    """Build the DataLoader; ``kwargs`` go to ``torch.utils.data.DataLoader`` and win over defaults.
    ``order`` and ``shard_window``: see ``vl_datasets.loading.sampler.epoch_sampler``. ``rank`` and
    ``world_size``: this process's share where ``torch.distributed`` does not say it (see ``given_ranks``)."""
    _check_batch_size(batch_size)  # here, not at the first batch: None would be torch's unbatched loading
    ranks = given_ranks(rank, world_size)
    if num_workers is None:
        num_workers = min(usable_cores(), 8)
    base_seed = seed if seed is not None else torch.initial_seed() % 2**63
    # The epochs' order comes from the seed and the epoch alone (see EpochSampler), never from
    # ``generator``: DataLoader draws its workers' base seed from that each time it starts an
    # iterator (every epoch with 0 workers, once with persistent ones), which would otherwise make
    # the order depend on num_workers.
    generator = torch.Generator().manual_seed((base_seed + 1) % 2**63)
    sampler = epoch_sampler(
        dataset,
        shuffle=shuffle,
        seed=seed,
        base_seed=base_seed,
        drop_last=drop_last,
        order=order,
        shard_window=shard_window,
        ranks=ranks,
    )
    layout = batch_layout(dataset)
    collate = TaskCollate(targets_as_list=layout.targets_as_list)
    options: dict[str, Any] = {
        "batch_size": batch_size,
        "sampler": sampler,
        "num_workers": num_workers,
        "drop_last": drop_last,
        "collate_fn": collate,
        "persistent_workers": num_workers > 0,
        "generator": generator,
        "worker_init_fn": WorkerInit() if num_workers > 0 else None,  # a caller's own runs instead
    }
    options.update(kwargs)
    if options["collate_fn"] is collate:
        collate.slots = _batch_slots(layout, options)
    return VLDataLoader(dataset, **options)


def given_ranks(rank: int | None, world_size: int | None) -> tuple[int, int] | None:
    """(rank, world size) a caller gives for a job that ``torch.distributed`` does not run (a
    multi-host JAX job: ``jax.process_index()``, ``jax.process_count()``); None when it gives neither.
    Given, they win over ``torch.distributed``'s: the caller knows which processes share the data."""
    if rank is None and world_size is None:
        return None
    if rank is None or world_size is None:
        raise ConfigurationError("rank and world_size go together: give both, or neither for torch.distributed's.")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an integer, got {value!r}.")
    if not 0 <= rank < world_size:
        raise ConfigurationError(f"rank must be in [0, world_size), got rank={rank} of world_size={world_size}.")
    return rank, world_size


class WorkerInit:
    """The loader's default ``worker_init_fn``: one intra-op thread per worker, so two workers on
    two cores do not fight over OpenMP threads."""

    def __call__(self, worker_id: int) -> None:
        torch.set_num_threads(1)


def _batch_slots(layout: BatchLayout, options: dict) -> BatchSlots | None:
    """Reused shared-memory slots for the batches, when persistent workers send them and every
    image is known to come out as uint8 3 x H x W (the dataset's layout says so: a fixed
    ``image_size``, no transform, tensor decoding). Persistent workers only: when an unfinished
    epoch resets them, DataLoader reads and drops what they prefetched, which frees those slots;
    workers shut down mid-epoch would leave their batches unread and their slots taken."""
    if (
        not options["num_workers"]
        or not options["persistent_workers"]
        or not options["batch_size"]
        or options.get("pin_memory")
        or layout.image_shape is None
    ):
        return None
    context = options.get("multiprocessing_context")
    if isinstance(context, str):
        context = multiprocessing.get_context(context)
    # A slot for every batch sent to a worker and not yet yielded, and a few for batches the caller holds.
    slots = options["num_workers"] * (options.get("prefetch_factor") or 2) + 4
    return BatchSlots(slots, options["batch_size"], layout.image_shape, context)
