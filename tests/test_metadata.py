"""Metadata in every variant of contract §6 normalizes to one table; image paths resolve per §5."""

from __future__ import annotations

import copy
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vl_datasets.metadata import items as metadata_items
from vl_datasets.errors import ConfigurationError, ImageNotFoundError, SchemaError
from vl_datasets.metadata.image_paths import resolve_image_paths
from vl_datasets.metadata.normalize import INFO_KEY, NORMALIZED_SCHEMA, VERSION_KEY, info_of, is_normalized, normalize
from vl_datasets.metadata.read import read_metadata, read_metadata_file
from vl_datasets.metadata.table_file import read_normalized, write_normalized

INFO = {"schema_version": "1.1", "dataset": "pets", "description": "", "dataset_url": "https://app.visual-layer.com/d",
        "export_time": "2025-02-10T14:41:14", "dataset_creation_time": "2025-02-01T00:00:00",
        "exported_by": "someone", "total_media_items": 4}

CAT, VIDEO_A, VIDEO_B, BARE = ("9f1c1c8e-0000-4000-8000-00000000000" + str(i) for i in range(4))


def _label(name, source, original_id=-1):
    return {"type": "image_label", "properties": {"category_name": name, "source": source, "original_id": original_id}}


def _issue(issue_type, confidence, **extra):
    return {"type": "issue", "properties": {"issue_type": issue_type, "confidence": confidence, **extra}}


MEDIA_ITEMS = [
    {
        "media_id": CAT, "media_type": "image", "file_name": "cat_01.jpg", "file_path": "train/cat/cat_01.jpg",
        "file_size": "48.27KB", "height": 375, "width": 500, "uniqueness_score": 0.8123,
        "url": f"https://app.visual-layer.com/dataset/d/data?media_id={CAT}", "cluster_id": "c-1",
        "metadata_items": [
            _label("cat", "User", 3), _label("animal", "Model"), _label("tabby", "Visual Layer"),
            _issue("duplicates", 0.97, duplicate_group_id="g-1", duplicate_threshold=0.96),
            _issue("duplicates", 1, duplicate_group_id="g-2", duplicate_threshold=1.0),
            _issue("blur", 0.31),
            _issue("mislabels", 0.88, issues_description="dog"),
            {"type": "object_label", "properties": {
                "bbox": [10, 20, 110, 95.5], "category_name": "cat", "source": "User", "original_id": 7,
                "uniqueness_score": 0.5, "url": "https://app.visual-layer.com/o/1",
                "metadata_items": [
                    _issue("label_outlier", 0.6),
                    {"type": "user_tag", "properties": {"tag_name": "crop", "assigned_date": "2025-01-01"}}]}},
            {"type": "user_tag", "properties": {"tag_name": "reviewed", "assigned_date": "2025-01-02T10:00:00"}},
            {"type": "caption", "properties": {"text": "a tabby cat on a sofa", "source": "Visual Layer"}},
        ],
    },
    {
        "media_id": VIDEO_A, "media_type": "video_frame", "file_name": "output_000001.jpg",
        "file_path": "videos/a.mp4/output_000001.jpg", "file_size": "3.38MB", "height": 720, "width": 1280,
        "uniqueness_score": 0.25, "url": "u2", "cluster_id": "c-2",
        "metadata_items": [
            {"type": "video_info", "properties": {"video_name": "a.mp4", "frame_timestamp": 1.5}},
            {"type": "caption", "properties": {"caption": "a street", "source": "BLIP"}},
        ],
    },
    {
        "media_id": VIDEO_B, "media_type": "video_frame", "file_name": "output_000001.jpg",
        "file_path": "videos/b.mp4/output_000001.jpg", "file_size": "512B", "height": 720, "width": 1280,
        "uniqueness_score": None, "url": "u3", "cluster_id": "c-2",
        "metadata_items": [{"type": "video_info", "properties": {
            "frame_number": 17, "video_id": "vid-b", "timestamp": "00:01:02.567"}}],
    },
    {
        "media_id": BARE, "media_type": "image", "file_name": "bare.png", "file_path": "bare.png",
        "file_size": "1.2GB", "height": 10, "width": 12, "uniqueness_score": 0.5, "url": "u4", "cluster_id": "c-3",
    },
]

SCALARS = ("media_id", "media_type", "file_name", "file_path", "file_size", "height", "width", "uniqueness_score",
           "url", "cluster_id")


def items():
    return copy.deepcopy(MEDIA_ITEMS)


def write_json_export(folder, media_items=None, info=INFO, indent=None):
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"info": info, "media_items": items() if media_items is None else media_items}
    (folder / "metadata.json").write_text(json.dumps(payload, indent=indent), encoding="utf-8")
    return folder / "metadata.json"


