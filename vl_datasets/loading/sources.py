"""Where a dataset's image bytes come from: the export's own images, a folder, any fsspec URL, and the
node-local copy in front of a remote one.

With ``images_root``, an image is ``<images_root>/<file_path>`` (contract §7): the row's
``file_path`` alone says where it is, so nothing is listed, and opening a million-item export
costs what reading its metadata costs. A source is picklable (DataLoader workers under spawn get a
copy) and opens its filesystem lazily in each process, after any fork. What a source shows
(``location``, ``display_root``, error messages, ``repr``) never holds a credential: storage
options stay out of every repr, and URLs are shown without user info or query string (an https
root may carry a SAS token there, which each image's URL then carries too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from ..backoff import RetryPolicy, image_read_policy
from ..cache.opened import local_store
from ..config import is_remote, local_folder, parse_size
from ..errors import ConfigurationError, ImageDecodeError, ImageNotFoundError, ImageReadError
from ..metadata.index import IMAGE_COLUMN
from ..metadata.json_depth import text_bytes
from ..redaction import redact_logs_of, redact_text, redact_text_of, redact_url
from .image_cache import ImageCache
from .object_identity import GETS_WITH_IDENTITY, LISTED_PROTOCOLS, ListedIdentities, info_identity
from .retries import read_with_retries

logger = logging.getLogger("vl_datasets")

# The optional dependency that brings each protocol, for the message when it is missing.
EXTRAS = {
    **dict.fromkeys(("s3", "s3a"), "s3"),
    **dict.fromkeys(("gs", "gcs"), "gcs"),
    **dict.fromkeys(("az", "abfs", "abfss"), "azure"),
    **dict.fromkeys(("http", "https"), "http"),
}
# A file_path that could name a file outside its root. Under a root that takes names literally (a
# local folder, object storage keys): a "." or ".." segment, or a NUL; "%2F" or "..." are names
# like others ("https%3A%2F%2Fsite%2Fcat.jpg", as scraped images are often named). Under an http(s)
# root, which a URL library and then a server may decode: also a segment of dots alone in any
# number of percent-encodings ("%2e%2e", "%252e"), or a separator or NUL smuggled in encoded.
# RE2 syntax, so that Arrow applies it to a whole column and ``re`` to one path alike.
_DOT = r"(?:\.|%(?:25)*2[eE])"
OUTSIDE_ROOT = rf"(?:^|/){_DOT}+(?:/|$)|%(?:25)*(?:2[fF]|5[cC]|00)|\x00"
OUTSIDE_LITERAL_ROOT = r"(?:^|/)\.\.?(?:/|$)|\x00"
# Compiled once: the prepared store checks a path on every read.
_OUTSIDE = {"decoded": re.compile(OUTSIDE_ROOT), "literal": re.compile(OUTSIDE_LITERAL_ROOT)}
RootReading = Literal["literal", "decoded"]
HTTP_READ_TIMEOUT_S = 60.0  # aiohttp's default is 300 s for the whole request: a stalled read would hold a batch
# botocore's own retries (5 attempts in "legacy" mode) would multiply ours: one attempt each, ours
# count. ("max_attempts" there counts retries, not attempts: 1 would mean two requests.)
S3_SINGLE_ATTEMPT = {"total_max_attempts": 1, "mode": "standard"}


class ImageSource(Protocol):
    """Image bytes by path under a root."""

    display_root: str  # the root as shown to people: no credentials
    separator: str  # between the root and a path, in ``location``

    def read(self, path: str) -> bytes: ...

    def location(self, path: str) -> str: ...

    def scrub(self, text: str) -> str:
        """``text`` (an error message) with no secret left: URL credentials and this source's own."""
        ...


@runtime_checkable
class WithLocalCopy(Protocol):
    """A source that may hold a copy of an image on this machine (``CachedSource``)."""

    def cached(self, path: str) -> bytes | None:
        """The copy's bytes, cheap enough to read in the caller's thread; None when there is none."""
        ...


