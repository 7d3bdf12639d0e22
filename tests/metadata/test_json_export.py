"""A JSON export's ``media_items``: Arrow's reader, the json.load fallback, and the errors that name the file."""

from __future__ import annotations

import json
import sys

import pyarrow as pa
import pytest

from tests.helpers import child_env
from tests.metadata.helpers import (
    INFO,
    items,
    raw_columns,
    write_json_export,
    write_parquet,
)
from tests.waits import run_child
from vl_datasets.errors import SchemaError
from vl_datasets.metadata import read
from vl_datasets.metadata.normalize import info_of, normalize
from vl_datasets.metadata.read import read_metadata


def test_pretty_printed_json_and_json_strings_with_newlines(tmp_path, expected):
    assert read_metadata(write_json_export(tmp_path / "a", indent=2).parent).to_pylist() == expected.to_pylist()
    media = items()
    table = pa.table(
        dict(
            raw_columns(media),
            metadata_items=[json.dumps(m["metadata_items"], indent=1) if "metadata_items" in m else "" for m in media],
        )
    )
    assert normalize(table).to_pylist() == expected.to_pylist()


def test_json_export_with_odd_types_falls_back_to_json_load(tmp_path, expected):
    media = items()
    media[0]["height"] = 375.0
    media[1]["metadata_items"][0]["properties"]["frame_timestamp"] = "1.5"
    table = read_metadata(write_json_export(tmp_path, media).parent)
    assert table.to_pylist() == expected.to_pylist()
    assert info_of(table) == INFO


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}, "media_items": [{"media_id": "a",', encoding="utf-8")
    with pytest.raises(SchemaError, match=r"metadata\.json"):
        read_metadata(tmp_path)


def test_json_without_media_items(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}}', encoding="utf-8")
    with pytest.raises(SchemaError) as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "media_items"


def _json_bytes(media=None) -> bytes:
    return json.dumps({"info": INFO, "media_items": items() if media is None else media}).encode()


def _not_utf8(data: bytes, old: bytes, new: bytes) -> tuple[bytes, int]:
    assert data.count(old) == 1, f"{old!r} is not unique in the export"
    return data.replace(old, new), data.index(old) + next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)


@pytest.mark.parametrize(
    "change",
    [
        (b'"cat_01.jpg"', b'"cat_\xff1.jpg"'),  # a byte no UTF-8 text holds
        (b'"issues_description"', b'"issues\xe9description"'),  # Latin-1 in a key
        (b"a tabby cat", b"a tabby \xc3t"),  # a sequence cut short
        (b"a tabby cat", b"a tabby \xed\xa0\x80t"),  # an encoded surrogate, which json.load's decoder lets through
    ],
    ids=["invalid byte", "latin-1 key", "cut sequence", "surrogate"],
)
def test_metadata_json_that_is_not_utf8_names_the_byte_offset(tmp_path, change):
    data, offset = _not_utf8(_json_bytes(), *change)
    (tmp_path / "metadata.json").write_bytes(data)
    with pytest.raises(SchemaError) as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "metadata"
    assert f"offset {offset:,}" in str(caught.value), f"the message does not give offset {offset}: {caught.value}"
    assert str(tmp_path / "metadata.json") in str(caught.value)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
def test_metadata_json_in_another_encoding_is_refused(tmp_path, encoding):
    media = items()
    media[0]["file_name"] = "café.jpg"  # json.load would take UTF-16 and UTF-32 from their first bytes
    text = json.dumps({"info": INFO, "media_items": media}, ensure_ascii=False)
    (tmp_path / "metadata.json").write_bytes(text.encode(encoding))
    with pytest.raises(SchemaError, match="not UTF-8 text") as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "metadata"


def test_metadata_json_not_utf8_at_the_end_and_past_a_large_first_slice(tmp_path):
    data = _json_bytes()
    (tmp_path / "metadata.json").write_bytes(data + b"\xe2\x82")  # the file ends inside a sequence
    with pytest.raises(SchemaError, match=f"offset {len(data):,}"):
        read_metadata(tmp_path)
    padded = data[:-2] + b" " * (20 << 20) + b"\xff" + data[-2:]  # past the first 16 MiB slice the offset is read in
    (tmp_path / "metadata.json").write_bytes(padded)
    with pytest.raises(SchemaError, match=f"offset {len(data) - 2 + (20 << 20):,}"):
        read_metadata(tmp_path)


