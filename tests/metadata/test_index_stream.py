"""An export's index written a slice at a time: the same values as the whole-table build, the same
errors, and a peak memory that does not grow with the number of rows."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.helpers import child_env
from tests.metadata.helpers import (
    items,
    json_strings_table,
    nested_table,
    realistic_media_items,
    write_json_export,
    write_parquet,
)
from tests.waits import run_child
from vl_datasets.errors import ImageNotFoundError, SchemaError
from vl_datasets.metadata import image_paths, index_writer, read, stream, unique_ids
from vl_datasets.metadata.deferred import complete_index
from vl_datasets.metadata.index import INDEX_FILE, build_index, read_index, write_export_index
from vl_datasets.metadata.item_codes import plain_table
from vl_datasets.sample import SAMPLE_DATASET_ID, SAMPLE_ROOT


@pytest.fixture(autouse=True)
def batch_per_slice(monkeypatch):
    """Each slice written as its own record batch: these tests are about indexes of many batches."""
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 1)


def test_small_slices_are_written_as_fewer_larger_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(index_writer, "WRITE_ROWS", 100)
    export = write_parquet(
        tmp_path / "export", json_strings_table(realistic_media_items(300)), row_group_size=64
    ).parent
    streamed = _same_index(export, tmp_path, batch_rows=40)  # slices of 40 rows, written 120 at a time
    assert [len(chunk) for chunk in streamed.column("media_id").chunks] == [120, 120, 60]


def _same_index(export, out, **kwargs) -> pa.Table:
    """The streamed index of ``export``, written in ``out``, checked equal to the whole-table build."""
    whole = build_index(export)
    out.mkdir(parents=True, exist_ok=True)
    rows = write_export_index(export, out / INDEX_FILE, **kwargs)
    streamed = read_index(out / INDEX_FILE)
    assert streamed is not None, "the streamed index does not read back"
    streamed = complete_index(streamed, out / INDEX_FILE)  # with the columns left in a Parquet file
    streamed = plain_table(streamed)  # its items decoded: one list per row, as the whole build holds them
    assert rows == whole.num_rows == streamed.num_rows
    assert streamed.schema.equals(whole.schema, check_metadata=True), (streamed.schema, whole.schema)
    assert streamed.to_pylist() == whole.to_pylist()
    return streamed


@pytest.mark.parametrize("shape", [json_strings_table, nested_table])
def test_a_parquet_file_of_many_row_groups_indexes_as_the_whole_table(tmp_path, shape):
    media = realistic_media_items(300)
    media[7].pop("uniqueness_score")
    media[150]["metadata_items"] = []
    table = shape(media).append_column("extra", pa.array([str(m["extra"]) for m in media]))
    export = write_parquet(tmp_path / "export", table, row_group_size=64).parent
    streamed = _same_index(export, tmp_path, batch_rows=50)
    assert streamed.column("media_id").num_chunks > 1  # the test would prove nothing with one batch


def test_json_texts_stored_as_a_dictionary_index_as_plain_text(tmp_path):
    """A metadata_items column written dictionary-encoded (pandas' categorical, for one) reads back
    as a dictionary: it is the same JSON text, whole or streamed (which reads every file's texts so)."""
    media = realistic_media_items(300)
    media[40]["metadata_items"] = []
    media[41].pop("metadata_items")
    plain = json_strings_table(media)
    column = plain.schema.get_field_index("metadata_items")
    encoded = plain.set_column(column, "metadata_items", pc.dictionary_encode(plain.column("metadata_items")))
    plain_index = _same_index(write_parquet(tmp_path / "plain", plain, row_group_size=64).parent, tmp_path / "a")
    export = write_parquet(tmp_path / "encoded", encoded, row_group_size=64).parent
    assert pa.types.is_dictionary(pq.read_schema(export / "metadata.parquet").field("metadata_items").type)
    assert _same_index(export, tmp_path / "b", batch_rows=50).to_pylist() == plain_index.to_pylist()


def test_a_json_text_not_utf8_among_repeated_ones_is_named_by_its_row(tmp_path):
    """The streamed read takes each distinct text once; the row named is still the first holding it."""
    label = '[{"type": "image_label", "properties": {"category_name": "tabby"}}]'
    table = pa.table(
        {
            "media_id": [f"m-{i}" for i in range(6)],
            "file_name": [f"{i}.jpg" for i in range(6)],
            "metadata_items": [label, None, label, label.replace("tabby", "tibby"), label, None],
        }
    )
    path = write_parquet(tmp_path / "export", table, compression="none", use_dictionary=False, store_schema=False)
    path.write_bytes(path.read_bytes().replace(b"tibby", b"ti\xffby"))
    with pytest.raises(SchemaError, match="media_id 'm-3'") as caught:
        write_export_index(path.parent, tmp_path / INDEX_FILE, batch_rows=4)
    assert caught.value.field == "metadata_items"


def test_a_media_id_repeated_in_another_batch_is_named(tmp_path):
    media = realistic_media_items(200)
    media[180]["media_id"] = media[30]["media_id"]
    media[190]["media_id"] = media[20]["media_id"]
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=40).parent
    (tmp_path / "out").mkdir()
    with pytest.raises(SchemaError, match="media_id 'id-0000020' appears more than once") as caught:
        write_export_index(export, tmp_path / "out" / INDEX_FILE, batch_rows=40)
    assert caught.value.field == "media_id"
    with pytest.raises(SchemaError, match="media_id 'id-0000020' appears more than once"):
        build_index(export)  # the whole-table build names the same one
    assert not list((tmp_path / "out").iterdir()), "a failed build left files"


@pytest.mark.parametrize("shape", ["parquet with images", "streamed json"])
def test_a_media_id_repeated_in_a_build_that_spills_its_slices_is_named(tmp_path, monkeypatch, shape):
    """A build that spills its slices to disk (to resolve the images, or to unify a streamed JSON
    export's types) reads the ids back from there to name the repeated one."""
    media = realistic_media_items(60)
    media[50]["media_id"] = media[10]["media_id"]
    if shape == "streamed json":
        monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)
        export = write_json_export(tmp_path / "export", media).parent
    else:
        export = _with_images(tmp_path / "export", media, flat_from=len(media))
    with pytest.raises(SchemaError, match="media_id 'id-0000010' appears more than once") as caught:
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=16)
    assert caught.value.field == "media_id"