@runtime_checkable
class WithIdentity(Protocol):
    """A source that can say what an original is now, so a copy made from an older one is known stale.

    ``identity(path)`` is a non-zero 64-bit digest of the original's size and modification time (a
    local file), or of its ETag, else size and modification time (an fsspec object); 0 when the
    original is gone. ``identity_is_cheap``: a stat, not a request (the prepared store checks such
    identities on every read)."""

    identity_is_cheap: bool

    def identity(self, path: str) -> int: ...


def local_copy(source: ImageSource, path: str) -> bytes | None:
    """The bytes of ``path`` from a copy on this machine, if ``source`` keeps one and has it."""
    return source.cached(path) if isinstance(source, WithLocalCopy) else None


class LocalFolder:
    """Images under a folder of this machine (the export's own ``images/``, or a mounted disk).

    ``retry`` (default ``image_read_policy()``: the ``VL_DATASETS_READ_*`` variables) retries what
    a network mount's timeouts and resets; a plain read cannot be cut, so its deadline is checked
    between attempts."""

    separator = os.sep

    def __init__(self, root: str | os.PathLike, *, retry: RetryPolicy | None = None) -> None:
        self.display_root = str(root)
        self.retry = retry or image_read_policy()

    def read(self, path: str) -> bytes:
        file = object_path(self.display_root, path, protocol="file")

        def read_file(timeout_s: float | None) -> bytes:
            with open(file, "rb") as handle:
                return handle.read()

        return read_with_retries(self.retry, read_file, what=f"read of {self.location(path)}")

    identity_is_cheap = True

    def identity(self, path: str) -> int:
        """The original's size and mtime (``WithIdentity``): a stat; 0 when it is gone."""
        try:
            stat = os.stat(object_path(self.display_root, path, protocol="file"))
        except (FileNotFoundError, NotADirectoryError):
            return 0
        # identity_of(size, mtime), spelt out: this runs on every prepared read, at a quarter of the cost.
        return xxhash.xxh3_64_intdigest(b"%d\0%d" % (stat.st_size, stat.st_mtime_ns)) or 1

    def location(self, path: str) -> str:
        return os.path.join(self.display_root, path)

    def scrub(self, text: str) -> str:
        return redact_text(text)  # a filesystem's message may still quote a URL (a mounted bucket's)

    def __repr__(self) -> str:
        return f"LocalFolder({self.display_root!r})"