def test_metadata_json_with_a_utf8_byte_order_mark_is_read(tmp_path, expected):
    (tmp_path / "metadata.json").write_bytes(b"\xef\xbb\xbf" + _json_bytes())
    assert read_metadata(tmp_path).to_pylist() == expected.to_pylist()
    (tmp_path / "metadata.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(items()).encode())  # json.load's path
    assert read_metadata(tmp_path).to_pylist() == expected.to_pylist()


def test_json_load_fallback_refuses_what_is_not_utf8_too(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "check_utf8", lambda path: None)  # as if the file changed after the check
    data, offset = _not_utf8(json.dumps(items()).encode(), b'"cat_01.jpg"', b'"cat_\xff1.jpg"')
    (tmp_path / "metadata.json").write_bytes(data)
    with pytest.raises(SchemaError, match=f"offset {offset:,}"):
        read_metadata(tmp_path)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_a_json_export_with_two_media_items_lists_is_refused(tmp_path, monkeypatch, streamed):
    """A whole read kept the last list, a streamed one both: neither is known to be the export's."""
    if streamed:
        monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)
    media = items()
    path = write_json_export(tmp_path, media[:2])
    path.write_text(path.read_text()[:-1] + ', "media_items": ' + json.dumps(media[2:]) + "}", encoding="utf-8")
    with pytest.raises(SchemaError, match="holds the key 'media_items' more than once") as caught:
        list(read.metadata_slices(path).tables)
    assert caught.value.field == "media_items"
    # The key's text elsewhere is no second list; past an integer yajl refuses, the keys are read on.
    media[0]["note"], media[1]["extra"], media[2]["big"] = "media_items", {"media_items": [1]}, 2**70
    write_json_export(tmp_path, media)
    assert sum(table.num_rows for table in read.metadata_slices(path).tables) == 4


_READ_EACH = """
import json, sys
from pathlib import Path
from vl_datasets.errors import SchemaError
from vl_datasets.metadata import read
for path in sys.argv[1:]:
    for streamed in (False, True):
        read.JSON_STREAM_BYTES = 0 if streamed else 64 << 20
        try:
            list(read.metadata_slices(Path(path)).tables)
            print("read")
        except SchemaError as exc:
            print(json.dumps({"field": exc.field, "message": str(exc)}))
        sys.stdout.flush()
"""