def test_an_error_in_a_later_batch_names_the_row_in_the_file(tmp_path):
    media = realistic_media_items(100)
    media[73]["uniqueness_score"] = 1.5
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=20).parent
    expected = "media_id 'id-0000073' (row 73): uniqueness_score is 1.5"
    with pytest.raises(SchemaError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=20)
    with pytest.raises(SchemaError, match=r"\(row 73\)"):
        build_index(export)


@pytest.fixture
def json_streamed(monkeypatch):
    """Every JSON export streamed by ijson, whatever its size."""
    monkeypatch.setattr(read, "JSON_STREAM_BYTES", 0)


def test_a_json_export_streamed_indexes_as_the_whole_file(tmp_path, json_streamed):
    export = write_json_export(tmp_path / "export", realistic_media_items(250)).parent
    streamed = _same_index(export, tmp_path, batch_rows=40)
    assert streamed.column("media_id").num_chunks > 1
    assert json.loads(streamed.schema.metadata[b"vl_datasets.info"])["dataset"]  # the export's info kept
    # The unknown key held numbers, then text: the whole read made it text, and so does the stream.
    assert streamed.schema.field("extra").type == pa.string()


def test_the_sample_and_the_test_export_stream_as_they_read_whole(tmp_path, json_streamed):
    _same_index(write_json_export(tmp_path / "test-export").parent, tmp_path / "a", batch_rows=1)
    sample = shutil.copytree(SAMPLE_ROOT / SAMPLE_DATASET_ID, tmp_path / "sample")  # with its images/
    _same_index(sample, tmp_path / "b", batch_rows=500)


