"""Metadata in every variant of contract §6 normalizes to one table, or fails naming the field at fault."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.metadata.helpers import (
    CAT,
    INFO,
    SCALARS,
    VIDEO_A,
    items,
    json_strings_table,
    nested_table,
    raw_columns,
    rows,
    schema_error,
    write_json_export,
    write_parquet,
)
from vl_datasets.errors import SchemaError
from vl_datasets.metadata import read
from vl_datasets.metadata.normalize import INFO_KEY, NORMALIZED_SCHEMA, info_of, is_normalized, normalize
from vl_datasets.metadata.read import metadata_slices, read_metadata, read_metadata_file


def test_json_export_normalizes_every_item_type(expected):
    assert expected.schema.equals(NORMALIZED_SCHEMA, check_metadata=False), f"got the schema\n{expected.schema}"
    assert is_normalized(expected)
    assert info_of(expected) == INFO
    cat = rows(expected)[CAT]
    assert cat["file_size_bytes"] == round(48.27 * 1024)
    assert (cat["height"], cat["width"], cat["uniqueness_score"]) == (375, 500, 0.8123)
    assert cat["labels"] == [
        {"category_name": "cat", "source": "User", "original_id": 3},
        {"category_name": "animal", "source": "Model", "original_id": -1},
        {"category_name": "tabby", "source": "Visual Layer", "original_id": -1},
    ]
    duplicates = [i for i in cat["issues"] if i["issue_type"] == "duplicates"]
    assert [(i["duplicate_group_id"], i["duplicate_threshold"], i["confidence"]) for i in duplicates] == [
        ("g-1", 0.96, 0.97),
        ("g-2", 1.0, 1.0),
    ]
    assert [i["issue_type"] for i in cat["issues"]] == ["duplicates", "duplicates", "blur", "mislabels"]
    mislabel = cat["issues"][3]
    assert (mislabel["suggested_label"], mislabel["description"]) == ("dog", "dog")
    assert cat["issues"][2]["suggested_label"] is None
    [obj] = cat["objects"]
    assert obj["bbox"] == [10.0, 20.0, 110.0, 95.5]
    assert (obj["category_name"], obj["source"], obj["original_id"], obj["uniqueness_score"]) == ("cat", "User", 7, 0.5)
    assert [i["issue_type"] for i in obj["issues"]] == ["label_outlier"]
    assert obj["tags"] == ["crop"]
    assert cat["tags"] == ["reviewed"]
    assert cat["captions"] == [{"text": "a tabby cat on a sofa", "source": "Visual Layer"}]
    assert cat["video_name"] is None
    assert cat["frame_timestamp_s"] is None


@pytest.mark.parametrize("variant", ["json_strings", "nested", "nested_chunked", "bare_list", "python_list"])
def test_every_variant_normalizes_to_the_same_table(tmp_path, expected, variant):
    if variant == "json_strings":
        table = read_metadata(write_parquet(tmp_path, json_strings_table()).parent)
    elif variant == "nested":
        table = read_metadata(write_parquet(tmp_path, nested_table()).parent)
    elif variant == "nested_chunked":
        table = read_metadata_file(write_parquet(tmp_path, nested_table(), row_group_size=1))
        assert table.column("labels").num_chunks > 1
    elif variant == "bare_list":  # json.load fallback: Arrow's reader takes objects, not a bare list
        (tmp_path / "metadata.json").write_text(json.dumps(items()), encoding="utf-8")
        table = read_metadata(tmp_path)
    else:
        table = normalize(items())
    assert table.schema.equals(expected.schema, check_metadata=False)
    assert table.to_pylist() == expected.to_pylist()


def test_older_image_filename_column(tmp_path):
    media = items()
    columns = raw_columns(media, [n for n in SCALARS if n not in ("file_path", "file_name")])
    columns["image_filename"] = [m["file_path"] for m in media]
    table = read_metadata(write_parquet(tmp_path, pa.table(columns)).parent)
    assert table.column("file_path").to_pylist() == [m["file_path"] for m in media]
    assert table.column("file_name").to_pylist() == [m["file_name"] for m in media]  # the base name
    assert "image_filename" not in table.column_names
    assert table.column("labels").to_pylist() == [[], [], [], []]


def test_a_row_without_a_file_name_takes_its_paths_base_name_and_the_others_keep_theirs():
    media = items()
    media[1]["file_name"] = None
    media[2]["file_name"] = "named-otherwise.jpg"
    table = normalize(media)
    expected = [m["file_name"] for m in items()]
    expected[1] = media[1]["file_path"].rsplit("/", 1)[-1]
    expected[2] = "named-otherwise.jpg"
    assert table.column("file_name").to_pylist() == expected


def test_absent_uniqueness_score_is_null(tmp_path):
    columns = raw_columns(items(), [n for n in SCALARS if n != "uniqueness_score"])
    table = read_metadata(write_parquet(tmp_path, pa.table(columns)).parent)
    assert table.schema.field("uniqueness_score").type == pa.float64()
    assert table.column("uniqueness_score").null_count == 4


def test_unknown_columns_are_kept_after_the_known_ones(tmp_path):
    table = nested_table().append_column("split", pa.array(["train", "val", "val", "test"]))
    table = table.append_column("labels", pa.array([1, 2, 3, 4]))  # collides with a normalized name
    normalized = read_metadata(write_parquet(tmp_path, table).parent)
    assert normalized.column_names[: len(NORMALIZED_SCHEMA)] == NORMALIZED_SCHEMA.names
    assert normalized.column_names[len(NORMALIZED_SCHEMA) :] == ["split", "raw_labels"]
    assert normalized.column("split").to_pylist() == ["train", "val", "val", "test"]
    media = items()
    media[0]["license"] = {"name": "cc-by"}
    assert normalize(media).column("license").to_pylist()[0] == {"name": "cc-by"}


@pytest.mark.parametrize(
    "order",
    [["raw_labels", "labels"], ["labels", "raw_labels", "raw_raw_labels"], ["raw_labels"]],
)
def test_a_column_renamed_for_a_collision_never_lands_on_another(tmp_path, order):
    """``labels`` collides with a normalized name and becomes ``raw_labels``; the export's own
    ``raw_labels`` (and ``raw_raw_labels``) then takes one more ``raw_``, whatever the order."""
    table = nested_table()
    for name in order:
        table = table.append_column(name, pa.array([f"{name}-{i}" for i in range(4)]))
    normalized = read_metadata(write_parquet(tmp_path, table).parent)
    assert normalized.column_names[len(NORMALIZED_SCHEMA) :] == [f"raw_{name}" for name in order]
    for name in order:
        assert normalized.column(f"raw_{name}").to_pylist() == [f"{name}-{i}" for i in range(4)], name


def test_a_renamed_column_is_named_alike_in_every_streamed_slice(tmp_path, monkeypatch):
    """Only the first slice holds ``raw_labels``: ``labels`` is still ``raw_labels`` in each."""
    media = items()
    for i, item in enumerate(media):
        item["labels"] = f"labels-{i}"
    media[0]["raw_labels"] = "raw_labels-0"
    monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)
    slices = [t for t in metadata_slices(write_json_export(tmp_path, media), batch_rows=2).tables if t.num_rows]
    assert [t.column("raw_labels").to_pylist() for t in slices] == [["labels-0", "labels-1"], ["labels-2", "labels-3"]]
    assert slices[0].column("raw_raw_labels").to_pylist() == ["raw_labels-0", None]


def test_empty_export(tmp_path):
    table = read_metadata(write_json_export(tmp_path, []).parent)
    assert table.num_rows == 0
    assert table.schema.equals(NORMALIZED_SCHEMA, check_metadata=False), f"got the schema\n{table.schema}"


_SIZE_CASES = [
    ("48.27KB", 49428),
    ("3.38MB", 3544187),
    ("512B", 512),
    ("1.2GB", 1288490189),
    ("12 kb", 12288),
    ("5KiB", 5120),
    ("1024", 1024),
    ("0.5 TB", 549755813888),
    ("", None),
    ("big", None),
    ("3MBB", None),
    ("-1KB", None),
    (" 1.5 kib ", 1536),
    ("2.", 2),
    (".5mb", 524288),
    ("5Ki", 5120),
    ("3iB", None),
    ("1.2.3KB", None),
    ("12 K B", None),
    ("1e3KB", None),
    ("1\u00a0KB", None),  # no-break space: not the whitespace a size may hold
    ("\u0661KB", None),  # an Arabic-Indic digit
    ("5\u212aB", None),  # the Kelvin sign, which case-insensitive matching takes for K
    (None, None),
]


@pytest.mark.parametrize("text, size", _SIZE_CASES)
def test_file_sizes_use_binary_units(text, size):
    media = items()[:1]
    media[0]["file_size"] = text
    assert normalize(media).column("file_size_bytes").to_pylist() == [size]


def test_file_sizes_stored_as_numbers_are_rounded_and_those_no_integer_holds_are_null():
    raw = pa.table(
        {
            "media_id": ["a", "b", "c", "d", "e"],
            "file_path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
            "file_size": [1024.4, float("nan"), float("inf"), 1e30, None],
        }
    )
    assert normalize(raw).column("file_size_bytes").to_pylist() == [1024, None, None, None, None]


def test_file_sizes_of_a_column_are_each_rows_own():
    """Every case at once, repeated in another order and split across chunks: a row's size is its
    own text's, whichever rows share that text (each distinct text is read once)."""
    cases = _SIZE_CASES + _SIZE_CASES[::-1] + _SIZE_CASES[::3]
    texts = [text for text, _ in cases]
    raw = pa.table(
        {
            "media_id": [f"m{i}" for i in range(len(cases))],
            "file_path": [f"{i}.jpg" for i in range(len(cases))],
            "file_size": pa.chunked_array([texts[:7], texts[7:30], [], texts[30:]], pa.string()),
        }
    )
    assert normalize(raw).column("file_size_bytes").to_pylist() == [size for _, size in cases]
    stored_as_categories = raw.set_column(2, "file_size", pc.dictionary_encode(raw.column("file_size")))
    assert normalize(stored_as_categories).column("file_size_bytes").to_pylist() == [size for _, size in cases]


