"""A function over a sequence of items, computed by a pool of threads, its results taken in order.

The index build reads a file's slices (one reader, in order), normalizes them (Arrow and numpy
release the GIL: several at once) and writes them (in order). Done by one loop, each slice's
normalizing waits on the previous one's write, and the writes come in bursts (slices are joined
into larger batches), during which nothing new would be read or started: the build kept barely
more than one core busy. Here each thread of the pool reads the next item (one at a time, under a
lock, so the items are read in order) and computes its result, ahead of the consumer by at most
``ahead`` items, so the pool keeps working while the consumer writes. No thread only reads: one
more thread's allocator arenas would keep memory after the build.

Results, and errors, arrive in the items' order: the error of an item (or of reading it) is raised
where its result would have been, once every earlier result was taken, with a note naming the
item. Whenever the consumer stops (an error, ``close``), no thread is left running: the items not
started are never read, those running finish, and the threads end before it returns.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

# Threads for a pass over slices: Arrow's kernels and numpy release the GIL, so a few threads keep
# every core busy; more would only hold more slices in memory at once.
WORKERS = min(os.cpu_count() or 1, 4)

T = TypeVar("T")
R = TypeVar("R")


class _Outcome(NamedTuple):
    """What became of the item read ``number``-th: its result, its error, or the end of the items."""

    value: Any = None
    error: BaseException | None = None
    end: bool = False


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    ahead: int,
    name: Callable[[T], str],
) -> Generator[R, None, None]:
    """``function(item)`` for each of ``items``, in their order, computed by ``workers`` threads
    that read ``items`` in turn; at most ``ahead`` items read whose result the consumer has not
    taken yet (what bounds the memory in flight). An error raised for an item carries the note
    ``name(item)``: a sentence saying which part of the input it was."""
    if workers < 1 or ahead < 1:
        raise ValueError(f"ordered_map needs at least one worker and one item ahead, not {workers} and {ahead}.")
    return _OrderedMap(function, iter(items), workers, ahead, name).results()


class _OrderedMap(Generic[T, R]):
    def __init__(
        self, function: Callable[[T], R], items: Iterator[T], workers: int, ahead: int, name: Callable[[T], str]
    ) -> None:
        self._function, self._items, self._name = function, items, name
        self._slots = threading.Semaphore(ahead)  # one per item read and not yet taken
        self._reading = threading.Lock()  # held while an item is read: they are read in order
        self._read = 0  # items read so far (under _reading)
        self._ended = False  # the items are all read, or reading them failed (under _reading)
        self._done = threading.Condition()  # guards _outcomes; notified as each one arrives
        self._outcomes: dict[int, _Outcome] = {}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"vl_datasets-ordered_map-{i}", daemon=True)
            for i in range(workers)
        ]

    def results(self) -> Generator[R, None, None]:
        for thread in self._threads:
            thread.start()
        try:
            for number in itertools.count():
                with self._done:
                    self._done.wait_for(lambda number=number: number in self._outcomes)  # type: ignore[misc]
                    outcome = self._outcomes.pop(number)
                self._slots.release()
                if outcome.end:
                    return
                if outcome.error is not None:
                    raise outcome.error
                yield outcome.value
        finally:
            self._shut_down()

    def _work(self) -> None:
        """Read the next item and compute its result, until the items end or the consumer stops."""
        while True:
            self._slots.acquire()
            if self._stop.is_set():
                return
            with self._reading:
                if self._ended:
                    self._slots.release()  # for the next thread to see the end too
                    return
                number, self._read = self._read, self._read + 1
                try:
                    item = next(self._items)
                except StopIteration:
                    self._ended = True
                    self._publish(number, _Outcome(end=True))
                    return
                except BaseException as error:  # raised in order, after every result read before it
                    self._ended = True
                    self._publish(number, _Outcome(error=error))
                    return
            self._publish(number, self._compute(item))

    def _compute(self, item: T) -> _Outcome:
        try:
            return _Outcome(value=self._function(item))
        except BaseException as error:
            try:
                note = self._name(item)
            except BaseException as naming_error:  # a thread that ended without an outcome would hang the consumer
                return _Outcome(error=naming_error)  # its __context__ is the item's error
            if hasattr(error, "add_note"):  # Python 3.11+
                error.add_note(note)
            return _Outcome(error=error)

    def _publish(self, number: int, outcome: _Outcome) -> None:
        with self._done:
            self._outcomes[number] = outcome
            self._done.notify_all()

    def _shut_down(self) -> None:
        self._stop.set()
        for _ in self._threads:
            self._slots.release()  # wakes every thread waiting for a slot; each then sees the stop
        for thread in self._threads:
            thread.join()
        self._outcomes.clear()
        close = getattr(self._items, "close", None)
        if close is not None:
            close()
