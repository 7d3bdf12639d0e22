"""Unpacking an export ZIP: unsafe members, bombs and corrupt archives are refused with typed errors."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from vl_datasets import errors
from vl_datasets.cache.archive import ArchiveLimits, extract_archive
from vl_datasets.cache.layout import METADATA_DIGEST
from vl_datasets.metadata.deferred import COLUMNS_FILE
from vl_datasets.metadata.deferred import LOCK_FILE as DEFERRED_LOCK
from vl_datasets.metadata.index import INDEX_FILE


def _zip(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "/etc/passwd")
    return path


@pytest.mark.parametrize(
    "members,symlink",
    [
        ({"/abs/evil.txt": b"x"}, None),
        ({"../evil.txt": b"x"}, None),
        ({"images/../../evil.txt": b"x"}, None),
        ({"C:/evil.txt": b"x"}, None),
        ({"metadata.json": b"{}"}, "images/link.jpg"),
    ],
)
def test_unsafe_archives_are_refused_and_write_nothing(tmp_path, members, symlink):
    archive = _zip(tmp_path / "bad.zip", members, symlink=symlink)
    staging = tmp_path / "work" / "staging"
    with pytest.raises(errors.UnsafeArchiveError):
        extract_archive(archive, staging)
    assert not (tmp_path / "evil.txt").exists(), "a member was written outside the target folder"
    assert not (tmp_path / "work" / "evil.txt").exists(), "a member was written outside the target folder"
    assert not staging.exists() or not any(staging.rglob("*")), (
        f"the refused archive left files behind: {sorted(str(p) for p in staging.rglob('*'))}"
    )


def test_zip_bombs_and_oversized_archives_are_refused(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"metadata.json": b"\0" * 2_000_000})
    with pytest.raises(errors.UnsafeArchiveError, match="bomb"):
        extract_archive(bomb, tmp_path / "a", limits=ArchiveLimits(ratio_applies_above_bytes=1_000_000))
    many = _zip(tmp_path / "many.zip", {f"images/{i}.jpg": b"x" for i in range(5)})
    with pytest.raises(errors.UnsafeArchiveError, match="members"):
        extract_archive(many, tmp_path / "b", limits=ArchiveLimits(max_members=3))
    with pytest.raises(errors.UnsafeArchiveError, match="unpack"):
        extract_archive(many, tmp_path / "c", limits=ArchiveLimits(max_total_bytes=2))


def test_corrupt_archives_raise_a_typed_error_naming_the_file(tmp_path):
    good = _zip(tmp_path / "good.zip", {"metadata.json": b'{"media_items": []}' * 100})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(errors.CorruptArchiveError, match=r"truncated\.zip"):
        extract_archive(truncated, tmp_path / "t")
    stored = tmp_path / "crc.zip"
    with zipfile.ZipFile(stored, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata.json", b"A" * 1000)
    data = bytearray(stored.read_bytes())
    data[data.index(b"AAAA") + 10] = ord("B")  # flip a byte of the member's data
    stored.write_bytes(bytes(data))
    with pytest.raises(errors.CorruptArchiveError, match=r"crc\.zip"):
        extract_archive(stored, tmp_path / "c")


def _damage(archive: Path, member: str, patch: bytes, *, at: int = 0) -> Path:
    """Overwrite bytes of ``member``'s compressed data, ``at`` bytes past its start; CRCs stay as written."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    data = bytearray(archive.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + at
    data[start : start + len(patch)] = patch
    archive.write_bytes(bytes(data))
    return archive


@pytest.mark.parametrize(
    "compression,patch,at",
    [
        (zipfile.ZIP_DEFLATED, b"\x07", 0),  # a final block of the reserved type 3: zlib.error
        (zipfile.ZIP_BZIP2, b"XXXX", 0),  # no "BZh" magic: OSError
        (zipfile.ZIP_LZMA, b"\xff" * 5, 4),  # unreadable filter properties: LZMAError
    ],
    ids=["deflate", "bzip2", "lzma"],
)
def test_a_member_that_cannot_be_decompressed_is_named(tmp_path, compression, patch, at):
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        zf.writestr("images/a.jpg", b"jpeg")
        zf.writestr("metadata.json", b'{"media_items": []}' * 1000)
    _damage(archive, "metadata.json", patch, at=at)
    with pytest.raises(errors.CorruptArchiveError) as caught:
        extract_archive(archive, tmp_path / "staging")
    assert caught.value.member == "metadata.json"
    assert caught.value.path == str(archive)
    assert "'metadata.json'" in str(caught.value), f"the message does not name the member: {caught.value}"