class FsspecRoot:
    """Images under an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``https://host/path``, ...).

    ``storage_options`` go to fsspec. For S3, unless they say otherwise, the connection pool is
    sized for ``reads_in_flight`` (botocore's default of 10 would queue the rest).

    ``retry`` (default ``image_read_policy()``: the ``VL_DATASETS_READ_*`` variables) is the only
    retry loop: botocore and s3fs make one attempt each (unless ``config_kwargs`` set botocore's
    ``retries``: then they multiply, and a warning says so), so the attempts the policy counts are
    the requests the storage sees. Each attempt is cut at ``attempt_timeout_s`` or at the image's
    deadline, whichever comes first, with the read cancelled (async filesystems: s3, gcs, http).
    """

    separator = "/"

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        reads_in_flight: int = 64,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.protocol = _checked_protocol(url)
        self._base, self._query = _root_parts(url, self.protocol)
        self.display_root = redact_url(self._base)
        self.storage_options = _with_pool_size(self.protocol, dict(storage_options or {}), reads_in_flight)
        self.retry = retry or image_read_policy()
        self._filesystem: tuple[Any, str] | None = None
        self._pid: int | None = None
        redact_logs_of()  # fsspec's and aiohttp's DEBUG lines hold full URLs, tokens included

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_filesystem": None, "_pid": None}  # a live filesystem stays in its process

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        redact_logs_of()  # a spawned worker starts with logging as Python leaves it

    def __repr__(self) -> str:
        return f"FsspecRoot({self.display_root!r})"  # never the storage options: they may hold keys

    def read(self, path: str) -> bytes:
        fs, root = self._open()
        url = object_path(root, path, protocol=self.protocol) + (f"?{self._query}" if self._query else "")

        def read_once(timeout_s: float | None) -> bytes:
            if getattr(fs, "async_impl", False) and timeout_s is not None:
                return fs.cat_file(url, timeout=timeout_s)  # fsspec cancels the read at the timeout
            return fs.cat_file(url)

        return read_with_retries(self.retry, read_once, what=f"read of {self.location(path)}")

    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of the object at ``path``: one ranged GET per
        attempt, retried and bounded in time as ``read`` is (a shard is fetched in such ranges)."""
        fs, root = self._open()
        url = object_path(root, path, protocol=self.protocol) + (f"?{self._query}" if self._query else "")

        def read_once(timeout_s: float | None) -> bytes:
            if getattr(fs, "async_impl", False) and timeout_s is not None:
                return fs.cat_file(url, start=start, end=end, timeout=timeout_s)
            return fs.cat_file(url, start=start, end=end)

        return read_with_retries(self.retry, read_once, what=f"read of {self.location(path)} [{start}:{end}]")

    identity_is_cheap = False  # a request per image

    def identity(self, path: str) -> int:
        """The object's ETag, else its size and modification time, from fsspec's ``info`` (a HEAD
        on http and S3; ``WithIdentity``); 0 when it is gone. Retried as a read is."""
        fs, root = self._open()
        url = object_path(root, path, protocol=self.protocol) + (f"?{self._query}" if self._query else "")
        try:
            info = read_with_retries(self.retry, lambda _: fs.info(url), what=f"look-up of {self.location(path)}")
        except FileNotFoundError:
            return 0
        return info_identity(info)

    def identities(self) -> ListedIdentities | None:
        """Identities of many images from listings of their folders, for one job in this process
        (``object_identity``); None where a listing carries no ETags (http): ask ``identity``."""
        return ListedIdentities(self._list_folder) if self.protocol in LISTED_PROTOCOLS else None

    def _list_folder(self, folder: str) -> dict[str, int]:
        fs, root = self._open()
        url = object_path(root, folder, protocol=self.protocol) if folder else root
        what = f"listing of {self.location(folder)}"
        try:  # refresh: a listing cached from before would hide replaced originals
            entries = read_with_retries(self.retry, lambda _: fs.ls(url, detail=True, refresh=True), what=what)
        except FileNotFoundError:
            return {}
        fs.invalidate_cache(url)  # the job keeps its own, smaller copy: {name: identity}
        return {e["name"].rsplit("/", 1)[-1]: info_identity(e) for e in entries if e.get("type") != "directory"}

    def read_with_identity(self, path: str) -> tuple[bytes, int]:
        """``read(path)`` and the original's identity, from the one GET on S3 and http(s) (its
        response's ETag, size, date); elsewhere, or when the response cannot tell, a look-up too."""
        get = GETS_WITH_IDENTITY.get(self.protocol)
        if get is None:
            return self.read(path), self.identity(path)
        fs, root = self._open()
        url = object_path(root, path, protocol=self.protocol) + (f"?{self._query}" if self._query else "")
        from fsspec.asyn import sync

        data, identity = read_with_retries(
            self.retry,
            lambda timeout_s: sync(fs.loop, get, fs, url, timeout=timeout_s),
            what=f"read of {self.location(path)}",
        )
        return data, identity if identity is not None else self.identity(path)

    def location(self, path: str) -> str:
        return f"{self.display_root}/{path}"

    def scrub(self, text: str) -> str:
        """``text`` (an error message) without this root's query string or user info (``redact_text_of``)."""
        return redact_text_of(text, f"{self._base}?{self._query}" if self._query else self._base)

    def _open(self) -> tuple[Any, str]:
        # Per process: an async filesystem's event loop and connections do not survive a fork.
        # Two threads racing here both build one; fsspec's instance cache usually makes it the same.
        if self._filesystem is None or self._pid != os.getpid():
            import fsspec

            fs, root = fsspec.core.url_to_fs(self._base, **self._options())
            if self.protocol in ("s3", "s3a"):
                fs.retries = 1  # s3fs's own loop around botocore's: our policy counts the attempts
            self._filesystem, self._pid = (fs, root.rstrip("/")), os.getpid()
        return self._filesystem

    def _options(self) -> dict[str, Any]:
        """The storage options with the inner layers' retries off and their timeouts the policy's."""
        options = dict(self.storage_options)
        timeout_s = self.retry.attempt_timeout_s
        if self.protocol in ("http", "https") and "timeout" not in options.get("client_kwargs", {}):
            import aiohttp

            # aiohttp's default is 300 s for the whole request: a stalled read would hold a batch.
            timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s, sock_read=timeout_s)
            options["client_kwargs"] = {**options.get("client_kwargs", {}), "timeout": timeout}
        if self.protocol in ("s3", "s3a"):
            config = dict(options.get("config_kwargs") or {})
            if "retries" in config:
                logger.warning(
                    "storage_options set botocore's retries for %s: its attempts multiply the %d of the image "
                    "read policy (leave them out to have the policy's count be the count).",
                    self.display_root,
                    self.retry.max_attempts,
                )
            config.setdefault("retries", dict(S3_SINGLE_ATTEMPT))  # a copy: botocore edits it in place
            if timeout_s is not None:
                config.setdefault("connect_timeout", timeout_s)
                config.setdefault("read_timeout", timeout_s)
            options["config_kwargs"] = config
            # Above 1, s3fs sends a HEAD before each GET to see whether to split it: a second round
            # trip per image, for images far below its 50 MiB chunks.
            options.setdefault("max_concurrency", 1)
        return options