def test_empty_exports_and_a_bare_list_stream_as_they_read_whole(tmp_path, json_streamed):
    _same_index(write_json_export(tmp_path / "empty-json", []).parent, tmp_path / "a")
    empty = json_strings_table(items()).slice(0, 0)
    _same_index(write_parquet(tmp_path / "empty-parquet", empty).parent, tmp_path / "b")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "metadata.json").write_text(json.dumps(realistic_media_items(30)))
    _same_index(tmp_path / "bare", tmp_path / "c", batch_rows=7)


def test_integers_past_64_bits_stream_as_the_whole_file_reads_them(tmp_path, json_streamed):
    """yajl refuses such an integer ("integer overflow"); json.loads, which reads a small export
    whole, takes it. The stream reads on past it, with every row once, typed as the whole read."""
    media = realistic_media_items(60)
    for item in media:
        item["extra"] = 3
    media[45]["extra"] = 2**64  # an unknown key: a double, as Arrow's reader infers it
    media[50]["metadata_items"][0]["properties"]["custom"] = 2**70  # an undocumented property
    export = write_json_export(tmp_path / "export", media).parent
    streamed = _same_index(export, tmp_path / "a", batch_rows=16)
    assert streamed.column("media_id").to_pylist() == [item["media_id"] for item in media]
    assert streamed.column("extra").to_pylist()[44:46] == [3.0, float(2**64)]
    media[10]["metadata_items"][0]["properties"]["original_id"] = 2**64  # a documented int64
    bad = write_json_export(tmp_path / "bad", media).parent
    with pytest.raises(SchemaError, match=r"media_id 'id-0000010' \(row 10\).*original_id") as caught:
        write_export_index(bad, tmp_path / INDEX_FILE, batch_rows=16)
    assert "not valid JSON" not in str(caught.value)


def test_a_streamed_json_export_keeps_its_errors(tmp_path, json_streamed):
    media = items()
    media[3]["uniqueness_score"] = "high"
    export = write_json_export(tmp_path / "bad", media).parent
    with pytest.raises(SchemaError, match=r"row 3") as caught:
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=2)
    assert caught.value.media_id == media[3]["media_id"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metadata.json").write_text('{"media_items": [{"media_id": "a"}, {"media_id": ')
    with pytest.raises(SchemaError, match="is not valid JSON"):
        write_export_index(tmp_path / "broken", tmp_path / INDEX_FILE)
    (tmp_path / "no-items").mkdir()
    (tmp_path / "no-items" / "metadata.json").write_text('{"info": {}, "media_items": {"a": 1}}')
    with pytest.raises(SchemaError, match="no 'media_items' list"):
        write_export_index(tmp_path / "no-items", tmp_path / INDEX_FILE)


def test_an_export_with_images_found_by_file_name_streams_as_the_whole_table(tmp_path):
    media = realistic_media_items(60)
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=16).parent
    for m in media[:45]:  # a flat images/ folder: found by base name, across batches
        (export / "images").mkdir(exist_ok=True)
        (export / "images" / m["file_path"].rsplit("/", 1)[1]).write_bytes(b"")
    streamed = _same_index(export, tmp_path, batch_rows=16)
    paths = streamed.column("__image_path__").to_pylist()
    assert paths[:45] == [m["file_path"].rsplit("/", 1)[1] for m in media[:45]] and paths[45:] == [None] * 15


@pytest.mark.parametrize("spelled", ["{}\\{}", "{}//{}", "./{}/{}", "{}/./{}"])
def test_a_file_path_spelled_otherwise_finds_the_image_its_export_unpacked(tmp_path, spelled):
    """An archive's member ``images/cat\\x.jpg`` (or ``//``, ``./``) unpacks to ``images/cat/x.jpg``:
    the row's file_path finds it there, where the base name it fell back to is shared and ambiguous."""
    media = realistic_media_items(40)
    for i, m in enumerate(media):
        m["file_path"] = spelled.format(f"class{i % 20}", f"x{i // 20}.jpg")  # x0.jpg, x1.jpg: 20 rows each
    export = write_parquet(tmp_path / "export", json_strings_table(media), row_group_size=16).parent
    for i in range(40):
        (export / "images" / f"class{i % 20}").mkdir(parents=True, exist_ok=True)
        (export / "images" / f"class{i % 20}" / f"x{i // 20}.jpg").write_bytes(b"")
    streamed = _same_index(export, tmp_path, batch_rows=16)
    expected = [f"class{i % 20}/x{i // 20}.jpg" for i in range(40)]
    assert streamed.column("__image_path__").to_pylist() == expected
    assert streamed.column("file_path").to_pylist()[0] == spelled.format("class0", "x0.jpg"), "kept as exported"