def raw_columns(media_items, names=SCALARS):
    return {name: [m.get(name) for m in media_items] for name in names if any(name in m for m in media_items)}


def write_parquet(folder, table, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "metadata.parquet", **kwargs)
    return folder / "metadata.parquet"


def json_strings_table(media_items=None):
    media_items = items() if media_items is None else media_items
    metadata = [json.dumps(m["metadata_items"]) if "metadata_items" in m else None for m in media_items]
    return pa.table(dict(raw_columns(media_items), metadata_items=metadata))


def nested_table(media_items=None):
    media_items = items() if media_items is None else media_items
    # pyarrow infers list<struct<type, properties: struct<union of the keys it saw>>>, as a writer would.
    return pa.table(dict(raw_columns(media_items), metadata_items=[m.get("metadata_items") for m in media_items]))


def rows(table):
    return {row["media_id"]: row for row in table.to_pylist()}


@pytest.fixture
def expected(tmp_path):
    return read_metadata(write_json_export(tmp_path / "json").parent)


# ---- the normalized table ---------------------------------------------------------------------------

def test_json_export_normalizes_every_item_type(expected):
    assert expected.schema.equals(NORMALIZED_SCHEMA, check_metadata=False)
    assert is_normalized(expected)
    assert info_of(expected) == INFO
    cat = rows(expected)[CAT]
    assert cat["file_size_bytes"] == round(48.27 * 1024)
    assert (cat["height"], cat["width"], cat["uniqueness_score"]) == (375, 500, 0.8123)
    assert cat["labels"] == [{"category_name": "cat", "source": "User", "original_id": 3},
                             {"category_name": "animal", "source": "Model", "original_id": -1},
                             {"category_name": "tabby", "source": "Visual Layer", "original_id": -1}]
    duplicates = [i for i in cat["issues"] if i["issue_type"] == "duplicates"]
    assert [(i["duplicate_group_id"], i["duplicate_threshold"], i["confidence"]) for i in duplicates] == [
        ("g-1", 0.96, 0.97), ("g-2", 1.0, 1.0)]
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
    assert cat["video_name"] is None and cat["frame_timestamp_s"] is None


def test_both_video_info_and_caption_spellings(expected):
    by_id = rows(expected)
    a, b = by_id[VIDEO_A], by_id[VIDEO_B]
    assert (a["video_name"], a["frame_timestamp_s"], a["frame_number"]) == ("a.mp4", 1.5, None)
    assert (b["video_id"], b["frame_number"]) == ("vid-b", 17)
    assert b["frame_timestamp_s"] == pytest.approx(62.567)
    assert a["captions"] == [{"text": "a street", "source": "BLIP"}]
    assert (a["file_size_bytes"], b["file_size_bytes"]) == (round(3.38 * 1024 ** 2), 512)
    assert b["uniqueness_score"] is None


def test_item_without_metadata_items_has_empty_lists(expected):
    bare = rows(expected)[BARE]
    assert [bare[c] for c in ("labels", "issues", "objects", "captions", "tags")] == [[], [], [], [], []]
    assert bare["file_size_bytes"] == round(1.2 * 1024 ** 3)


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


def test_pretty_printed_json_and_json_strings_with_newlines(tmp_path, expected):
    assert read_metadata(write_json_export(tmp_path / "a", indent=2).parent).to_pylist() == expected.to_pylist()
    media = items()
    table = pa.table(dict(raw_columns(media), metadata_items=[
        json.dumps(m["metadata_items"], indent=1) if "metadata_items" in m else "" for m in media]))
    assert normalize(table).to_pylist() == expected.to_pylist()


def test_json_strings_the_fast_reader_refuses_are_coerced_per_slice(monkeypatch, expected):
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 2)
    media = items()
    media[2]["metadata_items"][0]["properties"]["frame_number"] = "17"  # a string where a number belongs
    media[1]["metadata_items"][0]["properties"]["frame_timestamp"] = "1.5"
    assert normalize(json_strings_table(media)).to_pylist() == expected.to_pylist()
    assert normalize(media).to_pylist() == expected.to_pylist()


def test_json_export_with_odd_types_falls_back_to_json_load(tmp_path, expected):
    media = items()
    media[0]["height"] = 375.0
    media[1]["metadata_items"][0]["properties"]["frame_timestamp"] = "1.5"
    table = read_metadata(write_json_export(tmp_path, media).parent)
    assert table.to_pylist() == expected.to_pylist()
    assert info_of(table) == INFO