class CachedSource:
    """``source`` with a node-local copy of what it read in front of it (see ``image_cache``)."""

    def __init__(self, source: ImageSource, cache: ImageCache) -> None:
        self.source, self.cache = source, cache
        self.display_root, self.separator = source.display_root, source.separator

    def read(self, path: str) -> bytes:
        data = self.cache.get(path)
        if data is not None:
            return data
        data = self.source.read(path)
        self.cache.put(path, data)  # a cache it cannot write warns once and slows later epochs, nothing more
        return data

    def cached(self, path: str) -> bytes | None:
        return self.cache.get(path)

    @property
    def identity_is_cheap(self) -> bool:
        return isinstance(self.source, WithIdentity) and self.source.identity_is_cheap

    def identity(self, path: str) -> int:
        """The original's identity, asked of the root (``WithIdentity``); 0 where it cannot say."""
        return self.source.identity(path) if isinstance(self.source, WithIdentity) else 0

    def location(self, path: str) -> str:
        return self.source.location(path)

    def scrub(self, text: str) -> str:
        return self.source.scrub(text)

    def __repr__(self) -> str:
        return f"CachedSource({self.source!r}, {self.cache!r})"


def check_source_options(
    images_root: str | os.PathLike | None,
    storage_options: Mapping[str, Any] | None,
    image_cache: str | int | None,
    *,
    prepared_root: str | os.PathLike | None = None,
) -> None:
    """Refuse options that cannot work together, before anything is fetched or read. (``storage_options``
    also serve a ``prepared_root`` URL: then they need no images_root.)"""
    if prepared_root is not None and not is_remote(prepared_root):
        local_folder("prepared_root", prepared_root)  # "" would be the current folder
    if prepared_root is not None and is_remote(prepared_root):
        _checked_protocol(os.fspath(prepared_root), "prepared_root")
        storage_options = None  # theirs as much as the images'
    if images_root is None:
        for name, value in (("storage_options", storage_options), ("image_cache", image_cache)):
            if value is not None:
                raise ConfigurationError(f"{name} applies to images read from an images_root; none was given.")
        return
    if is_remote(images_root):
        protocol = _checked_protocol(os.fspath(images_root))
        if protocol in ("file", "local"):  # a folder too: checked as one
            _check_folder(Path(_local_path(os.fspath(images_root))), images_root)
        if protocol in ("http", "https") and "#" in os.fspath(images_root):
            # Found by each read, every item failed alone, asking for what lies before the '#'.
            # Shown with its '#' as %23, so the whole URL is redacted: what follows a '#' may be a
            # password's rest (user:pa#ss@host) or a signed query's.
            shown = redact_url(os.fspath(images_root).replace("#", "%23"))
            raise ConfigurationError(
                f"images_root {shown} holds a '#' (shown as %23), which begins a URL's fragment, never "
                "sent to the server: write it %23."
            )
    else:
        if storage_options is not None:
            raise ConfigurationError(f"storage_options apply to an fsspec URL; images_root {images_root} is a folder.")
        root = local_folder("images_root", images_root)
        _check_folder(root, root)
    if image_cache is not None:
        _size_limit(image_cache)


