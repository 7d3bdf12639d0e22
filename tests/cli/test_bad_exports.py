"""``vl-datasets report`` on a damaged archive or invalid metadata: a documented exit code, one line
naming what is at fault, no traceback, no report, and nothing published in the cache."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile

import pytest

from vl_datasets.cli import main
from vl_datasets.cli.main import EXIT_CODES
from vl_datasets.errors import CorruptArchiveError, SchemaError


def _code(error_type) -> int:
    return next(code for cls, code, _ in EXIT_CODES if issubclass(error_type, cls))


def _report(source, tmp_path, capsys) -> tuple[int, str]:
    out = tmp_path / "report.html"
    code = main(["report", str(source), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert not out.exists(), "a report was written for an export that cannot be read"
    return code, capsys.readouterr().err


def _assert_one_line_error(err: str) -> None:
    assert err.startswith("error: "), f"not the CLI's error line: {err!r}"
    assert "Traceback" not in err


def _entries(tmp_path) -> list[str]:
    """What the cache published or left behind, locks aside."""
    cache = tmp_path / "cache"
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.name not in (".lock",))


def test_a_zip_whose_metadata_member_is_damaged(export, tmp_path, capsys):
    archive = tmp_path / "export.zip"
    shutil.make_archive(str(archive.with_suffix("")), "zip", export)
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("metadata.json")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    data = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len] = 0x07  # a deflate block of the reserved type
    archive.write_bytes(bytes(data))
    code, err = _report(archive, tmp_path, capsys)
    assert code == _code(CorruptArchiveError) != 0
    _assert_one_line_error(err)
    assert "'metadata.json'" in err, f"the error does not name the member: {err!r}"
    assert [p for p in _entries(tmp_path) if p != "CACHEDIR.TAG"] == [], "the damaged archive left files in the cache"


def _edit_metadata(export, edit) -> None:
    path = export / "metadata.json"
    metadata = json.loads(path.read_text(encoding="utf-8"))
    edit(metadata["media_items"])
    path.write_text(json.dumps(metadata), encoding="utf-8")


def _object_with_two_numbers(media_items):
    media_items[3]["metadata_items"].append(
        {"type": "object_label", "properties": {"category_name": "cat", "bbox": [10, 20]}}
    )


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda media_items: media_items[3].update(uniqueness_score=5.0), "uniqueness_score"),
        (_object_with_two_numbers, "bbox"),
    ],
    ids=["uniqueness_score 5.0", "bbox of 2 numbers"],
)
@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_metadata_with_invalid_values(export, tmp_path, capsys, edit, field, as_zip):
    _edit_metadata(export, edit)
    media_id = json.loads((export / "metadata.json").read_text(encoding="utf-8"))["media_items"][3]["media_id"]
    source = export
    if as_zip:
        source = tmp_path / "export.zip"
        shutil.make_archive(str(source.with_suffix("")), "zip", export)
    code, err = _report(source, tmp_path, capsys)
    assert code == _code(SchemaError) != 0
    _assert_one_line_error(err)
    assert media_id in err, f"the error does not name the media id: {err!r}"
    assert field in err, f"the error does not name the field: {err!r}"
    assert not [p for p in _entries(tmp_path) if p.endswith(".manifest.json")], "an unreadable export was published"


def test_metadata_json_that_is_not_utf8(export, tmp_path, capsys):
    path = export / "metadata.json"
    data = path.read_bytes()
    offset = data.index(b'"media_items"') + 1
    path.write_bytes(data[:offset] + b"\xff" + data[offset + 1 :])
    code, err = _report(export, tmp_path, capsys)
    assert code == _code(SchemaError) != 0
    _assert_one_line_error(err)
    assert f"offset {offset:,}" in err, f"the error does not give the offset: {err!r}"