@pytest.mark.parametrize(
    ("file_paths", "flat_names", "files", "refused"),
    [
        # Steps 0 and 1 look in one folder: m001's own flat image is missing, and its file_path
        # names the file m000 names by image_filename.
        (
            ["sub/x.jpg", "x.jpg"],
            ["x.jpg", "other.jpg"],
            ["x.jpg"],
            r"media_id 'm001' is ambiguous.*of media_id 'm000'",
        ),
        # Two rows give one image_filename, one file of that name: the exact lookup a slice at a
        # time would hand it to both.
        (
            ["v1/output_000001.jpg", "v2/output_000001.jpg"],
            ["output_000001.jpg"] * 2,
            ["output_000001.jpg"],
            "media_id 'm000' is ambiguous",
        ),
    ],
)
def test_a_flat_image_two_rows_could_claim_is_refused_by_both_builds(tmp_path, file_paths, flat_names, files, refused):
    """Both builds (the whole table, and slices) refuse it as ambiguous, whatever on_missing."""
    rest = range(len(file_paths), 40)
    table = pa.table(
        {
            "media_id": [f"m{i:03d}" for i in range(40)],
            "file_path": [*file_paths, *[f"sub/{i}.jpg" for i in rest]],
            "image_filename": [*flat_names, *[f"{i}.jpg" for i in rest]],
        }
    )
    export = write_parquet(tmp_path / "export", table).parent
    (export / "images").mkdir()
    for name in [*files, *[f"{i}.jpg" for i in rest]]:
        (export / "images" / name).write_bytes(b"")
    with pytest.raises(ImageNotFoundError, match=refused):
        build_index(export)
    with pytest.raises(ImageNotFoundError, match=refused):
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=16)


@pytest.mark.parametrize("spelled", ["{}/{}", "{}\\{}", "./{}/{}", "{}//{}", "{}/./{}"])
@pytest.mark.parametrize("flat", [False, True])
def test_one_file_two_rows_of_two_slices_name_is_refused_by_both_builds(tmp_path, spelled, flat):
    """Row 30's file_path names row 3's file, however spelled, in another slice of rows: no file
    is ever two rows', so both builds refuse it, as with every row named in a flat folder but those."""
    media = realistic_media_items(40)
    media[30]["file_path"] = spelled.format(*media[3]["file_path"].split("/", 1))
    table = json_strings_table(media)
    if flat:  # the docs' layout, those two rows' image_filename naming no file
        names = [None if i in (3, 30) else f"flat_{i}.jpg" for i in range(40)]
        table = table.append_column("image_filename", pa.array(names, pa.string()))
    export = write_parquet(tmp_path / "export", table).parent
    for i in range(40):  # row 30's file is row 3's
        name = f"flat_{i}.jpg" if flat and i not in (3, 30) else media[3 if i == 30 else i]["file_path"]
        image = export / "images" / name
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
    _refused_by_both_builds(
        export, tmp_path, rf"media_id '{media[3]['media_id']}'.*media_id '{media[30]['media_id']}' names too"
    )


def test_a_file_named_with_a_backslash_beside_its_slashed_name_is_refused_by_both_builds(tmp_path):
    """A folder on Linux may hold ``x\\a.jpg`` beside ``x/a.jpg``: both read ``images/x/a.jpg``
    in the lookup, so neither is given, where the row naming ``x\\a.jpg`` got ``x/a.jpg``'s image."""
    media = realistic_media_items(40)
    media[30]["file_path"] = media[30]["file_path"].replace("/", "\\")
    export = write_parquet(tmp_path / "export", json_strings_table(media)).parent
    for m in media:
        for name in {m["file_path"], m["file_path"].replace("\\", "/")}:  # both, for row 30
            image = export / "images" / name
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"")
    _refused_by_both_builds(export, tmp_path, rf"media_id '{media[30]['media_id']}'.*several files of the export")