def test_normalize_is_idempotent(expected):
    assert normalize(expected) is expected
    assert INFO_KEY in expected.schema.metadata


def test_missing_media_id(tmp_path):
    error = schema_error(tmp_path, nested_table().drop_columns(["media_id"]))
    assert error.field == "media_id"
    assert "media_id" in str(error)


def test_missing_every_image_name_column(tmp_path):
    error = schema_error(tmp_path, nested_table().drop_columns(["file_path", "file_name"]))
    assert error.field == "file_path"
    assert "image_filename" in str(error)


def test_non_numeric_uniqueness_score(tmp_path):
    table = nested_table().set_column(7, "uniqueness_score", pa.array(["high", "low", None, "0.5"]))
    error = schema_error(tmp_path, table)
    assert error.field == "uniqueness_score"
    assert "uniqueness_score" in str(error)


def test_duplicate_and_null_media_ids(tmp_path):
    media = items()
    media[3]["media_id"] = CAT
    error = schema_error(tmp_path / "dup", nested_table(media))
    assert error.field == "media_id"
    assert CAT in str(error)
    media[3]["media_id"] = None
    assert schema_error(tmp_path / "null", nested_table(media)).field == "media_id"


@pytest.mark.parametrize("name", ["media_id", "file_path", "metadata_items", "url", "extra"])
def test_a_column_name_two_parquet_columns_share_is_refused_naming_it(tmp_path, name):
    table = json_strings_table().append_column("extra", pa.array([1, 2, 3, 4]))
    table = pa.Table.from_arrays([*table.columns, table[name]], names=[*table.column_names, name])
    message = f"the column {name!r} appears more than once"
    error = schema_error(tmp_path, table)  # the whole file read at once
    assert error.field == name and message in str(error), error
    with pytest.raises(SchemaError, match=message) as caught:  # read a record batch at a time
        list(metadata_slices(tmp_path / "metadata.parquet").tables)
    assert caught.value.field == name
    with pytest.raises(SchemaError, match=message):
        normalize(table)


