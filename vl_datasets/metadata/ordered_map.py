"""A function over a sequence of items, computed by a pool of threads, its results taken in order.

The index build reads a file's slices (one reader, in order), normalizes them (Arrow and numpy
release the GIL: several at once) and writes them (in order). Done by one loop, each slice's
normalizing waits on the previous one's write, and the writes come in bursts (slices are joined
into larger batches), during which nothing new would be read or started: the build kept barely
more than one core busy. Here one thread reads the items and hands them to the pool, ahead of the
consumer by at most ``ahead`` items, so the pool keeps working while the consumer writes.

Results, and errors, arrive in the items' order: the error of an item (or of reading the next
one) is raised where its result would have been, once every earlier result was taken, with a note
naming the item. Whenever the consumer stops (an error, ``close``), no thread is left running:
the items not started are dropped, those running finish, and the threads end before it returns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _ReadFailed:
    """What the reading thread hands on in place of the next item when reading it raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def ordered_map(
    function: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    ahead: int,
    name: Callable[[T], str],
) -> Iterator[R]:
    """``function(item)`` for each of ``items``, in their order, computed by ``workers`` threads
    while a thread of its own reads ``items``; at most ``ahead`` items read whose result the
    consumer has not taken yet (what bounds the memory in flight). An error raised for an item
    carries the note ``name(item)``: a sentence saying which part of the input it was."""
    if workers < 1 or ahead < 1:
        raise ValueError(f"ordered_map needs at least one worker and one item ahead, not {workers} and {ahead}.")
    return _OrderedMap(function, items, workers, ahead, name).results()


class _OrderedMap(Generic[T, R]):
    def __init__(
        self, function: Callable[[T], R], items: Iterable[T], workers: int, ahead: int, name: Callable[[T], str]
    ) -> None:
        self._function, self._items, self._name = function, items, name
        self._slots = threading.Semaphore(ahead)  # one per item read and not yet taken
        self._stop = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # (future, name), _ReadFailed, then _DONE
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="vl_datasets-ordered_map")
        self._reader = threading.Thread(target=self._read, name="vl_datasets-ordered_map-reader", daemon=True)

    def results(self) -> Iterator[R]:
        self._reader.start()
        try:
            while (entry := self._queue.get()) is not _DONE:
                if isinstance(entry, _ReadFailed):
                    raise entry.error
                future, label = entry
                yield self._result(future, label)
        finally:
            self._shut_down()

    def _result(self, future: Future[R], label: str) -> R:
        try:
            return future.result()
        except BaseException as error:
            if hasattr(error, "add_note"):  # Python 3.11+
                error.add_note(label)
            raise
        finally:
            self._slots.release()

    def _read(self) -> None:
        """Read the items and start each one's work, in order, as slots free up."""
        iterator = iter(self._items)
        try:
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                self._queue.put((self._pool.submit(self._function, item), self._name(item)))
        except BaseException as error:  # delivered in order, after every result read before it
            self._queue.put(_ReadFailed(error))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        self._queue.put(_DONE)

    def _shut_down(self) -> None:
        self._stop.set()
        self._slots.release()  # wakes the reader if it waits for a slot; it then sees the stop
        self._reader.join()
        self._pool.shutdown(wait=True, cancel_futures=True)
