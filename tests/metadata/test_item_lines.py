"""``metadata_items`` texts read one distinct item at a time: the very lists the texts read whole
give, and every text the cut between items could part wrongly read whole instead."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pytest

from tests.metadata.helpers import items, json_strings_table, realistic_media_items
from vl_datasets.metadata import items as metadata_items
from vl_datasets.metadata.item_lines import items_read_once
from vl_datasets.metadata.normalize import normalize


def _texts(media: list[dict], **dumps) -> list[str]:
    return [json.dumps(m["metadata_items"], **dumps) if "metadata_items" in m else "null" for m in media]


def _whole(texts: list[str]) -> pa.Array | None:
    return metadata_items._read_wrapped(pa.array(texts), None)


_CAPTION = {"type": "caption", "properties": {"text": 'a café, 日本, \U0001f600 and "quotes"', "source": "User"}}
_ONE_NESTED = {
    "type": "object_label",
    "properties": {"bbox": [1, 2, 3, 4], "metadata_items": [{"type": "issue", "properties": {"issue_type": "blur"}}]},
}

READ_BY_ITEM = {
    "Python's json": _texts(realistic_media_items(50)),
    "a compact writer": _texts(realistic_media_items(50), separators=(",", ":")),
    "no items, empty lists and empty objects": ["null", "[]", "[{}]", "[{}, {}]", _texts(realistic_media_items(1))[0]],
    "text beyond ASCII, escaped or not": [json.dumps([_CAPTION]), json.dumps([_CAPTION, _CAPTION], ensure_ascii=False)],
}


@pytest.mark.parametrize("texts", READ_BY_ITEM.values(), ids=READ_BY_ITEM.keys())
def test_items_read_once_are_the_texts_read_whole(texts):
    once = items_read_once(pa.array(texts))
    assert once is not None, "texts of the usual shape are read item by item"
    whole = _whole(texts)
    assert once.type == whole.type
    assert once.to_pylist() == whole.to_pylist()
    once.validate(full=True)


_NESTED_TWO = {
    "type": "object_label",
    "properties": {"metadata_items": [{"type": "issue", "properties": {}}, {"type": "user_tag", "properties": {}}]},
}
READ_WHOLE = {
    "a separator inside a string": ['[{"type": "caption", "properties": {"text": "a}, {b"}}]'],
    "a compact separator inside a string": ['[{"type":"caption","properties":{"text":"a},{b"}},{}]'],
    "a nested list of two objects, after a plain text": ["[{}]", json.dumps([_CAPTION, _NESTED_TWO])],
    "a nested list of two objects, first": [json.dumps([_NESTED_TWO]), "[{}]"],
    "a nested list, even of one object": ["[]", json.dumps([_CAPTION, _ONE_NESTED])],
    "a nested list in a later text": ['[{"a": 1}]', "[{}]", json.dumps([_CAPTION, _ONE_NESTED])],
    "the separators of two writers": ['[{"a": 1}, {"b": 2}]', '[{"a": 1},{"b": 2}]'],
    "a newline between tokens": ['[{"a":\n1}]'],
    "an item that is no object": ['[{"a": 1}, 2]', '[null, {"a": 1}]'],
    "texts of no items only": ["null", "[]"],
}


@pytest.mark.parametrize("texts", READ_WHOLE.values(), ids=READ_WHOLE.keys())
def test_texts_the_cut_could_part_wrongly_are_left_to_the_whole_read(texts):
    assert items_read_once(pa.array(texts)) is None


def test_two_items_without_a_comma_are_refused_not_read_as_three():
    texts = ['[{"a": 1} {"b": 2}]', '[{"a": 1}, {"b": 2}]']
    assert items_read_once(pa.array(texts)) is None
    assert _whole(texts) is None  # and the whole read refuses it too: the slower readers name the row


def _random_text(rng: random.Random) -> str:
    pieces = ["a", "}, {", "},{", "[{", "}]", "\\", '"', "é", ", ", "{", "}", "[", "]"]

    def value(depth: int):
        kind = rng.randrange(6 if depth < 3 else 3)
        if kind == 0:
            return "".join(rng.choice(pieces) for _ in range(rng.randrange(4)))
        if kind == 1:
            return rng.choice([1, 2.5, -1, 0.97])
        if kind == 2:
            return None
        if kind == 3:
            return [value(depth + 1) for _ in range(rng.randrange(3))]
        return obj(depth + 1)

    def obj(depth: int) -> dict:
        return {rng.choice(["type", "properties", "text", "x"]): value(depth) for _ in range(rng.randrange(3))}

    separators = rng.choice([(", ", ": "), (",", ":")])
    return json.dumps([obj(1) for _ in range(rng.randrange(4))], separators=separators, ensure_ascii=rng.random() < 0.5)


def test_any_cut_the_item_read_takes_gives_what_the_whole_read_gives():
    rng = random.Random(19)
    taken = 0
    for _ in range(300):
        texts = [_random_text(rng) for _ in range(rng.randrange(1, 6))]
        once = items_read_once(pa.array(texts))
        if once is None:
            continue
        taken += 1
        whole = _whole(texts)
        assert whole is not None and once.type == whole.type, texts
        assert once.to_pylist() == whole.to_pylist(), texts
    assert taken > 20, "the random texts should often be of a shape read item by item"


def test_normalized_columns_are_the_same_whichever_reader_and_writer(monkeypatch):
    media = realistic_media_items(200)
    media[5]["metadata_items"].append(_CAPTION)
    media[7]["metadata_items"] = []
    media[9].pop("metadata_items")
    table = json_strings_table(media)
    compact = table.set_column(
        table.column_names.index("metadata_items"),
        "metadata_items",
        pa.array(
            None if m is None else json.dumps(json.loads(m), separators=(",", ":"))
            for m in table["metadata_items"].to_pylist()
        ),
    )
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 64)
    by_item, compact_by_item = normalize(table).to_pylist(), normalize(compact).to_pylist()
    monkeypatch.setattr(metadata_items, "items_read_once", lambda texts: None)
    want = normalize(table).to_pylist()
    assert by_item == want
    assert compact_by_item == want
    assert [row["labels"] for row in want] == [row["labels"] for row in normalize(media).to_pylist()]


def test_the_sample_items_read_the_same_with_the_item_read_or_without(monkeypatch):
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 1)  # rows without a nested list go item by item
    by_item = normalize(json_strings_table(items())).to_pylist()
    monkeypatch.setattr(metadata_items, "items_read_once", lambda texts: None)
    assert by_item == normalize(json_strings_table(items())).to_pylist()