def test_a_json_text_that_is_no_object_or_list_is_a_schema_error_not_a_crash(tmp_path):
    texts = ["null", " null", "null null", "\ufeff\n null", "42", '"media_items"', ""]
    paths = []
    for i, text in enumerate(texts):
        (tmp_path / str(i)).mkdir()
        paths.append(tmp_path / str(i) / "metadata.json")
        paths[-1].write_text(text, encoding="utf-8")
    # A child process: Arrow's reader crashed (SIGSEGV) on a text that opens with null.
    result = run_child([sys.executable, "-c", _READ_EACH, *map(str, paths)], env=child_env())
    assert result.returncode == 0, f"reading the texts killed the process: {result.stderr[-2000:]}"
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 2 * len(paths), result.stdout
    for i, answer in enumerate(answers):
        assert answer["field"] == "metadata", answer
        path = paths[i // 2]
        assert answer["message"] == f"{path} is neither a JSON export object nor a list of media items.", answer


# -- nesting: a bounded depth, checked before any parser recurses ----------------------------------

_READ_AT_DEPTHS = """
import json, sys
from pathlib import Path
from vl_datasets.errors import SchemaError
from vl_datasets.metadata.read import read_metadata_file
for path in sys.argv[1:]:
    try:
        read_metadata_file(Path(path))
        print("read")
    except SchemaError as exc:
        print(json.dumps({"field": exc.field, "message": str(exc)}))
    sys.stdout.flush()
"""


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _deep_exports(tmp_path, where: str) -> list:
    paths = []
    for depth in (1_000, 10_000, 100_000):
        folder = tmp_path / f"{where}-{depth}"
        media = items()
        if where == "an unknown key of a media item":
            media[1]["extra"] = "NESTED"
        elif where == "a metadata item's properties":
            media[0]["metadata_items"][0]["properties"]["extra"] = "NESTED"
        elif where == "metadata_items in parquet":
            media[2]["metadata_items"] = "NESTED"
            strings = [json.dumps(m["metadata_items"]) if "metadata_items" in m else None for m in media]
            strings = [s.replace('"NESTED"', _nested(depth)) if s else s for s in strings]
            table = pa.table(dict(raw_columns(media), metadata_items=strings))
            paths.append(write_parquet(folder, table))
            continue
        info = {**INFO, "extra": "NESTED"} if where == "info" else INFO
        path = write_json_export(folder, media, info=info)
        path.write_text(path.read_text().replace('"NESTED"', _nested(depth)))
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "where", ["an unknown key of a media item", "a metadata item's properties", "info", "metadata_items in parquet"]
)
def test_metadata_nested_a_thousand_to_100000_deep_is_a_schema_error_not_a_crash(tmp_path, where):
    import subprocess

    paths = _deep_exports(tmp_path, where)
    # A child process: Arrow's reader once overflowed the C stack at 100,000 levels (SIGSEGV). Its
    # total of 120 s is intended, not a progress bound: at 10,000 levels the reader once spun without
    # answering, so a child that keeps working without an answer IS the failure this test catches.
    result = subprocess.run(
        [sys.executable, "-c", _READ_AT_DEPTHS, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert result.returncode == 0, f"reading {where} nested deep killed the process: {result.stderr[-2000:]}"
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 3, result.stdout
    for path, answer in zip(paths, answers):
        assert str(path) in answer["message"], answer
        assert "levels deep" in answer["message"] and "limit is 64" in answer["message"], answer
        assert answer["field"] in ("metadata", "metadata_items"), answer
    if where == "metadata_items in parquet":
        assert all(items()[2]["media_id"] in answer["message"] for answer in answers), "the row is not named"


def test_nesting_up_to_the_limit_and_brackets_inside_strings_are_read(tmp_path, expected):
    from vl_datasets.metadata.json_depth import MAX_DEPTH

    media = items()
    media[0]["file_name"] = "[{" * 5_000 + '\\"]'  # text, not nesting
    media[1]["extra"] = "NESTED"  # the export, media_items and the item are three levels
    path = write_json_export(tmp_path, media)
    path.write_text(path.read_text().replace('"NESTED"', _nested(MAX_DEPTH - 3)))
    table = read_metadata(tmp_path)
    assert table.column("file_name")[0].as_py() == media[0]["file_name"]
    assert table.column("media_id").to_pylist() == expected.column("media_id").to_pylist()
    path.write_text(path.read_text().replace(_nested(MAX_DEPTH - 3), _nested(MAX_DEPTH - 2)))
    with pytest.raises(SchemaError, match=f"nests {MAX_DEPTH + 1} levels deep"):
        read_metadata(tmp_path)


def _depth(value) -> int:
    if isinstance(value, dict | list):
        return 1 + max((_depth(v) for v in (value.values() if isinstance(value, dict) else value)), default=0)
    return 0


def test_the_depth_bound_holds_however_the_text_is_sliced():
    """An incremental reader feeds slices: a string, an escape or a run of backslashes cut between
    two slices must not hide a level or invent one."""
    import random

    from vl_datasets.metadata.json_depth import DepthScanner, first_too_deep

    rng = random.Random(0)
    tricky = ['a"b\\', "[{", '\\"]]', 'x\\\\"y', "}}}", "\\\\\\", 1, None]

    def value(levels):
        if not levels or rng.random() < 0.3:
            return rng.choice(tricky)
        if rng.random() < 0.5:
            return [value(levels - 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(["k", "[", '\\"{']): value(levels - 1) for _ in range(rng.randint(0, 3))}

    documents = [value(rng.randint(0, 10)) for _ in range(300)]
    for document in documents:
        text, depth = json.dumps(document).encode(), _depth(document)
        for limit in {depth, max(depth - 1, 0)}:
            for size in (1, 2, 5, len(text)):
                scanner = DepthScanner("doc", max_depth=limit)
                try:
                    for start in range(0, len(text), size):
                        scanner.feed(text[start : start + size])
                    refused = False
                except SchemaError:
                    refused = True
                assert refused == (depth > limit), f"{text!r} ({depth} deep) in slices of {size}, limit {limit}"
    strings = pa.array([json.dumps(d) for d in documents])
    depths = [_depth(d) for d in documents]
    for limit in (2, 5, 8):
        found = first_too_deep(strings.slice(3), max_depth=limit)
        assert (found and found[0]) == next((i for i, d in enumerate(depths[3:]) if d > limit), None)