def test_json_strings_read_with_inferred_types_slice_by_slice(monkeypatch, expected):
    calls = []
    real = metadata_items._read_json_fast
    monkeypatch.setattr(metadata_items, "_read_json_fast",
                        lambda strings, *, infer: calls.append(infer) or real(strings, infer=infer))
    monkeypatch.setattr(metadata_items, "JSON_SLICE_ROWS", 1)  # every row's types inferred apart (bbox: int, float)
    assert normalize(json_strings_table()).to_pylist() == expected.to_pylist()
    assert calls == [True] * 4  # assigned_date, inferred as a timestamp, forces no slower re-read


def test_date_like_text_stays_text(tmp_path):
    media = items()[:1]
    media[0]["file_name"] = "2025-01-01"
    media[0]["metadata_items"] = [{"type": "caption", "properties": {"text": "2025-01-01", "source": "User"}},
                                  {"type": "user_tag", "properties": {"tag_name": "2025-01-02T10:00:00"}}]
    for table in (read_metadata(write_json_export(tmp_path / "json", media).parent),
                  normalize(json_strings_table(media)), normalize(nested_table(media))):
        row = table.to_pylist()[0]
        assert row["file_name"] == "2025-01-01"
        assert row["captions"] == [{"text": "2025-01-01", "source": "User"}]
        assert row["tags"] == ["2025-01-02T10:00:00"]


def test_item_types_that_change_between_items(tmp_path, expected):
    media = items()
    media[0]["metadata_items"][3]["properties"]["confidence"] = "0.97"  # a string among numbers
    media[3]["metadata_items"] = []
    want = expected.to_pylist()
    assert read_metadata(write_json_export(tmp_path / "json", media).parent).to_pylist() == want
    assert normalize(json_strings_table(media)).to_pylist() == want
    assert normalize(media).to_pylist() == want


def test_older_image_filename_column(tmp_path):
    media = items()
    columns = raw_columns(media, [n for n in SCALARS if n not in ("file_path", "file_name")])
    columns["image_filename"] = [m["file_path"] for m in media]
    table = read_metadata(write_parquet(tmp_path, pa.table(columns)).parent)
    assert table.column("file_path").to_pylist() == [m["file_path"] for m in media]
    assert table.column("file_name").to_pylist() == [m["file_name"] for m in media]  # the base name
    assert "image_filename" not in table.column_names
    assert table.column("labels").to_pylist() == [[], [], [], []]


def test_absent_uniqueness_score_is_null(tmp_path):
    columns = raw_columns(items(), [n for n in SCALARS if n != "uniqueness_score"])
    table = read_metadata(write_parquet(tmp_path, pa.table(columns)).parent)
    assert table.schema.field("uniqueness_score").type == pa.float64()
    assert table.column("uniqueness_score").null_count == 4


def test_unknown_columns_are_kept_after_the_known_ones(tmp_path):
    table = nested_table().append_column("split", pa.array(["train", "val", "val", "test"]))
    table = table.append_column("labels", pa.array([1, 2, 3, 4]))  # collides with a normalized name
    normalized = read_metadata(write_parquet(tmp_path, table).parent)
    assert normalized.column_names[:len(NORMALIZED_SCHEMA)] == NORMALIZED_SCHEMA.names
    assert normalized.column_names[len(NORMALIZED_SCHEMA):] == ["split", "raw_labels"]
    assert normalized.column("split").to_pylist() == ["train", "val", "val", "test"]
    media = items()
    media[0]["license"] = {"name": "cc-by"}
    assert normalize(media).column("license").to_pylist()[0] == {"name": "cc-by"}


def test_parquet_preferred_over_json(tmp_path):
    write_json_export(tmp_path)
    write_parquet(tmp_path, nested_table(items()[:1]))
    assert read_metadata(tmp_path).num_rows == 1


def test_empty_export(tmp_path):
    table = read_metadata(write_json_export(tmp_path, []).parent)
    assert table.num_rows == 0
    assert table.schema.equals(NORMALIZED_SCHEMA, check_metadata=False)


@pytest.mark.parametrize("text, size", [
    ("48.27KB", 49428), ("3.38MB", 3544187), ("512B", 512), ("1.2GB", 1288490189), ("12 kb", 12288),
    ("5KiB", 5120), ("1024", 1024), ("0.5 TB", 549755813888), ("", None), ("big", None), ("3MBB", None),
    ("-1KB", None), (None, None),
])
def test_file_sizes_use_binary_units(text, size):
    media = items()[:1]
    media[0]["file_size"] = text
    assert normalize(media).column("file_size_bytes").to_pylist() == [size]


