"""Unpacking an export ZIP: unsafe members, bombs and corrupt archives are refused with typed errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from vl_datasets import errors
from vl_datasets.cache.archive import ArchiveLimits, extract_archive


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
