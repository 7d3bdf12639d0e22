"""The index's cold columns written behind: what the kernel is told to drop is exactly their bytes,
never a column the first open reads next, and the file is the same whatever the advice does."""

from __future__ import annotations

import errno
import os

import pyarrow as pa
import pytest

from tests.metadata.helpers import json_strings_table, realistic_media_items, write_parquet
from vl_datasets.metadata import cold_pages, index_writer
from vl_datasets.metadata.deferred import complete_index
from vl_datasets.metadata.index import INDEX_FILE, build_index, read_index, write_export_index

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="advice needs posix_fadvise")


@pytest.fixture
def advised(monkeypatch) -> list[tuple[int, int]]:
    """Every range the index writer advises away, advice given after every batch of 64 rows."""
    monkeypatch.setattr(cold_pages, "WINDOW_BYTES", 1)
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 64)
    calls: list[tuple[int, int]] = []
    advise = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((offset, length))
        advise(fd, offset, length, advice)

    monkeypatch.setattr(cold_pages.os, "posix_fadvise", recording)
    return calls


def _column_spans(path) -> dict[str, list[tuple[int, int]]]:
    """Each column's (offset, length) in the file, batch by batch, from where a map of it puts the
    column's buffers: a reading of the layout independent of the writer's."""
    with pa.memory_map(str(path)) as mapped:
        base = mapped.read_buffer(1).address
        table = pa.ipc.open_file(mapped).read_all()
        spans: dict[str, list[tuple[int, int]]] = {}
        for name, column in zip(table.column_names, table.columns):
            for chunk in column.chunks:
                buffers = [b for b in chunk.buffers() if b is not None and b.size]
                if buffers:
                    first = min(b.address for b in buffers)
                    last = max(b.address + b.size for b in buffers)
                    spans.setdefault(name, []).append((first - base, last - first))
    return spans


def _index(tmp_path, rows: int = 300):
    table = json_strings_table(realistic_media_items(rows))
    table = table.append_column("caption", pa.array([f"a caption of item {i}" for i in range(rows)]))  # kept as is
    export = write_parquet(tmp_path / "export", table, row_group_size=64).parent
    path = tmp_path / INDEX_FILE
    assert write_export_index(export, path, batch_rows=64) == rows
    return export, path


def test_the_cold_columns_pages_are_advised_away_and_no_column_read_next(tmp_path, advised):
    _, path = _index(tmp_path)
    spans = _column_spans(path)
    hot = {span for name in index_writer._READ_NEXT for span in spans.get(name, [])}
    cold = {span for name, found in spans.items() if name not in index_writer._READ_NEXT for span in found}
    assert {"caption", "url"} <= set(spans) - index_writer._READ_NEXT
    assert len(spans["caption"]) == 5, "the test needs several batches"
    assert not set(advised) & hot
    assert set(advised) == cold
    # Twice each, a window apart (to start the writeback, then to free the clean pages), but the last
    # window's: its pages stay until the kernel writes them back and needs them.
    last = {span for found in spans.values() for span in found[-1:]}
    assert all(advised.count(span) == (1 if span in last else 2) for span in cold)


def test_the_index_written_behind_is_the_whole_table_build(tmp_path, advised):
    export, path = _index(tmp_path)
    assert advised
    streamed, whole = read_index(path), build_index(export)
    assert streamed is not None and complete_index(streamed, path).to_pylist() == whole.to_pylist()


def _refused(*_args) -> None:
    raise OSError(errno.EINVAL, "Invalid argument")


def _unreadable(*_args) -> None:
    raise pa.ArrowInvalid("an IPC layout this pyarrow does not read")


@pytest.mark.parametrize(
    "failing", [("os", "posix_fadvise", _refused), ("ipc", "read_message", _unreadable)], ids=["refused", "unreadable"]
)
def test_an_index_is_written_whole_when_the_advice_cannot_be_given(tmp_path, monkeypatch, failing):
    """A system refusing the advice, or batches whose layout cannot be read back, end the advice,
    not the build."""
    monkeypatch.setattr(cold_pages, "WINDOW_BYTES", 1)
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 64)
    module, name, fail = failing
    calls = []

    def counted(*args) -> None:
        calls.append(args)
        fail(*args)

    monkeypatch.setattr(cold_pages.os if module == "os" else cold_pages.pa.ipc, name, counted)
    export, path = _index(tmp_path)
    assert len(calls) == 1, "advice goes on after it failed"
    streamed = read_index(path)
    assert streamed is not None and complete_index(streamed, path).to_pylist() == build_index(export).to_pylist()