# ---- errors ---------------------------------------------------------------------------------------

def _schema_error(tmp_path, table) -> SchemaError:
    path = write_parquet(tmp_path, table)
    with pytest.raises(SchemaError) as caught:
        read_metadata_file(path)
    assert str(path) in str(caught.value)
    return caught.value


def test_missing_media_id(tmp_path):
    error = _schema_error(tmp_path, nested_table().drop_columns(["media_id"]))
    assert error.field == "media_id" and "media_id" in str(error)


def test_missing_every_image_name_column(tmp_path):
    error = _schema_error(tmp_path, nested_table().drop_columns(["file_path", "file_name"]))
    assert error.field == "file_path" and "image_filename" in str(error)


def test_non_numeric_uniqueness_score(tmp_path):
    table = nested_table().set_column(7, "uniqueness_score", pa.array(["high", "low", None, "0.5"]))
    error = _schema_error(tmp_path, table)
    assert error.field == "uniqueness_score" and "uniqueness_score" in str(error)


def test_duplicate_and_null_media_ids(tmp_path):
    media = items()
    media[3]["media_id"] = CAT
    error = _schema_error(tmp_path / "dup", nested_table(media))
    assert error.field == "media_id" and CAT in str(error)
    media[3]["media_id"] = None
    assert _schema_error(tmp_path / "null", nested_table(media)).field == "media_id"


