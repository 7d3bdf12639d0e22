"""Every exception the library raises, in four families a caller can catch as a group.

    VLDatasetsError
    ├── ConfigurationError (ValueError)              bad argument or environment value
    ├── APIError                                     talking to the Visual Layer API failed
    │   ├── APIStatusError                           the API answered with an error status
    │   │   ├── BadRequestError (ValueError)         400, 422
    │   │   ├── AuthenticationError (PermissionError)   401
    │   │   ├── PermissionDeniedError (PermissionError) 403
    │   │   ├── DatasetNotFoundError (LookupError)   404: no such dataset
    │   │   ├── ExportTaskNotFoundError (LookupError)   404: the dataset exists, the export task does not
    │   │   ├── DatasetNotReadyError                 409, or a dataset whose status is not READY
    │   │   ├── RequestTooLargeError                 413: a request body (a selection's ids) over the server's limit
    │   │   ├── RateLimitError                       429 after the retries ran out
    │   │   └── ServerError                          5xx after the retries ran out
    │   ├── APIConnectionError (ConnectionError)     no answer at all
    │   │   └── APITimeoutError (TimeoutError)
    │   └── ResponseValidationError (ValueError)     an answer we cannot read
    ├── ExportError                                  the export did not produce an archive
    │   ├── ExportFailedError                        it ended FAILED, REJECTED or CANCELED
    │   ├── ExportTimeoutError (TimeoutError)        it outlived the caller's deadline
    │   └── DownloadError (OSError)                  its archive could not be fetched intact
    │       └── InsufficientDiskSpaceError
    ├── CacheError                                   the cache and the archives put into it
    │   ├── CacheMissError (FileNotFoundError)       offline and nothing cached for the key
    │   │   └── VersionNotFoundError                 the export version asked for is not in the cache
    │   ├── LockTimeoutError (TimeoutError)          another process held the cache lock too long
    │   ├── VersionInUseError                        cache rm of a version a running job reads
    │   ├── ExportNotFoundError (FileNotFoundError)  a local export path that does not exist
    │   ├── UnsafeArchiveError (ValueError)          a ZIP that would write outside its folder, or
    │   │                                            whose member names collide or are too long
    │   ├── CorruptArchiveError (ValueError)         a ZIP that is truncated, fails its CRCs, or
    │   │                                            holds a member that cannot be decompressed
    │   ├── RemoteCacheError (OSError)               a shared cache root (cache_dir=URL) cannot be used
    │   └── PreparedStoreError                       a prepared-image store is damaged or gone
    │       ├── PrepareTimeoutError (TimeoutError)   the node's other ranks stopped preparing their share
    │       └── SharedStoreError                     a shared store (prepared_root=) cannot be read
    │           ├── SharedStoreNotFoundError (FileNotFoundError)   no finished store there (no manifest)
    │           └── ShardReadError (OSError)         a shard could not be fetched whole and intact
    └── DataError                                    the metadata and the images of an export
        ├── SchemaError (ValueError)                 metadata lacks a required column or field
        ├── CurationError (ValueError)               a curation rule cannot apply, or emptied the set
        ├── ImageNotFoundError (FileNotFoundError)   a row's image is missing or ambiguous
        ├── ImageDecodeError (ValueError)            an image is corrupt, truncated or a bomb
        │   └── ImageReadError                       its storage kept failing: the attempts or the
        │                                            read deadline ran out
        ├── DatasetMismatchError (ValueError)        a loader state saved on other items than the dataset's
        └── PredictionsError (ValueError)            model predictions that do not fit the dataset

Every class is constructible from one message string and pickles with its attributes: a
DataLoader worker re-raises an exception in the main process as ``type(exc)(message)``, and
multiprocessing pickles it. Context lives in keyword-only attributes that default to ``None``.
"""

from __future__ import annotations

from typing import Any


class VLDatasetsError(Exception):
    """Root of every exception raised by vl_datasets."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # keep the context attributes across pickling
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[VLDatasetsError], message: str, state: dict[str, Any]) -> VLDatasetsError:
    exc = cls(message)
    exc.__dict__.update(state)
    return exc


class ConfigurationError(VLDatasetsError, ValueError):
    """An argument or environment variable has a value the library cannot use."""


# -- the API --------------------------------------------------------------------------------------


class APIError(VLDatasetsError):
    """Talking to the Visual Layer API failed: an error status, no answer, or an unreadable one."""

    def __init__(self, message: str = "", *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url  # the request's URL, query string removed


class APIStatusError(APIError):
    """The API answered with an error status.

    ``detail`` is the server's ``detail``: a string, or the list of ``{"loc", "msg", "type"}``
    entries of a 422.
    """

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int | None = None,
        detail: Any = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, method=method, url=url)
        self.status_code = status_code
        self.detail = detail


class BadRequestError(APIStatusError, ValueError):
    """400 or 422: the request's parameters were refused."""