def _check_folder(root: Path, named: str | os.PathLike) -> None:
    # Found now, the error names the setting; found by each read, every item would fail alone.
    if not root.is_dir():
        raise ConfigurationError(f"images_root {named} is not a folder.")


def _local_path(url: str) -> str:
    """The path a ``file://`` (or ``local://``) URL names on this machine."""
    import fsspec

    return fsspec.core.strip_protocol(url)


def open_source(
    export_images: Path,
    *,
    images_root: str | os.PathLike | None,
    storage_options: Mapping[str, Any] | None,
    image_cache: str | int | None,
    cache_dir: str | os.PathLike | None,
    retry: RetryPolicy | None = None,
) -> ImageSource:
    """Where a dataset reads its images: the export's own ``images/``, or ``images_root``, with the
    node-local copy when ``image_cache`` gives its size limit. ``retry`` is how reads are retried
    and bounded in time (default ``image_read_policy()``, set by the ``VL_DATASETS_READ_*``
    variables)."""
    check_source_options(images_root, storage_options, image_cache)
    retry = retry or image_read_policy()
    if images_root is None:
        return LocalFolder(export_images, retry=retry)
    source: ImageSource = (
        FsspecRoot(os.fspath(images_root), storage_options, retry=retry)
        if is_remote(images_root)
        else LocalFolder(local_folder("images_root", images_root), retry=retry)
    )
    if image_cache is None:
        return source
    digest = _root_digest(images_root, source.display_root, storage_options)
    folder = local_store(cache_dir).node_area("images", digest)
    return CachedSource(source, ImageCache(folder, _size_limit(image_cache)))


def _size_limit(image_cache: str | int) -> int:
    limit = parse_size(image_cache) if isinstance(image_cache, str) else image_cache
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigurationError(f"image_cache must be a positive size such as 50G, got {image_cache!r}.")
    return limit


def root_reading(images_root: str | os.PathLike | None) -> RootReading | None:
    """How ``images_root`` reads a path: ``"literal"`` (a local folder, object storage), else
    ``"decoded"`` (http(s), and any protocol not known to take names literally); None without a
    root (the export's own images, read from its folder)."""
    if images_root is None:
        return None
    if not is_remote(images_root):
        return "literal"
    return _reading_of(_protocol(os.fspath(images_root)).lower())


def _reading_of(protocol: str) -> RootReading:
    return "literal" if protocol in _LITERAL_PROTOCOLS else "decoded"


def _protocol(url: str) -> str:
    """The protocol of ``url`` as fsspec reads it (``file`` for a plain path)."""
    import fsspec

    return fsspec.core.split_protocol(url)[0] or "file"


# Protocols whose filesystems take a name as it is (the local disk; SDKs that encode an object's
# key themselves): "%2e%2e" is a file of that name there, inside the root.
_LITERAL_PROTOCOLS = frozenset(("file", "local", "memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"))


def with_source_paths(table: pa.Table, reading: RootReading) -> pa.Table:
    """``table`` with each row's image path under an images_root: its ``file_path``, ``/``-separated
    and relative (null when it has none, so ``missing_images`` applies). Nothing is listed.

    A ``file_path`` that ``object_path`` would refuse (one that could leave the root) is no image
    there either: its row is named by ``missing_images``, and nothing is ever asked for it.
    """
    path = source_paths(table.column("file_path"), reading)
    if IMAGE_COLUMN in table.column_names:
        return table.set_column(table.column_names.index(IMAGE_COLUMN), IMAGE_COLUMN, path)
    return table.append_column(IMAGE_COLUMN, path)