def _refused_by_both_builds(export, tmp_path, message: str) -> None:
    """The whole-table build and the slice-at-a-time one (slices of 16 rows) both refuse ``export``."""
    with pytest.raises(ImageNotFoundError, match=message):
        build_index(export)
    with pytest.raises(ImageNotFoundError, match=message):
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=16)


def _with_images(folder, media, *, flat_from: int):
    """An export of ``media`` whose images lie at ``images/<file_path>``, but for the rows from
    ``flat_from`` on, which name theirs in a flat folder by ``image_filename`` (the docs' layout)."""
    flat = [None if i < flat_from else f"flat_{m['media_id']}.jpg" for i, m in enumerate(media)]
    table = json_strings_table(media).append_column("image_filename", pa.array(flat, pa.string()))
    export = write_parquet(folder, table, row_group_size=4096).parent
    for m, name in zip(media, flat):
        image = export / "images" / (name or m["file_path"])
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
    return export


def test_images_at_their_exact_paths_stream_as_the_whole_table(tmp_path):
    media = realistic_media_items(70)
    export = _with_images(tmp_path / "export", media, flat_from=40)
    (export / "images" / "train" / "unlisted.jpg").write_bytes(b"")  # a file no row names
    streamed = _same_index(export, tmp_path, batch_rows=16)
    assert streamed.column("media_id").num_chunks > 1
    paths = streamed.column("__image_path__").to_pylist()
    assert paths == [m["file_path"] for m in media[:40]] + [f"flat_{m['media_id']}.jpg" for m in media[40:]]


def test_file_names_whose_hashes_collide_are_compared_as_text(tmp_path, monkeypatch):
    """Every name of one length hashed alike: a row is given only the file its name is, and the rows
    whose file the exact lookup cannot tell apart are found by the lookup over all rows."""
    monkeypatch.setattr(image_paths, "hash_strings", lambda names: pc.binary_length(names).to_numpy().astype(np.uint64))
    media = realistic_media_items(70)
    export = _with_images(tmp_path / "export", media, flat_from=40)
    streamed = _same_index(export, tmp_path, batch_rows=16)
    paths = streamed.column("__image_path__").to_pylist()
    assert paths == [m["file_path"] for m in media[:40]] + [f"flat_{m['media_id']}.jpg" for m in media[40:]]


_ARROW_PEAK_CHILD = """
import sys
import pyarrow as pa
from vl_datasets.metadata import index_writer
from vl_datasets.metadata.index import write_export_index
index_writer.WRITE_ROWS = 8192
write_export_index(sys.argv[1], sys.argv[2], batch_rows=2048)
print(pa.system_memory_pool().max_memory())  # the allocator the build runs on: its peak, in bytes
"""