def test_invalid_json_names_the_file(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}, "media_items": [{"media_id": "a",', encoding="utf-8")
    with pytest.raises(SchemaError, match="metadata.json"):
        read_metadata(tmp_path)


def test_json_without_media_items(tmp_path):
    (tmp_path / "metadata.json").write_text('{"info": {}}', encoding="utf-8")
    with pytest.raises(SchemaError) as caught:
        read_metadata(tmp_path)
    assert caught.value.field == "media_items"


def test_no_metadata_file_names_the_folder(tmp_path):
    with pytest.raises(SchemaError, match=str(tmp_path)):
        read_metadata(tmp_path)


def test_invalid_json_string_in_metadata_items(tmp_path):
    table = json_strings_table()
    strings = table.column("metadata_items").to_pylist()
    strings[1] = strings[1][:-3]
    error = _schema_error(tmp_path, table.set_column(table.column_names.index("metadata_items"), "metadata_items",
                                                      pa.array(strings)))
    assert error.field == "metadata_items" and "row 1" in str(error)


def test_wrongly_typed_item_property(tmp_path):
    media = items()
    media[0]["metadata_items"][3]["properties"]["confidence"] = "very"
    with pytest.raises(SchemaError) as caught:
        normalize(media, source="x.json")
    assert caught.value.field == "metadata_items.properties.confidence"
    nested = pa.table({"media_id": ["a"], "file_name": ["a.jpg"], "metadata_items": pa.array(
        [[{"type": "issue", "properties": {"issue_type": "blur", "confidence": "very"}}]])})
    error = _schema_error(tmp_path, nested)
    assert error.field == "metadata_items.properties.confidence"


def test_schema_error_pickles_with_its_field():
    import pickle

    error = pickle.loads(pickle.dumps(SchemaError("boom", field="media_id")))
    assert (str(error), error.field) == ("boom", "media_id")


# ---- the normalized cache -------------------------------------------------------------------------

def test_normalized_round_trip(tmp_path, expected):
    write_normalized(expected, tmp_path / "n.arrow")
    again = read_normalized(tmp_path / "n.arrow")
    assert again.schema.equals(expected.schema, check_metadata=True)
    assert again.equals(expected)
    assert info_of(again) == INFO


def test_cache_from_another_version_is_rebuilt(tmp_path, expected):
    stale = expected.replace_schema_metadata({**expected.schema.metadata, VERSION_KEY: b"0"})
    with pa.ipc.new_file(str(tmp_path / "n.arrow"), stale.schema) as writer:  # a readable file, older version
        writer.write_table(stale)
    assert read_normalized(tmp_path / "n.arrow") is None
    assert read_normalized(tmp_path / "missing.arrow") is None
    (tmp_path / "junk.arrow").write_bytes(b"not an arrow file")
    assert read_normalized(tmp_path / "junk.arrow") is None
    with pytest.raises(SchemaError):
        write_normalized(stale, tmp_path / "other.arrow")


def test_read_metadata_reuses_and_invalidates_its_cache(tmp_path, monkeypatch):
    from vl_datasets.metadata import read as metadata

    export = write_json_export(tmp_path / "export").parent
    cache = tmp_path / "normalized.arrow"
    first = read_metadata(export, cache_path=cache)
    assert cache.is_file() and not list(tmp_path.glob(".*.tmp"))
    calls = []
    real = metadata.read_metadata_file
    monkeypatch.setattr(metadata, "read_metadata_file", lambda path: calls.append(path) or real(path))
    assert read_metadata(export, cache_path=cache).equals(first)
    assert calls == []
    write_json_export(export, items()[:2])  # another export in the same folder: another size
    assert read_metadata(export, cache_path=cache).num_rows == 2
    assert len(calls) == 1


def test_normalize_is_idempotent(expected):
    assert normalize(expected) is expected
    assert INFO_KEY in expected.schema.metadata


# ---- image resolution ---------------------------------------------------------------------------

def _resolve(members, **kwargs):
    return resolve_image_paths(normalize(items()), members, **kwargs).to_pylist()


def test_resolution_prefers_file_path_then_file_name():
    members = ["images/train/cat/cat_01.jpg", "images/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg",
               "images/videos/b.mp4/output_000001.jpg", "images/bare.png"]
    assert _resolve(members) == members[:1] + members[2:]
    assert _resolve(members[1:])[0] == "images/cat_01.jpg"


def test_resolution_by_unique_base_name_and_by_media_id():
    members = ["images/elsewhere/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg",
               "images/videos/b.mp4/output_000001.jpg", f"images/{BARE}.PNG", "metadata.json"]
    assert _resolve(members) == [members[0], members[1], members[2], members[3]]


def test_root_relative_paths_that_already_start_with_images():
    table = normalize([{"media_id": "m1", "file_name": "images/x/a.jpg"},
                       {"media_id": "m2", "file_path": "images/y/b.jpg", "file_name": "b.jpg"}])
    assert resolve_image_paths(table, ["images/x/a.jpg", "images/y/b.jpg", "images/z/b.jpg"]).to_pylist() == [
        "images/x/a.jpg", "images/y/b.jpg"]


def test_ambiguous_file_name_names_media_id_and_candidates():
    members = ["images/train/cat/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg", "images/x/output_000001.jpg",
               "images/y/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError) as caught:
        _resolve(members, on_missing="null")  # ambiguity is never dropped silently
    assert caught.value.media_id == VIDEO_B
    assert "images/x/output_000001.jpg" in str(caught.value) and "images/y/output_000001.jpg" in str(caught.value)


def test_one_file_for_two_rows_of_the_same_name_is_ambiguous():
    media = items()
    media[1]["file_path"] = "videos/c.mp4/output_000001.jpg"
    members = ["images/train/cat/cat_01.jpg", "images/x/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError, match="shared by 2 row"):
        resolve_image_paths(normalize(media), members)


def test_export_laid_out_by_file_name_never_gives_two_rows_one_image():
    members = ["images/cat_01.jpg", "images/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError, match="output_000001.jpg") as caught:
        _resolve(members, on_missing="null")
    assert caught.value.media_id in (VIDEO_A, VIDEO_B)


def test_ambiguous_name_settled_by_media_id():
    members = ["images/train/cat/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg", "images/x/output_000001.jpg",
               "images/y/output_000001.jpg", f"images/{VIDEO_B}.jpg", "images/bare.png"]
    assert _resolve(members)[2] == f"images/{VIDEO_B}.jpg"


def test_missing_image_raises_or_is_null():
    members = ["images/train/cat/cat_01.jpg", "images/videos/a.mp4/output_000001.jpg", "images/bare.png"]
    with pytest.raises(ImageNotFoundError) as caught:
        _resolve(members)
    assert caught.value.media_id == VIDEO_B and VIDEO_B in str(caught.value)
    assert _resolve(members, on_missing="null") == [members[0], members[1], None, members[2]]
    assert _resolve([], on_missing="null") == [None] * 4
    with pytest.raises(ConfigurationError):
        _resolve(members, on_missing="skip")


def test_resolution_accepts_arrow_members_and_backslashes():
    members = pa.array(["images\\train\\cat\\cat_01.jpg", "images/videos/a.mp4/output_000001.jpg",
                        "images/videos/b.mp4/output_000001.jpg", "images/bare.png"])
    assert _resolve(members)[0] == "images/train/cat/cat_01.jpg"


def test_module_imports_no_torch_or_requests():
    import subprocess
    import sys

    # The package root imports the client (requests); load metadata under a bare package instead.
    code = ("import sys, types; pkg = types.ModuleType('vl_datasets'); pkg.__path__ = ['vl_datasets']; "
            "sys.modules['vl_datasets'] = pkg; import vl_datasets.metadata; "
            "print(sorted(m for m in ('torch', 'requests') if m in sys.modules))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