def source_paths(file_paths: pa.ChunkedArray | pa.Array, reading: RootReading) -> pa.ChunkedArray | pa.Array:
    """The image path under an images_root read so (``root_reading``) of each ``file_path`` (see
    ``with_source_paths``)."""
    chunks = file_paths.chunks if isinstance(file_paths, pa.ChunkedArray) else [file_paths]
    paths = [_source_paths(chunk, reading) for chunk in chunks]
    return pa.chunked_array(paths, pa.string()) if isinstance(file_paths, pa.ChunkedArray) else paths[0]


def _source_paths(file_paths: pa.Array, reading: RootReading) -> pa.Array:
    path = file_paths.cast(pa.string())
    texts = text_bytes(path)
    if texts is not None and (texts[0] == ord("\\")).any():
        path = pc.replace_substring(path, "\\", "/")
    path = pc.utf8_ltrim(path, characters="/")
    outside = np.zeros(len(path), dtype=bool)
    suspects = _could_leave_root(path)
    if len(suspects):
        matched = pc.match_substring_regex(path.take(pa.array(suspects)), _OUTSIDE[reading].pattern)
        outside[suspects] = pc.fill_null(matched, False).to_numpy(zero_copy_only=False)
    return pc.if_else(pc.or_(pc.equal(path, ""), pa.array(outside)), pa.scalar(None, pa.string()), path)


def _could_leave_root(paths: pa.Array) -> np.ndarray:
    """The rows of ``paths`` (strings) that ``OUTSIDE_ROOT`` could match: those holding a '%' or a
    NUL, or a dot that opens the path or follows a '/'. The pattern run on every path cost 0.1 s
    per million; numpy finds these bytes at a few per nanosecond, and ordinary paths hold none."""
    texts = text_bytes(paths)
    if texts is None:
        return np.zeros(0, dtype=np.int64)
    data, bounds = texts
    starts, ends = bounds[:-1], bounds[1:]
    dot = data == ord(".")
    marks = (data == ord("%")) | (data == 0)
    marks[1:] |= dot[1:] & (data[:-1] == ord("/"))
    opening = starts[ends > starts]
    marks[opening] |= dot[opening]
    return np.unique(np.searchsorted(ends, np.flatnonzero(marks), side="right"))


def object_path(root: str, path: str, *, protocol: str) -> str:
    """Where ``path`` (a row's image path under the root, ``/``-separated) is read: the one join of a
    root and a path, for every protocol, that never leaves the root.

    A path that could leave the root (``OUTSIDE_LITERAL_ROOT``, or ``OUTSIDE_ROOT`` under a root
    that is not known to read names literally: a dot segment or a separator however encoded)
    raises ``ImageNotFoundError`` and is never read. Under an http(s) root each segment is
    percent-encoded, so that "photo #1.jpg", "q?x.jpg" or "100%.jpg" reach the server as those
    names rather than as a fragment, a query or an escape. Other protocols take the name as it is:
    s3fs, gcsfs and the local disk treat a key or a file name literally.

    A backslash is a folder separator to the check, whatever the root (a share mounted here may
    read it so), and in the name read, but on this system's disk where the separator is ``/``:
    there it is part of a file's name (an unpacked export may hold ``images/sub\\x.jpg``).
    """
    name = path.lstrip("/")
    path = path.replace("\\", "/").lstrip("/")
    if not path or _OUTSIDE[_reading_of(protocol)].search(path):
        raise ImageNotFoundError(f"The file_path {path!r} could name a file outside images_root: it is never read.")
    if protocol == "file" and os.sep == "/":  # the path is already this system's: spare a split and a
        return root + name if root[-1:] in ("", "/") else f"{root}/{name}"  # join (a stat per prepared read)
    segments = path.split("/")
    if protocol in ("http", "https"):
        segments = [quote(segment, safe="") for segment in segments]
    if protocol == "file":
        return os.path.join(root, *segments)
    return f"{root.rstrip('/')}/{'/'.join(segments)}"