def test_images_at_their_exact_paths_are_found_a_slice_at_a_time(tmp_path):
    """An export with images whose rows all name their file exactly (``images/<file_path>`` or
    ``<image_filename>``, as a chunked image export is laid out) is indexed in memory that grows by
    the files' names, not by the rows' columns: the lookup across all the rows, which looked up
    every row's four path columns at once, grew Arrow's peak by ~530 bytes a row here, against ~70
    now. Arrow's own count of what it allocated, unlike the resident memory, hardly moves from run
    to run."""
    peaks = []
    for rows in (4_000, 40_000):
        export = _with_images(tmp_path / f"export-{rows}", realistic_media_items(rows), flat_from=rows // 2)
        args = [sys.executable, "-c", _ARROW_PEAK_CHILD, str(export), str(tmp_path / f"{rows}.arrow")]
        result = run_child(args, env=child_env())
        assert result.returncode == 0, result.stderr
        peaks.append(int(result.stdout.strip()))
    per_row = (peaks[1] - peaks[0]) / 36_000
    assert per_row < 150, f"Arrow's peak grew by {per_row:.0f} bytes per row: {peaks}"


_CHILD = """
import sys
from pathlib import Path
from vl_datasets.metadata import index_writer
from vl_datasets.metadata.index import build_index, write_export_index
index_writer.WRITE_ROWS = 8192  # the rows it joins before writing: a constant, at any size, as the slice is
def status(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
Path("/proc/self/clear_refs").write_text("5")  # the peak so far (the imports') is forgotten
before = status("VmRSS:")
if sys.argv[3] == "stream":
    write_export_index(sys.argv[1], sys.argv[2], batch_rows=4096)
else:
    table = build_index(sys.argv[1])
print(status("VmHWM:") - before)
"""


def _peak_growth(export, how: str) -> int:
    """How far above its resident memory at the start a child's peak went while it built the index."""
    result = run_child([sys.executable, "-c", _CHILD, str(export), str(export / INDEX_FILE), how], env=child_env())
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def test_building_an_index_holds_a_slice_not_the_table(tmp_path):
    """From 50K to 500K rows the peak memory of a whole-table build grows with the table; that of a
    streamed build, once its allocators have warmed up over the first slices, hardly moves. Its
    growth varies by tens of MiB from run to run (thread scheduling, allocator arenas): the larger
    table keeps that noise small next to what the whole table grows by."""
    small, large = 50_000, 500_000
    table = json_strings_table(realistic_media_items(large))
    write_parquet(tmp_path / "small", table.slice(0, small), row_group_size=4096)
    write_parquet(tmp_path / "large", table, row_group_size=4096)
    del table
    streamed = [_peak_growth(tmp_path / name, "stream") for name in ("small", "large")]
    whole = [_peak_growth(tmp_path / name, "whole") for name in ("small", "large")]
    print(f"peak RSS growth at {small} and {large} rows: streamed {streamed}, whole table {whole}")
    assert whole[1] - whole[0] > 64 << 20, f"the whole-table build no longer grows: {whole}; the test needs more rows"
    assert streamed[1] - streamed[0] < (whole[1] - whole[0]) / 5, (streamed, whole)
    assert streamed[1] < whole[1], (streamed, whole)


def test_a_dataset_over_an_index_of_many_batches_is_the_one_over_a_single_batch(tmp_path, monkeypatch, json_streamed):
    """Curation, dedupe, targets and classes read the index's chunked columns as they read one chunk."""
    from vl_datasets.loading.dataset import VisualLayerDataset

    sample = shutil.copytree(SAMPLE_ROOT / SAMPLE_DATASET_ID, tmp_path / "sample")
    options = {"min_uniqueness": 0.3, "dedupe": True, "drop_issues": {"blur": 0.5}}
    one = VisualLayerDataset.from_export(sample, cache_dir=tmp_path / "one", **options)  # 2,017 rows: one batch
    monkeypatch.setattr(stream, "BATCH_ROWS", 97)
    many = VisualLayerDataset.from_export(sample, cache_dir=tmp_path / "many", **options)
    index = read_index(next((tmp_path / "many").rglob(INDEX_FILE)))
    assert index is not None and index.column("media_id").num_chunks > 10
    assert many.curation_summary() == one.curation_summary()
    assert (many.media_ids, many.classes, many.fingerprint()) == (one.media_ids, one.classes, one.fingerprint())
    assert many.table.to_pylist() == one.table.to_pylist()
    assert [many[i][1] for i in range(0, len(many), 50)] == [one[i][1] for i in range(0, len(one), 50)]
    pages = [ds.report(tmp_path / f"{n}.html", max_thumbnails=0).read_text() for n, ds in (("1", one), ("2", many))]
    # The figures are inline images whose SVG ids are random: the page's text is compared.
    text = [
        re.sub(r"data:[^\"']*", "", page).replace(str(tmp_path / name), "")
        for page, name in zip(pages, ("one", "many"))
    ]
    assert text[0] == text[1] and f"{len(one):,}" in text[1]


def test_ids_whose_hashes_collide_are_compared_as_text(tmp_path, monkeypatch):
    """Every id hashed alike: unique ids still pass, and the duplicate named is the one seen first."""
    monkeypatch.setattr(unique_ids, "uniqueness_hashes", lambda ids: np.zeros(len(ids), np.uint64))
    media = realistic_media_items(90)
    export = write_parquet(tmp_path / "unique", json_strings_table(media), row_group_size=25).parent
    assert write_export_index(export, tmp_path / INDEX_FILE, batch_rows=25) == 90
    media[80]["media_id"], media[85]["media_id"] = media[40]["media_id"], media[10]["media_id"]
    export = write_parquet(tmp_path / "twice", json_strings_table(media), row_group_size=25).parent
    with pytest.raises(SchemaError, match="media_id 'id-0000010' appears more than once"):
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=25)


