"""The index build's pool of normalizers: results in the items' order, bounded in what it reads
ahead, errors raised in order and naming their item, and no thread left running once it stops."""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pyarrow as pa
import pytest

from tests.metadata.helpers import items, json_strings_table, write_parquet
from vl_datasets.errors import SchemaError
from vl_datasets.metadata import stream
from vl_datasets.metadata.ordered_map import ordered_map

BOUND_S = 30  # generous: every wait below ends as soon as the threads it waits for have run


def _pool_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("vl_datasets-ordered_map")]


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {BOUND_S} s for {what}"
        time.sleep(0.01)


def _in_reverse_time(item: int) -> int:
    time.sleep(0.002 * (20 - item))  # the earlier items finish last
    return item * item


def test_results_come_in_the_items_order_whoever_finishes_first():
    results = list(ordered_map(_in_reverse_time, range(20), workers=4, ahead=6, name=str))
    assert results == [item * item for item in range(20)]
    _wait_for(lambda: not _pool_threads(), "the pool's threads to end")


def test_no_more_items_are_read_than_ahead_of_the_consumer():
    read = []

    def items_read():
        for item in range(100):
            read.append(item)
            yield item

    results = ordered_map(lambda item: item, items_read(), workers=2, ahead=3, name=str)
    assert next(results) == 0
    _wait_for(lambda: len(read) >= 4, "the reader to fill the slots the consumer left")
    time.sleep(0.2)  # time for the reader to run further ahead, if it would
    assert len(read) == 1 + 3, f"{len(read)} items read while the consumer had taken one"
    assert list(results) == list(range(1, 100))


def test_an_error_in_a_worker_is_raised_in_order_naming_its_item():
    def fails_at_seven(item: int) -> int:
        if item == 7:
            raise ValueError("no seven")
        return item

    taken = []
    with pytest.raises(ValueError, match="no seven") as caught:
        for result in ordered_map(fails_at_seven, range(50), workers=3, ahead=5, name=lambda i: f"the item {i}"):
            taken.append(result)
    assert taken == list(range(7)), "every result before the failed item comes first, none after it"
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__ == ["the item 7"]
    _wait_for(lambda: not _pool_threads(), "the pool's threads to end after an error")


def test_an_error_reading_the_items_comes_after_the_results_read_before_it():
    def items_read():
        yield from range(4)
        raise OSError("the file went away")

    taken = []
    with pytest.raises(OSError, match="went away"):
        for result in ordered_map(lambda item: item + 1, items_read(), workers=2, ahead=8, name=str):
            taken.append(result)
    assert taken == [1, 2, 3, 4]
    _wait_for(lambda: not _pool_threads(), "the pool's threads to end after a failed read")


def test_a_consumer_that_stops_early_leaves_no_thread_running():
    started = threading.Event()
    release = threading.Event()

    def slow(item: int) -> int:
        if item == 1:
            started.set()
            release.wait(BOUND_S)  # still running when the consumer stops
        return item

    results = ordered_map(slow, range(1000), workers=2, ahead=4, name=str)
    assert next(results) == 0
    _wait_for(started.is_set, "the second item to start")
    closer = threading.Thread(target=results.close)
    closer.start()
    release.set()
    closer.join(BOUND_S)
    assert not closer.is_alive(), "closing the results did not return"
    assert not _pool_threads(), f"threads left running: {_pool_threads()}"


def test_a_bad_slice_of_a_parquet_file_is_named_and_stops_the_build(tmp_path, monkeypatch):
    """A SchemaError in a later slice keeps its message (the row in the file) and says which slice
    was being normalized; the slices after it are not waited for, and no thread outlives it."""
    monkeypatch.setattr(stream, "WORKERS", 3)
    media = [dict(m, media_id=f"id-{i:04d}") for i, m in enumerate(itertools.islice(itertools.cycle(items()), 60))]
    media[45]["uniqueness_score"] = 2.0
    path = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=10)
    taken = []
    with pytest.raises(SchemaError, match=r"media_id 'id-0045' \(row 45\): uniqueness_score is 2.0") as caught:
        for table in stream.parquet_slices(path, batch_rows=10):
            taken.append(table.column("media_id").to_pylist())
    assert [ids[0] for ids in taken] == ["id-0000", "id-0010", "id-0020", "id-0030"]
    if sys.version_info >= (3, 11):
        assert caught.value.__notes__ == [f"Raised while normalizing rows 40 to 49 of {path}."]
    _wait_for(lambda: not _pool_threads(), "the pool's threads to end after a bad slice")
    assert pa.concat_arrays([pa.array(ids) for ids in taken]).to_pylist() == [f"id-{i:04d}" for i in range(40)]


def test_an_item_that_cannot_be_named_still_raises_its_error():
    def fails(item: int) -> int:
        raise ValueError(f"bad item {item}")

    def unnamed(item: int) -> str:
        raise KeyError("no name")

    raised: list[BaseException] = []

    def consume() -> None:
        try:
            list(ordered_map(fails, range(3), workers=2, ahead=2, name=unnamed))
        except BaseException as error:
            raised.append(error)

    consumer = threading.Thread(target=consume, daemon=True)  # were it to hang, it must not hold pytest
    consumer.start()
    consumer.join(BOUND_S)
    assert not consumer.is_alive(), "the consumer still waits for an item whose naming failed"
    assert isinstance(raised[0], KeyError) and isinstance(raised[0].__context__, ValueError), raised
    assert "bad item 0" in str(raised[0].__context__)
    _wait_for(lambda: not _pool_threads(), "the pool's threads to end")


def test_a_failed_write_of_the_index_leaves_no_thread_behind(tmp_path, monkeypatch):
    """The writer fails after its first slice: the threads normalizing the next ones end with the
    build, while the error (and its traceback, holding the slices' generators) is still held."""
    from vl_datasets.metadata import index_writer
    from vl_datasets.metadata.index import INDEX_FILE, write_export_index

    media = [dict(m, media_id=f"id-{i:04d}") for i, m in enumerate(itertools.islice(itertools.cycle(items()), 200))]
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=10).parent

    def full_disk(tables, rows):
        yield next(iter(tables))
        raise OSError("No space left on device")

    monkeypatch.setattr(index_writer, "_coalesced", full_disk)
    with pytest.raises(OSError, match="No space left") as caught:
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=10)
    assert caught.value is not None  # the traceback is still held here
    assert not _pool_threads(), f"threads left running after the failed write: {_pool_threads()}"
