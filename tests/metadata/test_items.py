"""``metadata_items`` in its three shapes into typed columns: spellings, odd types, and bad rows named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from tests.metadata.helpers import (
    BARE,
    CAT,
    VIDEO_A,
    VIDEO_B,
    items,
    json_strings_table,
    nested_table,
    rows,
    schema_error,
    write_json_export,
    write_parquet,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata import items as metadata_items
from vl_datasets.metadata.normalize import normalize
from vl_datasets.metadata.read import read_metadata


def test_both_video_info_and_caption_spellings(expected):
    by_id = rows(expected)
    a, b = by_id[VIDEO_A], by_id[VIDEO_B]
    assert (a["video_name"], a["frame_timestamp_s"], a["frame_number"]) == ("a.mp4", 1.5, None)
    assert (b["video_id"], b["frame_number"]) == ("vid-b", 17)
    assert b["frame_timestamp_s"] == pytest.approx(62.567)
    assert a["captions"] == [{"text": "a street", "source": "BLIP"}]
    assert (a["file_size_bytes"], b["file_size_bytes"]) == (round(3.38 * 1024**2), 512)
    assert b["uniqueness_score"] is None


def test_item_without_metadata_items_has_empty_lists(expected):
    bare = rows(expected)[BARE]
    assert [bare[c] for c in ("labels", "issues", "objects", "captions", "tags")] == [[], [], [], [], []]
    assert bare["file_size_bytes"] == round(1.2 * 1024**3)


def test_json_strings_the_fast_reader_refuses_are_coerced_per_slice(monkeypatch, expected):
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 2)
    media = items()
    media[2]["metadata_items"][0]["properties"]["frame_number"] = "17"  # a string where a number belongs
    media[1]["metadata_items"][0]["properties"]["frame_timestamp"] = "1.5"
    assert normalize(json_strings_table(media)).to_pylist() == expected.to_pylist()
    assert normalize(media).to_pylist() == expected.to_pylist()


def test_json_strings_read_with_inferred_types_slice_by_slice(monkeypatch, expected):
    calls = []
    real = metadata_items._read_json_fast
    monkeypatch.setattr(
        metadata_items, "_read_json_fast", lambda strings, *, infer: calls.append(infer) or real(strings, infer=infer)
    )
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 1)  # every row's types inferred apart (bbox: int, float)
    assert normalize(json_strings_table()).to_pylist() == expected.to_pylist()
    assert calls == [True] * 4  # assigned_date, inferred as a timestamp, forces no slower re-read


def test_date_like_text_stays_text(tmp_path):
    media = items()[:1]
    media[0]["file_name"] = "2025-01-01"
    media[0]["metadata_items"] = [
        {"type": "caption", "properties": {"text": "2025-01-01", "source": "User"}},
        {"type": "user_tag", "properties": {"tag_name": "2025-01-02T10:00:00"}},
    ]
    variants = {
        "JSON export": read_metadata(write_json_export(tmp_path / "json", media).parent),
        "parquet, JSON strings": normalize(json_strings_table(media)),
        "parquet, nested": normalize(nested_table(media)),
    }
    for variant, table in variants.items():
        row = table.to_pylist()[0]
        assert row["file_name"] == "2025-01-01", variant
        assert row["captions"] == [{"text": "2025-01-01", "source": "User"}], variant
        assert row["tags"] == ["2025-01-02T10:00:00"], variant


def test_item_types_that_change_between_items(tmp_path, expected):
    media = items()
    media[0]["metadata_items"][3]["properties"]["confidence"] = "0.97"  # a string among numbers
    media[3]["metadata_items"] = []
    want = expected.to_pylist()
    assert read_metadata(write_json_export(tmp_path / "json", media).parent).to_pylist() == want
    assert normalize(json_strings_table(media)).to_pylist() == want
    assert normalize(media).to_pylist() == want


def test_invalid_json_string_in_metadata_items(tmp_path):
    table = json_strings_table()
    strings = table.column("metadata_items").to_pylist()
    strings[1] = strings[1][:-3]
    error = schema_error(
        tmp_path, table.set_column(table.column_names.index("metadata_items"), "metadata_items", pa.array(strings))
    )
    assert error.field == "metadata_items"
    assert "row 1" in str(error)


def test_a_stray_closing_bracket_is_named_as_the_depth_scan_names_it(tmp_path):
    """Texts with few brackets skip the exact depth scan until the JSON reader refuses them: the
    error for a bracket closed but never opened is then the scan's, naming the row, as before."""
    table = json_strings_table()
    strings = table.column("metadata_items").to_pylist()
    strings[2] = strings[2] + "]"
    error = schema_error(
        tmp_path, table.set_column(table.column_names.index("metadata_items"), "metadata_items", pa.array(strings))
    )
    assert error.field == "metadata_items"
    assert "row 2" in str(error) and "closes a bracket it never opened" in str(error)