def test_an_encrypted_member_is_refused_before_anything_is_written(tmp_path):
    archive = _zip(tmp_path / "export.zip", {"images/a.jpg": b"jpeg", "metadata.json": b"{}"})
    data = bytearray(archive.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flags_at] |= 0x01  # "encrypted": zipfile then wants a password
            start += 4
    archive.write_bytes(bytes(data))
    staging = tmp_path / "staging"
    with pytest.raises(errors.CorruptArchiveError, match="encrypted") as caught:
        extract_archive(archive, staging)
    assert caught.value.member == "images/a.jpg"
    assert not staging.exists() or not any(staging.rglob("*")), "files were written before the refusal"


@pytest.mark.parametrize(
    "names,file_member",
    [
        (["images/a", "images/a/b.jpg"], "images/a"),  # the file first, then a member inside it
        (["images/a/b.jpg", "images/a"], "images/a"),  # the member inside first
        (["a/", "a"], "a"),  # an explicit folder entry
        (["a", "a/b/c/d.jpg"], "a"),  # a folder several levels up
    ],
)
def test_a_file_and_a_folder_of_one_name_are_refused_naming_the_member(tmp_path, names, file_member):
    archive = _zip(tmp_path / "export.zip", {name: b"" if name.endswith("/") else b"x" for name in names})
    staging = tmp_path / "staging"
    with pytest.raises(errors.UnsafeArchiveError) as caught:
        extract_archive(archive, staging)
    assert caught.value.member == file_member
    assert repr(file_member) in str(caught.value), f"the message does not name the member: {caught.value}"
    assert str(staging) not in str(caught.value), "the message names the staging folder, not the member"
    assert not staging.exists() or not any(staging.rglob("*")), "files were written before the refusal"


@pytest.mark.parametrize(
    "name",
    [
        "images/" + "x" * 300 + ".jpg",  # 300 characters
        "images/" + "é" * 128 + ".jpg",  # 132 characters, but 260 bytes in UTF-8
        "/".join(["d" * 200] * 25) + "/a.jpg",  # every name fits; the whole path (5,000 bytes) does not
        ".",  # no name at all: it would be the staging folder itself
    ],
)
def test_member_names_the_file_system_cannot_hold_are_refused(tmp_path, name):
    archive = _zip(tmp_path / "export.zip", {"metadata.json": b"{}", name: b"x"})
    staging = tmp_path / "staging"
    with pytest.raises(errors.UnsafeArchiveError) as caught:
        extract_archive(archive, staging)
    assert caught.value.member == name
    assert not staging.exists() or not any(staging.rglob("*")), "files were written before the refusal"


def test_names_at_the_file_systems_limit_unpack(tmp_path):
    longest = "x" * 251 + ".jpg"  # 255 bytes: the limit of ext4, tmpfs, APFS and NTFS
    archive = _zip(tmp_path / "export.zip", {"metadata.json": b"{}", f"images/{longest}": b"x", "images/a/b": b"y"})
    sizes = extract_archive(archive, tmp_path / "staging")
    assert sizes == {"metadata.json": 2, f"images/{longest}": 1, "images/a/b": 1}
    assert (tmp_path / "staging" / "images" / longest).read_bytes() == b"x"


def test_an_images_member_that_is_a_file_is_refused_naming_the_archive(tmp_path):
    archive = _zip(tmp_path / "export.zip", {"metadata.json": b'{"media_items": []}', "images": b"x"})
    staging = tmp_path / "staging"
    with pytest.raises(errors.CorruptArchiveError) as caught:
        extract_archive(archive, staging)
    assert caught.value.member == "images" and caught.value.path == str(archive)
    assert str(archive) in str(caught.value) and "'images'" in str(caught.value)
    assert not staging.exists() or not any(staging.rglob("*")), "files were written before the refusal"


@pytest.mark.parametrize(
    "reserved",
    [INDEX_FILE, METADATA_DIGEST, COLUMNS_FILE, DEFERRED_LOCK, f".{INDEX_FILE}.1.deadbeef.tmp"],
)
@pytest.mark.parametrize("as_folder", [False, True], ids=["file", "folder"])
def test_members_named_like_the_caches_own_files_are_refused(tmp_path, reserved, as_folder):
    member = f"{reserved}/x" if as_folder else reserved
    archive = _zip(tmp_path / "export.zip", {"metadata.json": b'{"media_items": []}', member: b"x"})
    staging = tmp_path / "staging"
    with pytest.raises(errors.UnsafeArchiveError) as caught:
        extract_archive(archive, staging)
    assert caught.value.member == member
    assert repr(member) in str(caught.value), f"the message does not name the member: {caught.value}"
    assert not staging.exists() or not any(staging.rglob("*")), "files were written before the refusal"
    # Below the export's root the cache writes nothing: there the name is an ordinary file's.
    deeper = _zip(tmp_path / "deeper.zip", {"metadata.json": b"{}", f"images/{member}": b"x"})
    assert f"images/{member}" in extract_archive(deeper, tmp_path / "deeper")