@pytest.mark.parametrize("one_thread_below", [1 << 20, 16])
def test_a_duplicate_id_is_found_wherever_its_rows_fall(monkeypatch, one_thread_below):
    """Past a size, the hashes are sorted a part at a time and compared a range of values at a
    time: a duplicate whose rows lie in different parts (or the same one) is found, and the one
    named is the one seen first."""
    monkeypatch.setattr(unique_ids, "_SORTED_BY_ONE_THREAD", one_thread_below)
    ids = [f"id-{i:06d}" for i in range(5000)]

    def first_duplicate(ids: list[str]) -> str | None:
        hashes, batches = unique_ids.IdHashes(), [pa.array(ids[at : at + 700]) for at in range(0, len(ids), 700)]
        for batch in batches:
            hashes.add(batch)
        return hashes.first_duplicate(lambda: pa.chunked_array(batches))

    assert first_duplicate(ids) is None
    ids[4990], ids[2600], ids[40] = ids[3000], ids[100], ids[41]  # rows 100 and 2600: parts apart
    assert first_duplicate(ids) == "id-000041"
    ids[40] = "id-000040"
    assert first_duplicate(ids) == "id-000100"


_CURATE_CHILD = """
import json, sys
from pathlib import Path
from vl_datasets.metadata import row_batches
from vl_datasets.metadata.curated import CuratedItems, TargetOptions
from vl_datasets.metadata.curation import CurationRules
from vl_datasets.metadata.index import read_index
from vl_datasets.metadata.item_codes import with_items
row_batches.SLICE_ROWS = 8192  # a constant, at any size: the pages of one slice at a time
def status(key):
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
def index_pages():  # resident pages of the maps of the index alone (RssFile counts the libraries' too)
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split()[0].endswith(":"):  # a map's first line: its address range ... its path
            inside = line.rstrip().endswith(sys.argv[1])
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total
mapped = row_batches.ReleasingMap(sys.argv[1]) if sys.argv[2] == "releasing" else None
index = mapped.table if mapped is not None else with_items(read_index(sys.argv[1]), sys.argv[1])
Path("/proc/self/clear_refs").write_text("5")  # the peak so far (the imports') is forgotten
rss, file_pages = status("VmRSS:"), index_pages()
rules = CurationRules(min_uniqueness=0.3, dedupe=True, label_source="User")
items = CuratedItems(index, rules, TargetOptions(), paths_from_file_path=lambda paths: paths)
print(json.dumps({
    "peak": status("VmHWM:") - rss, "file_pages": index_pages() - file_pages,
    "items": [len(items), str(items.summary), items.fingerprint(), items.classes],
}))
"""