def image_error(exc: BaseException, *, media_id: str | None, source: ImageSource, path: str) -> Exception:
    """The typed error for a failed read of ``media_id``'s image (None: not known to the reader):
    ``ImageNotFoundError`` for a missing one, else ``ImageDecodeError``; both name the media id and
    the image's location, with no secret."""
    location = source.location(path)
    image = "the image" if media_id is None else f"the image of media_id {media_id!r}"
    if isinstance(exc, ImageReadError):
        return ImageReadError(
            f"Cannot read {image} at {location}: {source.scrub(str(exc))}",
            media_id=media_id,
            path=location,
            attempts=exc.attempts,
        )
    if isinstance(exc, ImageDecodeError):
        return exc
    reason = source.scrub(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, FileNotFoundError):
        named = "" if media_id is None else f" for media_id {media_id!r}"
        return ImageNotFoundError(f"No image{named} at {location} ({reason})", media_id=media_id)
    return ImageDecodeError(f"Cannot read {image} at {location}: {reason}", media_id=media_id, path=location)


def _checked_protocol(url: str, setting: str = "images_root") -> str:
    """``url``'s protocol, once fsspec is known to have a filesystem for it here; errors name ``setting``."""
    import fsspec

    protocol = _protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        extra = EXTRAS.get(protocol)
        hint = f"pip install 'vl_datasets[{extra}]'" if extra else "install the fsspec implementation it names"
        raise ConfigurationError(f"{setting} {redact_url(url)} needs a package: {exc}; {hint}.") from None
    except ValueError:
        raise ConfigurationError(f"{setting} {redact_url(url)}: fsspec knows no protocol {protocol!r}.") from None
    return protocol


def _with_pool_size(protocol: str, options: dict[str, Any], reads: int) -> dict[str, Any]:
    if protocol not in ("s3", "s3a"):
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", reads)
    return {**options, "config_kwargs": config}


def root_identity(images_root: str | os.PathLike, display_root: str, storage_options: Mapping[str, Any] | None) -> str:
    """What stores kept for a root (its image cache, its prepared store) are keyed by, as JSON: the
    root as shown (``display_root``), and its endpoint (``root_endpoint``), as the same bucket behind
    another endpoint is another store.

    Two roots that differ only in what is not shown of them, their query string or an http user
    name (``?set=B`` picking other images, another account), may hold other images: where the root
    has such a part, a SHA-256 of what picks them (``whole_root``) joins the identity, never its
    text, which is written to disk (a prepared store's settings). What signs a URL (a password, a
    signature and its expiry) is left out: a root's token that rotates keeps its stores."""
    identity = {"root": display_root, "endpoint": root_endpoint(images_root, storage_options)}
    whole = whole_root(images_root, display_root)
    if whole != display_root:  # only then: a root without such parts keeps its stores
        identity["whole"] = hashlib.sha256(whole.encode()).hexdigest()
    return json.dumps(identity, sort_keys=True)


def root_endpoint(root: str | os.PathLike, storage_options: Mapping[str, Any] | None) -> str | None:
    """The endpoint that ``root``'s filesystem reads from, wherever it was chosen: ``storage_options``,
    fsspec's config, and for S3 also what botocore reads (``AWS_ENDPOINT_URL_S3``,
    ``AWS_ENDPOINT_URL``, the AWS config file); None where nothing chose one, the service's own.
    Without its credentials (user info, a token in its query): they rotate over the same bucket.

    Read from the options fsspec builds the filesystem with (its config's defaults, then ours),
    never from a filesystem built here: an S3 one starts fsspec's IO thread, in a process that
    forks DataLoader workers next."""
    import fsspec.config

    protocol = _protocol(os.fspath(root))
    options = fsspec.config.apply_config(fsspec.get_filesystem_class(protocol), dict(storage_options or {}))
    endpoint = options.get("endpoint_url") or (options.get("client_kwargs") or {}).get("endpoint_url")
    if not endpoint and protocol in ("s3", "s3a"):
        endpoint = _botocore_endpoint(options)
    return redact_url(str(endpoint)) if endpoint else None