def test_opening_brackets_bound_the_depth_of_every_text():
    from vl_datasets.metadata.json_depth import first_too_deep, most_opening_brackets

    texts = ['[{"a": [1]}]', '"[[[["', "[]", "", '{"k": {"k": {"k": []}}}']
    strings = pa.array(texts)
    assert most_opening_brackets(strings) == 4
    assert most_opening_brackets(strings.slice(2)) == 4
    assert most_opening_brackets(strings.slice(2, 2)) == 1
    assert most_opening_brackets(pa.array([], pa.string())) == 0
    # The bound is never below the depth: at the bound no text is too deep, one below it one is.
    assert first_too_deep(strings, max_depth=most_opening_brackets(strings)) is None
    assert first_too_deep(strings, max_depth=3) is not None


def test_the_byte_scans_count_across_their_blocks(monkeypatch):
    """The scans read the bytes a block at a time: brackets and newlines on either side of a
    block's end are each counted once, in the text they belong to."""
    import random

    from vl_datasets.metadata import json_depth

    monkeypatch.setattr(json_depth, "_SCAN_BYTES", 7)
    rnd = random.Random(5)
    texts = ["".join(rnd.choice('[{x"\n ') for _ in range(rnd.randrange(0, 40))) for _ in range(300)]
    strings = pa.array(texts)
    assert json_depth.most_opening_brackets(strings) == max(t.count("[") + t.count("{") for t in texts)
    data = np.frombuffer("".join(texts).encode(), dtype=np.uint8)
    assert json_depth.count_byte(data, ord("\n")) == "".join(texts).count("\n")


def test_wrongly_typed_item_property(tmp_path):
    media = items()
    media[0]["metadata_items"][3]["properties"]["confidence"] = "very"
    with pytest.raises(SchemaError) as caught:
        normalize(media, source="x.json")
    assert caught.value.field == "metadata_items.properties.confidence"
    nested = pa.table(
        {
            "media_id": ["a"],
            "file_name": ["a.jpg"],
            "metadata_items": pa.array(
                [[{"type": "issue", "properties": {"issue_type": "blur", "confidence": "very"}}]]
            ),
        }
    )
    error = schema_error(tmp_path, nested)
    assert error.field == "metadata_items.properties.confidence"


def _read(tmp_path, variant, media):
    if variant == "json export":  # Arrow's JSON reader
        return read_metadata(write_json_export(tmp_path, media).parent)
    if variant == "bare list":  # json.load and python_items
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "metadata.json").write_text(json.dumps(media), encoding="utf-8")
        return read_metadata(tmp_path)
    if variant == "parquet, JSON strings":
        return read_metadata(write_parquet(tmp_path, json_strings_table(media)).parent)
    if variant == "parquet, nested":
        return read_metadata(write_parquet(tmp_path, nested_table(media)).parent)
    return normalize(media, source="python items")


JSON_VARIANTS = ["json export", "bare list", "parquet, JSON strings", "python list"]
VARIANTS = [*JSON_VARIANTS, "parquet, nested"]  # nested: Arrow converts a Python true among floats to 1.0


def _object(media):
    return media[0]["metadata_items"][7]["properties"]


def _cases(values, variants):
    return [(variant, value) for value in values for variant in variants]


BAD_UNIT = [float("nan"), -0.1, 1.5]
BOOLEANS = [True, False]


@pytest.mark.parametrize("variant,value", _cases(BAD_UNIT, VARIANTS) + _cases(BOOLEANS, JSON_VARIANTS))
@pytest.mark.parametrize(
    "where,field",
    [
        (lambda m: m[0]["metadata_items"][5]["properties"], "metadata_items.properties.confidence"),
        (lambda m: _object(m), "metadata_items.properties.uniqueness_score"),
        (
            lambda m: _object(m)["metadata_items"][0]["properties"],
            "metadata_items.properties.metadata_items.properties.confidence",
        ),
    ],
    ids=["issue confidence", "object uniqueness_score", "object issue confidence"],
)
def test_scores_and_confidences_outside_0_to_1_name_the_media_id_and_field(tmp_path, variant, value, where, field):
    media = items()
    name = field.rsplit(".", 1)[1]
    where(media)[name] = value
    with pytest.raises(SchemaError) as caught:
        _read(tmp_path, variant, media)
    assert caught.value.field == field
    assert caught.value.media_id == CAT
    assert CAT in str(caught.value), f"the message does not name the media id: {caught.value}"


