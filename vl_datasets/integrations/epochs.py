"""``WholeEpochs``: a vl_datasets loader for trainers that take exactly ``len(loader)`` batches an
epoch and count the epochs themselves (transformers' ``Trainer``, Lightning).

Such a trainer never asks for the batch after an epoch's last, so the loader would not learn that
the epoch ended: its workers would be restarted for the next one instead of going on into it, and
a state saved after the last batch would resume to the epoch's empty rest, which the trainer would
count as one more epoch. Here the epoch ends in the loader as soon as its last batch is taken.

Such a trainer also takes ``len()`` as the batches of every epoch, the resumed one included (it
counts that one's batches from its own checkpoint). A loader with a state loaded gives the length
of the resumed epoch's rest, so ``len()`` here is the loader's as it was built.

A trainer told to take fewer batches an epoch (Lightning's ``limit_train_batches``) leaves each
epoch's rest untaken and begins the next epoch: given that limit, the epoch ends in the loader as
its limit's last batch is taken, so a state saved then resumes to the next epoch, not to the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

_END = object()


class WholeEpochs:
    """``loader``'s batches (through ``convert`` when given), each epoch ended as its last batch is
    taken, or with ``limit`` its ``limit``-th. ``state_dict()`` is the loader's state after the last
    batch yielded; after ``load_state_dict`` of a state saved at an epoch's end, iteration goes on
    with the next epoch. ``loader`` must have no state loaded yet: ``len()`` is its whole epoch's
    (a trainer with a limit takes the limit from it).
    """

    def __init__(self, loader: Any, convert: Callable[[Any], Any] | None = None, *, limit: int | None = None) -> None:
        self.loader = loader
        self.convert = convert
        self._batches_per_epoch = len(loader)
        # None: the whole epoch, which the loader ends itself (and keeps prefetching across).
        self._limit = limit if limit is not None and limit < self._batches_per_epoch else None
        self._state: dict[str, Any] | None = None  # during an epoch: the state after the last batch yielded
        self._resumed = False

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    def __len__(self) -> int:
        return self._batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        current: Any = next(batches, _END)
        if current is _END and self._resumed:
            # The empty rest of an epoch whose last batch the state was saved after: the trainer
            # counts that epoch done already (by its steps), so go on with the next one.
            batches = iter(self.loader)
            current = next(batches, _END)
        self._resumed = False
        while current is not _END:
            self._state = self.loader.state_dict()
            if self._limit is not None and self._state["batches_yielded"] >= self._limit:
                # The limit's last batch (batches_yielded counts a resumed epoch's earlier ones too):
                # the trainer takes no more of this epoch. Closed now, not when collected: without
                # persistent workers, its workers would run on beside the next epoch's.
                batches.close()
                self.loader.end_epoch()
                following, self._state = _END, None
            else:
                following = next(batches, _END)  # after the last batch: ends the epoch in the loader now
            yield current if self.convert is None else self.convert(current)
            current = following
        self._state = None

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state) if self._state is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
        self._resumed = state != {}