class RequestTooLargeError(APIStatusError):
    """413: the request's body is larger than the server (or a proxy before it) takes: a selective
    export of too many media ids for one request. ``fetch_export`` then exports them in chunks."""


class AuthenticationError(APIStatusError, PermissionError):
    """401: the token is missing, invalid or expired, or the credentials are wrong."""


class PermissionDeniedError(APIStatusError, PermissionError):
    """403: the credentials are valid but may not touch this dataset."""


class DatasetNotFoundError(APIStatusError, LookupError):
    """404: no dataset with this id (or not visible to these credentials)."""


class ExportTaskNotFoundError(APIStatusError, LookupError):
    """404 on an export task of a dataset that exists: the server does not know (or forgot) the task."""

    def __init__(
        self,
        message: str = "",
        *,
        task_id: str | None = None,
        dataset_id: str | None = None,
        status_code: int | None = None,
        detail: Any = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, detail=detail, method=method, url=url)
        self.task_id = task_id
        self.dataset_id = dataset_id


class DatasetNotReadyError(APIStatusError):
    """409, or a dataset whose status is not READY: it cannot be exported yet."""

    def __init__(
        self,
        message: str = "",
        *,
        dataset_id: str | None = None,
        dataset_status: str | None = None,
        status_code: int | None = None,
        detail: Any = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, detail=detail, method=method, url=url)
        self.dataset_id = dataset_id
        self.dataset_status = dataset_status


class RateLimitError(APIStatusError):
    """429 that persisted through every retry."""


class ServerError(APIStatusError):
    """5xx that persisted through every retry, or one that could not be retried safely."""


class APIConnectionError(APIError, ConnectionError):
    """The API could not be reached, or the connection broke before an answer."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The API did not answer within the client's ``timeout_s``."""


class ResponseValidationError(APIError, ValueError):
    """The API answered 2xx with a body that does not match the contract."""


# -- the export -----------------------------------------------------------------------------------


class ExportError(VLDatasetsError):
    """An export did not produce an intact archive."""