@pytest.mark.parametrize(
    "variant,bbox",
    _cases([[10, 20], [10, 20, 30], [10, 20, 30, 40, 50], [], [1, 2, -3, 4], [1, 2, 3, -4]], VARIANTS)
    + _cases([[1, float("inf"), 3, 4], [float("nan"), 2, 3, 4], [1, None, 3, 4]], ["json export", "python list"])
    + _cases([[1, True, 3, 4], "10,20,30,40", 7], JSON_VARIANTS),
)
def test_bbox_that_is_not_4_finite_numbers_is_refused_when_read(tmp_path, variant, bbox):
    media = items()
    _object(media)["bbox"] = bbox  # [10, 20] used to open, then fail in ds[i] with "not enough values to unpack"
    with pytest.raises(SchemaError) as caught:
        _read(tmp_path, variant, media)
    assert caught.value.field == "metadata_items.properties.bbox"
    assert CAT in str(caught.value), f"the message does not name the media id: {caught.value}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_bbox_with_zero_size_negative_origin_or_absent_is_kept(tmp_path, variant):
    media = items()
    _object(media)["bbox"] = [-5, -2.5, 0, 0]
    media[1]["metadata_items"].append({"type": "object_label", "properties": {"category_name": "car", "bbox": None}})
    by_id = rows(_read(tmp_path, variant, media))
    assert by_id[CAT]["objects"][0]["bbox"] == [-5.0, -2.5, 0.0, 0.0]
    assert by_id[VIDEO_A]["objects"][0]["bbox"] is None


def test_booleans_in_typed_parquet_items_are_refused(tmp_path):
    def table(props):
        return pa.table(
            {
                "media_id": ["a", "b"],
                "file_name": ["a.jpg", "b.jpg"],
                "metadata_items": [[], [{"type": "issue", **props}]],
            }
        )

    # A writer of true makes a boolean column, which Arrow would cast to 1.0.
    error = schema_error(tmp_path / "conf", table({"properties": {"issue_type": "blur", "confidence": True}}))
    assert (error.field, error.media_id) == ("metadata_items.properties.confidence", "b")
    bbox = pa.table(
        {
            "media_id": ["a", "b"],
            "file_name": ["a.jpg", "b.jpg"],
            "metadata_items": [[], [{"type": "object_label", "properties": {"bbox": [True, False, True, True]}}]],
        }
    )
    error = schema_error(tmp_path / "bbox", bbox)
    assert (error.field, error.media_id) == ("metadata_items.properties.bbox", "b")


def test_a_wrongly_typed_property_names_the_first_media_id_at_fault(tmp_path):
    media = items()
    for item in media[1:]:
        item["metadata_items"] = [{"type": "issue", "properties": {"issue_type": "blur", "confidence": "0.5"}}]
    media[2]["metadata_items"][0]["properties"]["confidence"] = "very"
    table = json_strings_table(media)
    error = schema_error(tmp_path, table)
    assert error.field == "metadata_items.properties.confidence"
    assert error.media_id == VIDEO_B


def _texts_media(texts: dict[str, list], layout: str) -> list[dict]:
    """One row per letter of ``layout``, its metadata_items the list that letter names in ``texts``."""
    return [
        {"media_id": f"m{i}", "file_name": f"{i}.jpg", "metadata_items": texts[letter]}
        for i, letter in enumerate(layout)
    ]


_TEXTS = {
    "A": [{"type": "image_label", "properties": {"category_name": "cat", "source": "User"}}],
    "B": [{"type": "issue", "properties": {"issue_type": "blur", "confidence": 0.5}}],
    "X": [{"type": "issue", "properties": {"issue_type": "blur", "confidence": 1.5}}],
    "Y": [{"type": "issue", "properties": {"issue_type": "dark", "confidence": -0.1}}],
}


