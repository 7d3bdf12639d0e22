"""Every exception the library raises.

    VLDatasetsError
    ├── ConfigurationError (ValueError)          bad argument or environment value
    ├── APIError                                 the API answered with an error status
    │   ├── BadRequestError (ValueError)         400, 422
    │   ├── AuthenticationError (PermissionError) 401
    │   ├── PermissionDeniedError (PermissionError) 403
    │   ├── DatasetNotFoundError (LookupError)   404
    │   ├── DatasetNotReadyError                 409, or a dataset whose status is not READY
    │   ├── RateLimitError                       429 after the retries ran out
    │   └── ServerError                          5xx after the retries ran out
    ├── APIConnectionError (ConnectionError)     no answer at all
    │   └── APITimeoutError (TimeoutError)
    ├── ResponseValidationError (ValueError)     an answer we cannot read
    ├── ExportFailedError                        the export ended FAILED or REJECTED
    ├── ExportTimeoutError (TimeoutError)        the export outlived the caller's deadline
    ├── DownloadError (OSError)                  the archive could not be fetched intact
    │   └── InsufficientDiskSpaceError
    ├── UnsafeArchiveError (ValueError)          a ZIP that would write outside its folder
    ├── CorruptArchiveError (ValueError)         a ZIP that is truncated or fails its CRCs
    ├── CacheMissError (FileNotFoundError)       offline and nothing cached for the key
    ├── ExportNotFoundError (FileNotFoundError)  a local export path that does not exist
    ├── LockTimeoutError (TimeoutError)          another process held the cache lock too long
    ├── SchemaError (ValueError)                 metadata lacks a required column or field
    ├── ImageNotFoundError (FileNotFoundError)   a row's image is missing or ambiguous
    ├── ImageDecodeError (ValueError)            an image is corrupt, truncated or a bomb
    └── CurationError (ValueError)               a curation rule cannot apply, or emptied the set

Every class is constructible from one message string and pickles: a DataLoader worker re-raises
an exception in the main process as ``type(exc)(message)``, and multiprocessing pickles it.
Extra context lives in keyword-only attributes that default to ``None``.
"""

from __future__ import annotations

from typing import Any


class VLDatasetsError(Exception):
    """Root of every exception raised by vl_datasets."""

    def __init__(self, message: str = "", **context: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in context.items():
            setattr(self, name, value)

    def __reduce__(self):  # keep the context attributes across pickling
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type, message: str, state: dict) -> VLDatasetsError:
    exc = cls(message)
    exc.__dict__.update(state)
    return exc


class ConfigurationError(VLDatasetsError, ValueError):
    """An argument or environment variable has a value the library cannot use."""


class APIError(VLDatasetsError):
    """The Visual Layer API answered with an error status.

    Attributes: ``status_code``, ``detail`` (the server's ``detail``: a string, or the list of
    ``{"loc", "msg", "type"}`` entries of a 422), ``method``, ``url`` (query string removed).
    """

    status_code: int | None = None
    detail: Any = None
    method: str | None = None
    url: str | None = None


class BadRequestError(APIError, ValueError):
    """400 or 422: the request's parameters were refused."""


class AuthenticationError(APIError, PermissionError):
    """401: the token is missing, invalid or expired, or the credentials are wrong."""


class PermissionDeniedError(APIError, PermissionError):
    """403: the credentials are valid but may not touch this dataset."""


class DatasetNotFoundError(APIError, LookupError):
    """404: no dataset with this id (or not visible to these credentials)."""

    dataset_id: str | None = None


class DatasetNotReadyError(APIError):
    """409, or a dataset whose status is not READY: it cannot be exported yet."""

    dataset_id: str | None = None
    dataset_status: str | None = None


class RateLimitError(APIError):
    """429 that persisted through every retry."""


class ServerError(APIError):
    """5xx that persisted through every retry, or one that could not be retried safely."""


class APIConnectionError(VLDatasetsError, ConnectionError):
    """The API could not be reached, or the connection broke before an answer."""

    url: str | None = None


class APITimeoutError(APIConnectionError, TimeoutError):
    """The API did not answer within the client's ``timeout_s``."""


class ResponseValidationError(VLDatasetsError, ValueError):
    """The API answered 2xx with a body that does not match the contract."""

    url: str | None = None


class ExportFailedError(VLDatasetsError):
    """The export ended FAILED, REJECTED or CANCELED; ``result_message`` says why."""

    task_id: str | None = None
    dataset_id: str | None = None
    status: str | None = None
    result_message: str | None = None


class ExportTimeoutError(VLDatasetsError, TimeoutError):
    """The export was still running at the caller's deadline.

    The export keeps running on the server: pass ``task_id`` to ``Client.wait_for_export`` to
    resume waiting instead of starting another.
    """

    task_id: str | None = None
    dataset_id: str | None = None


class DownloadError(VLDatasetsError, OSError):
    """The export archive could not be downloaded intact."""

    url: str | None = None


class InsufficientDiskSpaceError(DownloadError):
    """Not enough free space for the archive; nothing was downloaded."""

    required_bytes: int | None = None
    free_bytes: int | None = None


class UnsafeArchiveError(VLDatasetsError, ValueError):
    """An archive member would escape its folder (absolute path, ``..``, link) or is a ZIP bomb."""

    member: str | None = None


class CorruptArchiveError(VLDatasetsError, ValueError):
    """An archive is truncated, not a ZIP, or fails its CRC checks."""

    path: str | None = None


class CacheMissError(VLDatasetsError, FileNotFoundError):
    """Offline, and no complete cache entry exists for the requested export."""

    key: str | None = None


class ExportNotFoundError(VLDatasetsError, FileNotFoundError):
    """A local export path (ZIP or folder) that does not exist."""

    path: str | None = None


class LockTimeoutError(VLDatasetsError, TimeoutError):
    """Another process held the cache entry's lock past the wait limit."""

    lock_path: str | None = None


class SchemaError(VLDatasetsError, ValueError):
    """The export's metadata lacks a required column or field, or has one of the wrong type."""

    field: str | None = None


class ImageNotFoundError(VLDatasetsError, FileNotFoundError):
    """A row's image is missing from the export, or its file name matches several images."""

    media_id: str | None = None


class ImageDecodeError(VLDatasetsError, ValueError):
    """An image is corrupt, truncated, in an unreadable format, or a decompression bomb."""

    media_id: str | None = None
    path: str | None = None


class CurationError(VLDatasetsError, ValueError):
    """A curation rule cannot be applied, or the rules left no item."""