def _botocore_endpoint(options: dict[str, Any]) -> str | None:
    """The S3 endpoint botocore finds itself, where s3fs hands it none: in the environment or the
    AWS config file, from the session s3fs will use (its profile); never from the network."""
    import botocore.exceptions
    import botocore.session

    try:
        # Read for its config only: without the request handlers, whose registration is most of a
        # session's 20 ms.
        session = options.get("session") or botocore.session.Session(
            profile=options.get("profile"), include_builtin_handlers=False
        )
        ignore = (options.get("config_kwargs") or {}).get("ignore_configured_endpoint_urls")  # the client's first
        if ignore is None:
            ignore = session.get_config_variable("ignore_configured_endpoint_urls")
        if ignore:
            return None
        try:  # botocore's own lookup, in its order: a private class, but the one its clients use
            from botocore.configprovider import ConfiguredEndpointProvider
        except ImportError:  # moved, or a botocore before configured endpoints: the variables at least
            return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return ConfiguredEndpointProvider(session.full_config, session.get_scoped_config(), "s3").provide()
    except botocore.exceptions.BotoCoreError as exc:  # a profile that is not there, a config that does not parse
        raise ConfigurationError(f"The AWS configuration for the images_root cannot be read: {exc}") from None


def whole_root(root: str | os.PathLike, display_root: str) -> str:
    """``root`` with all that picks the images its source reads: ``display_root``, and where the root
    has them, its user name and the parameters of its query (``?set=B``), sorted. Not a password,
    nor what URL-signing schemes add to a query (a signature, its date and expiry): those rotate
    over the same images, and a store built under yesterday's token serves today's."""
    if not is_remote(root):
        return display_root
    url = os.fspath(root)
    base, query = _root_parts(url, _protocol(url))
    parts = urlsplit(base)
    # An http user picks what a server shows; an object store's user info is its access key id,
    # which rotates with the credentials.
    user = parts.netloc.rpartition("@")[0].partition(":")[0] if parts.scheme in ("http", "https") else ""
    picked = sorted(p for p in query.split("&") if p and not _signs(p.partition("=")[0]))
    if not user and not picked:
        return display_root
    return f"{display_root}?user={user}&{'&'.join(picked)}"


# Query parameters of the URL-signing schemes of S3 (X-Amz-*), GCS (X-Goog-*), Azure SAS and
# CloudFront, and common token names: they say who may read, not what is read.
_SIGNING_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_NAMES = frozenset(
    {
        *("sig", "signature", "token", "access_token", "expires", "policy", "key-pair-id"),
        *("awsaccesskeyid", "googleaccessid"),  # S3's and GCS's query-string authentication of old
        *("se", "st", "sv", "ss", "srt", "sp", "spr", "si", "sr", "sip", "ses"),  # an Azure SAS
        *("skoid", "sktid", "skt", "ske", "sks", "skv", "sdd"),  # an Azure user-delegation SAS
    }
)


def _signs(name: str) -> bool:
    name = name.lower()
    return name in _SIGNING_NAMES or name.startswith(_SIGNING_PREFIXES)


def _root_parts(url: str, protocol: str) -> tuple[str, str]:
    """(the base, the query) of an fsspec root, as ``FsspecRoot`` reads it: an https root's query
    (a SAS token, say) belongs after each image's path, not in it."""
    parts = urlsplit(url)
    query = parts.query if protocol in ("http", "https") else ""
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) if query else url
    return base.rstrip("/"), query


def _root_digest(images_root: str | os.PathLike, display_root: str, storage_options: Mapping[str, Any] | None) -> str:
    """The image cache folder of a root (``root_identity``)."""
    return hashlib.sha256(root_identity(images_root, display_root, storage_options).encode()).hexdigest()[:20]
