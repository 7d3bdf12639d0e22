"""Unpack an export ZIP safely: nothing lands outside the target folder, bombs are refused, CRCs checked.

Used by the cache before publishing an entry, and when a user opens a ZIP they downloaded.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CorruptArchiveError, InsufficientDiskSpaceError, UnsafeArchiveError
from .layout import RESERVED_PREFIX

COPY_CHUNK_BYTES = 1 << 20
# Linux, macOS and Windows file systems allow 255 bytes (or UTF-16 units) per name; the
# destination's own limit replaces this where the platform reports one.
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096

# What reading a member's data raises when the data is damaged: deflate (zlib.error), bzip2
# (OSError), LZMA (LZMAError), a stream cut short (EOFError), a CRC mismatch (BadZipFile). An
# OSError reading the archive file itself lands here too: either way its bytes cannot be had,
# and the caller discards the archive.
_DECOMPRESSION_ERRORS: tuple[type[Exception], ...] = (zlib.error, EOFError, OSError, zipfile.BadZipFile)
try:
    import lzma

    _DECOMPRESSION_ERRORS += (lzma.LZMAError,)
except ImportError:  # Python built without lzma: zipfile cannot open LZMA members either
    pass
# Opening a member also raises these: an unknown compression method, or an encrypted member.
_OPEN_ERRORS: tuple[type[Exception], ...] = (*_DECOMPRESSION_ERRORS, NotImplementedError, RuntimeError)
_IMAGES = PurePosixPath("images")  # the export's images folder


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


def check_archive(
    zf: zipfile.ZipFile, limits: ArchiveLimits, source: str, dest: str | os.PathLike | None = None
) -> list[zipfile.ZipInfo]:
    """Refuse links, escaping paths, members that collide or whose names the file system under
    ``dest`` cannot hold, members named like the cache's own files, an ``images`` that is a file,
    encrypted members, too many members and too many bytes; return the file members.

    Every refusal happens before a byte is written, and names the member at fault: an ``OSError``
    halfway through the unpack would name only the staging path.
    """
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(f"{source} has {len(infos):,} members (limit {limits.max_members:,}).")
    name_max, path_max, dest_bytes = _name_limits(dest)
    files: list[zipfile.ZipInfo] = []
    total, compressed = 0, 0
    file_members: dict[PurePosixPath, str] = {}
    folder_members: dict[PurePosixPath, str] = {}  # every folder the unpack creates -> a member that needs it
    for info in infos:
        path = safe_member_path(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchiveError(f"{source} holds a symbolic link {info.filename!r}.", member=info.filename)
        if not path.parts:
            raise UnsafeArchiveError(f"{source} holds a member with no name: {info.filename!r}.", member=info.filename)
        _check_name_lengths(info.filename, path, source, name_max, path_max, dest_bytes)
        _check_not_reserved(info.filename, path, source)
        folders = list(path.parents)[:-1]  # every folder above the member, but not dest itself (".")
        if info.is_dir():
            folders.append(path)
        for folder in folders:
            folder_members.setdefault(folder, info.filename)
        if info.is_dir():
            continue
        if path == _IMAGES:
            raise CorruptArchiveError(
                f"{source}: member {info.filename!r} is a file where the export's images/ folder belongs.",
                path=source,
                member=info.filename,
            )
        if path in file_members:
            raise UnsafeArchiveError(f"{source} holds {info.filename!r} twice.", member=info.filename)
        file_members[path] = info.filename
        if info.flag_bits & 0x1:
            raise CorruptArchiveError(
                f"{source}: member {info.filename!r} is encrypted; an export archive never is.",
                path=source,
                member=info.filename,
            )
        files.append(info)
        total += info.file_size
        compressed += info.compress_size
    # Checked once every member is seen, so that the order of the file and the folder does not matter.
    for path, name in file_members.items():
        other = folder_members.get(path)
        if other is not None:
            raise UnsafeArchiveError(
                f"{source} holds the file {name!r} and {other!r}, which needs a folder of the same name.",
                member=name,
            )
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(f"{source} would unpack to {total:,} bytes (limit {limits.max_total_bytes:,}).")
    if total > limits.ratio_applies_above_bytes and total > limits.max_ratio * max(compressed, 1):
        raise UnsafeArchiveError(
            f"{source} would unpack {compressed:,} bytes into {total:,} (over {limits.max_ratio:g}:1): a ZIP bomb?"
        )
    return files


def _name_limits(dest: str | os.PathLike | None) -> tuple[int, int, int]:
    """The longest file name and path (in bytes) the file system under ``dest`` takes, and the
    length of ``dest`` itself (0 without one). ``dest`` may not exist yet: its nearest existing
    folder answers for it."""
    if dest is None:
        return DEFAULT_NAME_MAX, DEFAULT_PATH_MAX, 0
    dest = Path(dest).absolute()
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    limits = []
    for name, default in (("PC_NAME_MAX", DEFAULT_NAME_MAX), ("PC_PATH_MAX", DEFAULT_PATH_MAX)):
        try:
            value = os.pathconf(probe, name)
        except (AttributeError, ValueError, OSError):  # no pathconf (Windows), or no such limit here
            value = -1
        limits.append(value if value > 0 else default)
    return limits[0], limits[1], len(os.fsencode(str(dest)))


def _check_name_lengths(
    member: str, path: PurePosixPath, source: str, name_max: int, path_max: int, dest_bytes: int
) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise UnsafeArchiveError(
                f"{source}: member {member!r} has a name of {len(os.fsencode(part))} bytes; "
                f"the file system takes at most {name_max}.",
                member=member,
            )
    # The unpacked file's absolute path, with its separator and the terminating NUL of PATH_MAX.
    length = dest_bytes + 1 + len(os.fsencode(path.as_posix())) + 1
    if length > path_max:
        raise UnsafeArchiveError(
            f"{source}: member {member!r} would unpack to a path of {length - 1} bytes; "
            f"the file system takes at most {path_max - 1}.",
            member=member,
        )


def _check_not_reserved(member: str, path: PurePosixPath, source: str) -> None:
    """Refuse a member at the export's root named like a file the cache writes there (its index,
    the metadata digest, ...): unpacked, it would be overwritten, or, as a folder, make writing the
    cache's file fail with a bare OSError. Below the root the cache writes nothing."""
    if path.parts[0].startswith((RESERVED_PREFIX, "." + RESERVED_PREFIX)):
        raise UnsafeArchiveError(
            f"{source}: member {member!r} takes a name the cache keeps for its own files ({RESERVED_PREFIX}*).",
            member=member,
        )


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
            files = check_archive(zf, limits, str(zip_path), dest)
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
                with open(target, "wb") as out:
                    _copy_member(zf, info, out, str(zip_path))
                sizes[rel.as_posix()] = info.file_size
            return sizes
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise CorruptArchiveError(f"{zip_path} is not a readable ZIP archive: {exc}", path=str(zip_path)) from None


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out, source: str) -> None:
    """Copy one member's data into ``out``; a member whose data cannot be read or decompressed
    raises ``CorruptArchiveError`` naming it. Errors writing ``out`` (a full disk) pass through
    as they are: the archive is not at fault for them."""
    try:
        src = zf.open(info)  # checks the local header; the CRC is checked at EOF
    except _OPEN_ERRORS as exc:
        raise _corrupt_member(info, source, exc) from None
    with src:
        while True:
            try:
                chunk = src.read(COPY_CHUNK_BYTES)
            except _DECOMPRESSION_ERRORS as exc:
                raise _corrupt_member(info, source, exc) from None
            if not chunk:
                return
            out.write(chunk)


def _corrupt_member(info: zipfile.ZipInfo, source: str, exc: BaseException) -> CorruptArchiveError:
    return CorruptArchiveError(
        f"{source}: member {info.filename!r} is damaged and cannot be unpacked ({exc or type(exc).__name__}).",
        path=source,
        member=info.filename,
    )