def test_curating_an_index_hands_back_the_pages_it_read(tmp_path):
    """The pages of a mapped index count in a process's resident memory once read: a curation over
    a ``ReleasingMap`` hands each slice's back, so it holds no more of them at the end than at the
    start and peaks lower than over an ordinary map, by about what it read, with the same items."""
    export = write_parquet(tmp_path / "export", json_strings_table(realistic_media_items(400_000)), row_group_size=8192)
    path = tmp_path / INDEX_FILE
    write_export_index(export.parent, path, batch_rows=8192)
    index = read_index(path)
    assert index is not None
    # What curation reads of the index file (the items' codes among it; their lists are in a file beside it).
    read = sum(index.column(name).nbytes for name in ("uniqueness_score", "__items__", "file_path", "media_id"))
    del index
    found = {}
    for how in ("plain", "releasing"):
        result = run_child([sys.executable, "-c", _CURATE_CHILD, str(path), how], env=child_env())
        assert result.returncode == 0, result.stderr
        found[how] = json.loads(result.stdout.strip().splitlines()[-1])
    plain, releasing = found["plain"], found["releasing"]
    print(f"{read >> 20} MiB read; plain {plain['peak'] >> 20} MiB peak, releasing {releasing['peak'] >> 20} MiB")
    assert releasing["items"] == plain["items"]
    assert plain["file_pages"] > read * 0.8, f"the ordinary map no longer keeps what it read: {plain}"
    assert releasing["file_pages"] < read * 0.1, f"the releasing map kept {releasing['file_pages']:,} bytes of pages"
    assert releasing["peak"] < plain["peak"] - read / 2, (releasing, plain, read)


def test_the_fingerprint_of_kept_rows_is_the_same_however_the_ids_are_chunked():
    """Curation takes it a slice of the index at a time (``IdsFingerprint``, fed the ids of each
    slice's kept rows): it pins the same list as the ids taken whole."""
    from vl_datasets.metadata import list_build

    ids = [f"id-{i:03d}" for i in range(100)]
    rows = np.array([0, 1, 5, 17, 18, 19, 20, 63, 64, 98, 99])
    whole = list_build.fingerprint_ids(pa.array(ids).take(pa.array(rows)))

    def by_slices(bounds, kept):
        fingerprint = list_build.IdsFingerprint()
        for a, b in itertools.pairwise(bounds):
            chunk = pa.array(ids[a:b], pa.string())
            fingerprint.update(chunk.take(pa.array(kept[(kept >= a) & (kept < b)] - a)))
        return fingerprint.hexdigest()

    for bounds in ([0, 100], [0, 20, 64, 100], [0, 1, 2, 3, 50, 99, 100], [0, 30, 30, 100]):
        assert by_slices(bounds, rows) == whole, bounds
    assert by_slices([0, 100], rows[:-1]) != whole


def test_an_id_repeated_in_a_batch_of_other_lengths_is_found(tmp_path):
    """Ids of mixed lengths: "yy" in a batch of lengths 1, 2, 3 (whose total is a whole number of
    2-byte rows) hashes as it does elsewhere, so its repeat in the next batch is caught."""
    media = realistic_media_items(6)
    for item, media_id in zip(media, ["x", "yy", "zzz", "q", "yy", "r"]):
        item["media_id"] = media_id
    export = write_parquet(tmp_path / "mixed", json_strings_table(media), row_group_size=3).parent
    with pytest.raises(SchemaError, match="media_id 'yy' appears more than once"):
        write_export_index(export, tmp_path / INDEX_FILE, batch_rows=3)


def test_equal_ids_hash_alike_whatever_the_ids_beside_them():
    ids = ["c93", "c0", "c49", "c100", "c94", "c65", "c16", "c0", "c100"]
    alone = {media_id: unique_ids.hash_strings(pa.array([media_id]))[0] for media_id in ids}
    for start in range(len(ids)):
        for stop in range(start + 1, len(ids) + 1):
            hashes = unique_ids.hash_strings(pa.array(ids).slice(start, stop - start))
            assert hashes.tolist() == [alone[media_id] for media_id in ids[start:stop]], ids[start:stop]


def test_index_builds_at_once_leave_arrows_allocator_as_they_found_it(tmp_path):
    """A build swaps Arrow's default allocator for its duration: builds in several threads at once
    must not leave the process with another allocator than it had."""
    from concurrent.futures import ThreadPoolExecutor

    before = pa.default_memory_pool().backend_name
    table = json_strings_table(realistic_media_items(3000))
    exports = [write_parquet(tmp_path / f"export-{number}", table).parent for number in range(4)]
    with ThreadPoolExecutor(len(exports)) as pool:
        rows = list(pool.map(lambda e: write_export_index(e, e / "index.arrow"), exports))
    assert rows == [3000] * len(exports)
    assert pa.default_memory_pool().backend_name == before