@pytest.mark.parametrize("layout, first_at_fault", [("ABAXBYX", "m3"), ("AABBYXY", "m4"), ("XAX", "m0")])
def test_texts_that_repeat_are_parsed_once_and_the_first_row_at_fault_is_named(tmp_path, layout, first_at_fault):
    """Rows repeating a JSON text take the items parsed from its first row; a bad value is still
    named at the first row that holds one, whichever text it is in and however often it repeats."""
    error = schema_error(tmp_path / "bad", json_strings_table(_texts_media(_TEXTS, layout)))
    assert (error.field, error.media_id) == ("metadata_items.properties.confidence", first_at_fault)
    good = "ABBAB"
    table = read_metadata(write_parquet(tmp_path / "good", json_strings_table(_texts_media(_TEXTS, good))).parent)
    assert table.column("labels").to_pylist() == [
        [{"category_name": "cat", "source": "User", "original_id": None}] if letter == "A" else [] for letter in good
    ]
    assert [[issue["confidence"] for issue in row] for row in table.column("issues").to_pylist()] == [
        [0.5] if letter == "B" else [] for letter in good
    ]


def test_first_seen_keeps_the_values_rows_hold_in_the_order_first_held():
    """A dictionary read from a file may hold values no row holds, in any order: the texts parsed
    (and checked) are those the rows hold, in their first row's order, a null row pointing at null."""
    stored = pa.DictionaryArray.from_arrays(pa.array([2, None, 2, 0], pa.int32()), pa.array(["a", "unused", "c"]))
    seen = metadata_items.first_seen(stored)
    assert seen.dictionary.to_pylist() == ["c", None, "a"]
    assert seen.to_pylist() == stored.to_pylist() == ["c", None, "c", "a"]
    assert metadata_items.first_seen(stored.slice(3)).dictionary.to_pylist() == ["a"]
    assert metadata_items.first_seen(pa.array(["x", None, "x"])).dictionary.to_pylist() == ["x", None]


def test_first_seen_of_a_dictionary_held_whole_in_order_keeps_its_values():
    """Parquet's reader gives a slice's dictionary so (every value held, first seen first): its
    values are the answer's, not a copy, and the rows read the same."""
    stored = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0, 2], pa.int32()), pa.array(["a", "b", None]))
    seen = metadata_items.first_seen(stored)
    assert seen.to_pylist() == stored.to_pylist() == ["a", "b", "a", None]
    assert seen.dictionary.buffers()[2].address == stored.dictionary.buffers()[2].address
    # One value fewer held, or the same values first seen in another order: taken, as before.
    assert metadata_items.first_seen(stored.slice(0, 3)).dictionary.to_pylist() == ["a", "b"]
    swapped = pa.DictionaryArray.from_arrays(pa.array([1, 0, 2], pa.int32()), stored.dictionary)
    assert metadata_items.first_seen(swapped).dictionary.to_pylist() == ["b", "a", None]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "where",
    [lambda m: m[0]["metadata_items"], lambda m: _object(m)["metadata_items"]],
    ids=["an item's metadata_items", "an object's metadata_items"],
)
def test_a_null_item_first_in_a_list_is_no_item(tmp_path, variant, where, expected):
    """Arrow's JSON reader, inferring types, builds an invalid list from ``[null, {...}]`` (its
    offsets run past its items): such a slice is read again, and the null is no item, as anywhere
    else in the list."""
    media = items()
    where(media).insert(0, None)
    assert _read(tmp_path, variant, media).to_pylist() == expected.to_pylist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_bbox_opening_with_null_is_refused(tmp_path, variant):
    media = items()
    _object(media)["bbox"] = [None, 20, 30, 40]
    with pytest.raises(SchemaError) as caught:
        _read(tmp_path, variant, media)
    assert caught.value.field == "metadata_items.properties.bbox"
    assert CAT in str(caught.value), f"the message does not name the media id: {caught.value}"


NUMBERS_AS_TEXT = [(7, "7"), (5.0, "5"), (-0.0, "-0"), (2.5, "2.5"), (1e20, "1e+20"), (10**20, "1e+20"), (True, "true")]


@pytest.mark.parametrize("value,text", NUMBERS_AS_TEXT)
def test_a_number_or_boolean_where_text_belongs_reads_the_same_whichever_reader_takes_it(tmp_path, value, text):
    """A category name written as a number (a class id, say) is that number's text: the same when
    Arrow's reader types the slice's column as numbers, and when a text beside it sends the slice
    to the per-row reader (which spelled 5.0 as "5.0" and true as "True": one label, two classes)."""
    alone = pa.table(
        {
            "media_id": ["a"],
            "file_path": ["a.jpg"],
            "metadata_items": [json.dumps([{"type": "image_label", "properties": {"category_name": value}}])],
        }
    )
    assert normalize(alone).column("labels").to_pylist() == [
        [{"category_name": text, "source": None, "original_id": None}]
    ]
    for variant in JSON_VARIANTS:  # beside the other items' names, which are text
        media = items()
        media[0]["metadata_items"][0]["properties"]["category_name"] = value
        labels = rows(_read(tmp_path / variant, variant, media))[CAT]["labels"]
        assert labels[0]["category_name"] == text, variant