def _read_variant(tmp_path, variant, media):
    """``media`` read the way one variant of contract §6 is read: from a file, or from Python."""
    if variant == "json export":  # Arrow's JSON reader
        return read_metadata(write_json_export(tmp_path, media).parent)
    if variant == "bare list":  # json.load and table_from_media_items
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "metadata.json").write_text(json.dumps(media), encoding="utf-8")
        return read_metadata(tmp_path)
    if variant == "parquet, JSON strings":
        return read_metadata(write_parquet(tmp_path, json_strings_table(media)).parent)
    return normalize(media, source="python items")


# Where a value may have any JSON type; a parquet column has one type (tested apart).
JSON_VARIANTS = ["json export", "bare list", "python list"]
VARIANTS = [*JSON_VARIANTS, "parquet, JSON strings"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", ["height", "width"])
def test_a_negative_image_size_is_refused_by_its_media_id(tmp_path, variant, size):
    """A size below 0 would scale an item's boxes by a negative factor, mirroring them silently."""
    media = items()
    media[2][size] = -375
    media[3][size] = 0  # unknown, as absent: boxes are then not scaled, and an error says so
    with pytest.raises(SchemaError, match=rf"media_id '{media[2]['media_id']}' \(row 2\): {size} is -375") as caught:
        _read_variant(tmp_path, variant, media)
    assert caught.value.field == size
    media[2][size] = None
    assert _read_variant(tmp_path / "fixed", variant, media).column(size).to_pylist()[2:4] == [None, 0]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("item", [[], [["type", "image_label"], ["properties", {"category_name": "cat"}]], 7, "cat"])
def test_an_item_that_is_not_an_object_is_refused_by_its_media_id(tmp_path, variant, item):
    """Arrow's conversion of Python values reads a list where it expects an object as (key, value)
    pairs: where every item converted was ``[]`` (one row's), each read as an item of no type."""
    nested = {"type": "object_label", "properties": {"category_name": "cat", "metadata_items": [item]}}
    for case in range(4):
        media = items()[: 2 if case < 2 else 4]
        held = media[1]["metadata_items"]
        media[1]["metadata_items"] = [[item], [item, item], [*held, item], [nested]][case]  # an object's own too
        media[0]["metadata_items"] = []
        with pytest.raises(SchemaError, match=rf"media_id '{media[1]['media_id']}' \(row 1\).* not an object"):
            _read_variant(tmp_path / str(case), variant, media)


@pytest.mark.parametrize(
    "variant,score",
    [(v, s) for v in VARIANTS for s in (float("nan"), -0.7, 5.0)]
    + [(v, s) for v in JSON_VARIANTS for s in (True, False)],
)
def test_uniqueness_score_outside_0_to_1_names_the_media_id(tmp_path, variant, score):
    media = items()
    media[1]["uniqueness_score"] = score  # true is not read as 1.0, nor NaN counted as below any threshold
    with pytest.raises(SchemaError) as caught:
        _read_variant(tmp_path, variant, media)
    assert caught.value.field == "uniqueness_score"
    assert caught.value.media_id == VIDEO_A
    assert VIDEO_A in str(caught.value), f"the message does not name the media id: {caught.value}"
    assert "uniqueness_score" in str(caught.value)


@pytest.mark.parametrize("column", [[None, float("nan"), 0.5, 0.5], [0.5, -0.1, 0.5, 0.5], [None, True, None, None]])
def test_parquet_uniqueness_score_outside_0_to_1_names_the_media_id(tmp_path, column):
    type_ = pa.bool_() if True in column else pa.float64()  # a boolean column, as a writer of true would make
    table = nested_table().set_column(7, "uniqueness_score", pa.array(column, type_))
    error = schema_error(tmp_path, table)
    assert (error.field, error.media_id) == ("uniqueness_score", VIDEO_A)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scores_of_0_and_1_and_absent_scores_are_kept(tmp_path, variant):
    media = items()
    media[0]["uniqueness_score"], media[1]["uniqueness_score"] = 0, 1.0
    del media[3]["uniqueness_score"]
    media[0]["metadata_items"][5]["properties"]["confidence"] = 0  # the blur issue
    table = _read_variant(tmp_path, variant, media)
    assert table.column("uniqueness_score").to_pylist() == [0.0, 1.0, None, None]
    assert rows(table)[CAT]["issues"][2]["confidence"] == 0.0


@pytest.mark.parametrize("variant", [*JSON_VARIANTS, "streamed json export"])
@pytest.mark.parametrize("field", ["height", "width"])
def test_a_height_or_width_that_is_no_whole_number_is_refused_not_truncated(tmp_path, monkeypatch, variant, field):
    """Arrow's reader refuses 2.5 as an int32; its conversion from Python objects (a bare list, a
    streamed export, Python items) made it 2: the same file opened or not by its size."""
    media = items()
    media[1][field] = 2.5
    with pytest.raises(SchemaError) as caught:
        if variant == "streamed json export":  # as an index is built from an export of 64 MiB or more
            monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)
            list(metadata_slices(write_json_export(tmp_path, media), batch_rows=2).tables)
        else:
            _read_variant(tmp_path, variant, media)
    assert caught.value.field == field
    assert caught.value.media_id == VIDEO_A
    assert VIDEO_A in str(caught.value), f"the message does not name the media id: {caught.value}"
    # A whole number written as a float is that number, beside numbers or beside text ("3.0" was
    # refused where another item's field is text).
    media[1][field] = 3.0
    for other in (375, "17"):
        media[0][field] = other
        if variant != "streamed json export":
            read_back = rows(_read_variant(tmp_path / f"whole-{other}", variant, media))
            assert (read_back[CAT][field], read_back[VIDEO_A][field]) == (int(other), 3)


@pytest.mark.parametrize("variant", JSON_VARIANTS)
@pytest.mark.parametrize("media_id", [5, 5.5, True, ["a"], {"id": "a"}])
def test_media_id_that_is_not_a_string(tmp_path, variant, media_id):
    media = items()
    media[2]["media_id"] = media_id  # Arrow would read 5 as "5"
    with pytest.raises(SchemaError) as caught:
        _read_variant(tmp_path, variant, media)
    assert caught.value.field == "media_id"
    assert "row 2" in str(caught.value), f"the message does not name the row: {caught.value}"


def test_parquet_media_ids_that_are_numbers(tmp_path):
    table = nested_table().set_column(0, "media_id", pa.array([10, 11, 12, 13]))
    error = schema_error(tmp_path, table)
    assert error.field == "media_id"
    assert "10" in str(error)
