"""Unpack an export ZIP safely: nothing lands outside the target folder, bombs are refused, CRCs checked.

Used by the cache before publishing an entry, and when a user opens a ZIP they downloaded.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CorruptArchiveError, InsufficientDiskSpaceError, UnsafeArchiveError

COPY_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """What a sane export looks like. Far above any real export; far below a ZIP bomb."""

    max_members: int = 5_000_000
    max_total_bytes: int = 2 << 40  # 2 TiB uncompressed
    # Deflate tops out near 1000:1; real exports (JPEG + parquet) barely compress at all.
    max_ratio: float = 200.0
    ratio_applies_above_bytes: int = 64 << 20


def safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or ``UnsafeArchiveError`` if it is absolute or climbs out."""
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":") or ".." in path.parts:
        raise UnsafeArchiveError(f"Archive member {name!r} would be written outside the export folder.", member=name)
    return path


def check_archive(zf: zipfile.ZipFile, limits: ArchiveLimits, source: str) -> list[zipfile.ZipInfo]:
    """Refuse links, escaping paths, too many members and too many bytes; return the file members."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(f"{source} has {len(infos):,} members (limit {limits.max_members:,}).")
    files, total, compressed, seen = [], 0, 0, set()
    for info in infos:
        path = safe_member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{source} holds a symbolic link {info.filename!r}.", member=info.filename)
        if info.is_dir():
            continue
        if path in seen:
            raise UnsafeArchiveError(f"{source} holds {info.filename!r} twice.", member=info.filename)
        seen.add(path)
        files.append(info)
        total += info.file_size
        compressed += info.compress_size
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(f"{source} would unpack to {total:,} bytes (limit {limits.max_total_bytes:,}).")
    if total > limits.ratio_applies_above_bytes and total > limits.max_ratio * max(compressed, 1):
        raise UnsafeArchiveError(
            f"{source} would unpack {compressed:,} bytes into {total:,} (over {limits.max_ratio:g}:1): a ZIP bomb?"
        )
    return files


def extract_archive(
    zip_path: str | os.PathLike, dest: str | os.PathLike, *, limits: ArchiveLimits = ArchiveLimits()
) -> dict[str, int]:
    """Unpack ``zip_path`` into the folder ``dest``; return ``{relative path: size}`` of the files.

    Every member's CRC is verified while it is copied. On any error, what was written stays in
    ``dest`` (a staging folder the caller discards).
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            files = check_archive(zf, limits, str(zip_path))
            need = sum(info.file_size for info in files)
            dest.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(dest).free
            if need > free:
                raise InsufficientDiskSpaceError(
                    f"Unpacking {zip_path} needs {need:,} bytes; {dest} has {free:,} free.",
                    required_bytes=need,
                    free_bytes=free,
                )
            sizes = {}
            for info in files:
                rel = safe_member_path(info.filename)
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:  # zf.open checks the CRC at EOF
                    shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
                sizes[rel.as_posix()] = info.file_size
            return sizes
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise CorruptArchiveError(f"{zip_path} is not a readable ZIP archive: {exc}", path=str(zip_path)) from None