@pytest.mark.parametrize("variant", JSON_VARIANTS)
@pytest.mark.parametrize("value", [2**63, -(2**64), 10**20, 1e300 * 10])
def test_a_whole_number_past_int64_is_refused_naming_the_field(tmp_path, variant, value):
    media = items()
    media[0]["metadata_items"][0]["properties"]["original_id"] = value
    with pytest.raises(SchemaError) as caught:
        _read(tmp_path, variant, media)
    assert caught.value.field == "metadata_items.properties.original_id"
    assert CAT in str(caught.value), f"the message does not name the media id: {caught.value}"


def test_the_largest_int64_is_read_exactly(tmp_path):
    media = items()
    media[0]["metadata_items"][0]["properties"]["original_id"] = 2**63 - 1
    media[1]["metadata_items"].append({"type": "image_label", "properties": {"original_id": "1"}})  # the per-row reader
    for variant in JSON_VARIANTS:
        assert rows(_read(tmp_path / variant, variant, media))[CAT]["labels"][0]["original_id"] == 2**63 - 1, variant


@pytest.mark.parametrize("variant", JSON_VARIANTS)
@pytest.mark.parametrize("beside_a_number_name", [False, True], ids=["typed by Arrow's reader", "read per row"])
@pytest.mark.parametrize("name,media_id", [("original_id", CAT), ("frame_number", VIDEO_B)], ids=["label", "frame"])
def test_a_whole_number_property_of_2_5_is_refused_whichever_reader_takes_it(
    tmp_path, variant, beside_a_number_name, name, media_id
):
    """Arrow's conversion of Python values truncates 2.5 into an int64 (the per-row reader, a bare
    list, a streamed export); Arrow's JSON reader refuses it. Refused on every path."""
    media = items()
    owner = next(m for m in media if m["media_id"] == media_id)
    next(i for i in owner["metadata_items"] if name in i["properties"])["properties"][name] = 2.5
    if beside_a_number_name:  # a number among the names: the slice is read per row, and the export by json.load
        media[1]["metadata_items"].append({"type": "image_label", "properties": {"category_name": 7}})
    with pytest.raises(SchemaError) as caught:
        _read(tmp_path, variant, media)
    assert caught.value.field == f"metadata_items.properties.{name}"
    assert media_id in str(caught.value), f"the message does not name the media id: {caught.value}"


def _with_properties_as_text(media_items):
    """Each item's ``properties`` as its JSON text: a Parquet writer's way with objects whose keys
    differ from item to item (list<struct<type: string, properties: string>>)."""
    for media in media_items:
        for item in media.get("metadata_items") or []:
            item["properties"] = json.dumps(item["properties"]) if item.get("properties") is not None else None
    return media_items


def test_properties_kept_as_json_text_read_as_the_objects_they_spell(tmp_path):
    nested = read_metadata(write_parquet(tmp_path / "nested", nested_table()).parent)
    as_text = _with_properties_as_text(items())
    table = nested_table(as_text)
    assert pa.types.is_string(table.schema.field("metadata_items").type.value_type.field("properties").type)
    read = read_metadata(write_parquet(tmp_path / "text", table).parent)
    assert read.to_pylist() == nested.to_pylist()


def test_properties_text_whose_unknown_keys_differ_in_type_reads_as_a_json_export_does(tmp_path):
    media_items = items()
    media_items[0]["metadata_items"][0]["properties"]["note"] = "text"
    media_items[1]["metadata_items"] = [{"type": "issue", "properties": {"issue_type": "blur", "note": 3}}]
    expected = read_metadata(write_json_export(tmp_path / "json", media_items).parent)
    as_text = read_metadata(
        write_parquet(tmp_path / "text", nested_table(_with_properties_as_text(media_items))).parent
    )
    assert as_text.select(["labels", "issues"]).to_pylist() == expected.select(["labels", "issues"]).to_pylist()


@pytest.mark.parametrize(
    ("properties", "says"),
    [("[1, 2]", "holds a list, not an object"), ('{"confidence": 0.5', "is not valid JSON"), ("[" * 100, "nests")],
)
def test_properties_text_that_is_no_object_is_refused_naming_the_row(tmp_path, properties, says):
    media_items = _with_properties_as_text(items())
    media_items[1]["metadata_items"] = [{"type": "issue", "properties": properties}]
    error = schema_error(tmp_path, nested_table(media_items))
    assert says in str(error) and repr(media_items[1]["media_id"]) in str(error)