class ExportFailedError(ExportError):
    """The export ended FAILED, REJECTED or CANCELED; ``result_message`` says why."""

    def __init__(
        self,
        message: str = "",
        *,
        task_id: str | None = None,
        dataset_id: str | None = None,
        status: str | None = None,
        result_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.dataset_id = dataset_id
        self.status = status
        self.result_message = result_message


class ExportTimeoutError(ExportError, TimeoutError):
    """The export was still running at the caller's deadline.

    The export keeps running on the server: pass ``task_id`` to ``Client.wait_for_export`` to
    resume waiting instead of starting another.
    """

    def __init__(self, message: str = "", *, task_id: str | None = None, dataset_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.dataset_id = dataset_id


class DownloadError(ExportError, OSError):
    """The export archive could not be downloaded intact."""

    def __init__(self, message: str = "", *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class InsufficientDiskSpaceError(DownloadError):
    """Not enough free space for the archive; nothing was downloaded."""

    def __init__(
        self,
        message: str = "",
        *,
        required_bytes: int | None = None,
        free_bytes: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message, url=url)
        self.required_bytes = required_bytes
        self.free_bytes = free_bytes


# -- the cache and its archives -------------------------------------------------------------------


class CacheError(VLDatasetsError):
    """The cache, or an archive on its way into it, cannot be used."""


class CacheMissError(CacheError, FileNotFoundError):
    """Offline, and no complete cache entry exists for the requested export."""

    def __init__(self, message: str = "", *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class VersionNotFoundError(CacheMissError):
    """The export version asked for (``version=``, as a loader state pins it) is not in the cache:
    pruned, or fetched on another machine."""

    def __init__(self, message: str = "", *, key: str | None = None, version: str | None = None) -> None:
        super().__init__(message, key=key)
        self.version = version


class LockTimeoutError(CacheError, TimeoutError):
    """Another process held the cache entry's lock past the wait limit."""

    def __init__(self, message: str = "", *, lock_path: str | None = None) -> None:
        super().__init__(message)
        self.lock_path = lock_path


class VersionInUseError(CacheError):
    """``cache rm`` of an export whose version a running job reads (``cache.readers``)."""

    def __init__(self, message: str = "", *, versions: list[str] | None = None) -> None:
        super().__init__(message)
        self.versions = versions or []


class ExportNotFoundError(CacheError, FileNotFoundError):
    """A local export path (ZIP or folder) that does not exist, or a folder that holds no export
    (no metadata file at its root)."""

    def __init__(self, message: str = "", *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnsafeArchiveError(CacheError, ValueError):
    """An archive member would escape its folder (absolute path, ``..``, link), collides with
    another (a file where a folder is), has a name too long for the file system or one the cache
    keeps for its own files, or is a ZIP bomb."""

    def __init__(self, message: str = "", *, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class CorruptArchiveError(CacheError, ValueError):
    """An archive is truncated, not a ZIP, or fails its CRC checks; ``member`` names the member
    whose data cannot be read, when one is at fault."""

    def __init__(self, message: str = "", *, path: str | None = None, member: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.member = member


class RemoteCacheError(CacheError, OSError):
    """A shared cache root (``cache_dir`` an fsspec URL) could not be listed, read or written;
    ``url`` is the root without its credentials. The storage library's error is not kept: its
    text may hold the root's credentials (a signed URL, a bucket named with ``user:password@``)."""

    def __init__(self, message: str = "", *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class PreparedStoreError(CacheError):
    """A prepared-image store (``prepare=``) is damaged or was removed while in use; ``path`` is the store."""

    def __init__(self, message: str = "", *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PrepareTimeoutError(PreparedStoreError, TimeoutError):
    """``prepare()`` waited for the images other ranks on the node prepare, and they stopped coming."""


class SharedStoreError(PreparedStoreError):
    """A shared prepared store (``prepared_root=``) cannot be read, or is not the one asked for;
    ``url`` is where it is, without credentials; ``damaged``: its files are not a store's (building
    it again repairs it), rather than unreachable or another store."""

    def __init__(self, message: str = "", *, url: str | None = None, damaged: bool = False) -> None:
        super().__init__(message, path=url)
        self.url = url
        self.damaged = damaged


class SharedStoreNotFoundError(SharedStoreError, FileNotFoundError):
    """No finished shared store at ``url``: its manifest, written last, is not there."""


class ShardReadError(SharedStoreError, OSError):
    """A shard of a shared store could not be fetched whole: its storage kept failing (``attempts``
    made), it is missing, or its bytes differ from what the store's files say."""

    def __init__(self, message: str = "", *, url: str | None = None, attempts: int | None = None) -> None:
        super().__init__(message, url=url)
        self.attempts = attempts


# -- the data -------------------------------------------------------------------------------------


class DataError(VLDatasetsError):
    """The metadata or the images of an export cannot be used as asked."""


class SchemaError(DataError, ValueError):
    """The export's metadata lacks a required column or field, has one of the wrong type, or a value
    out of its range; ``media_id`` names the item at fault, when one is."""

    def __init__(self, message: str = "", *, field: str | None = None, media_id: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.media_id = media_id


class CurationError(DataError, ValueError):
    """A curation rule cannot be applied, or the rules left no item."""


class ImageNotFoundError(DataError, FileNotFoundError):
    """A row's image is missing from the export, or its file name matches several images."""

    def __init__(self, message: str = "", *, media_id: str | None = None) -> None:
        super().__init__(message)
        self.media_id = media_id


class ImageDecodeError(DataError, ValueError):
    """An image is corrupt, truncated, in an unreadable format, or a decompression bomb."""

    def __init__(self, message: str = "", *, media_id: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.media_id = media_id
        self.path = path


class ImageReadError(ImageDecodeError):
    """An image's storage kept failing (503s, resets, timeouts) until the read's attempts or its
    deadline ran out; the message says which, and ``attempts`` how many were made."""

    def __init__(
        self, message: str = "", *, media_id: str | None = None, path: str | None = None, attempts: int | None = None
    ) -> None:
        super().__init__(message, media_id=media_id, path=path)
        self.attempts = attempts


class DatasetMismatchError(DataError, ValueError):
    """A loader state was saved on other items than this dataset's: another export version, or other
    curation rules. ``version`` and ``fingerprint`` are the state's."""

    def __init__(self, message: str = "", *, version: str | None = None, fingerprint: str | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.fingerprint = fingerprint


class PredictionsError(DataError, ValueError):
    """Predictions to evaluate are malformed or do not fit the dataset: a missing column, an
    unknown media id or class, a media id twice. ``column``, ``row`` (0-based, in the file or
    the arrays) and ``media_id`` name what is at fault, where known."""

    def __init__(
        self, message: str = "", *, column: str | None = None, row: int | None = None, media_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.column = column
        self.row = row
        self.media_id = media_id


__all__ = sorted(
    name for name, value in globals().items() if isinstance(value, type) and issubclass(value, VLDatasetsError)
)
