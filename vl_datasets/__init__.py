"""vl_datasets: Visual Layer exports, cached and curated, as PyTorch datasets."""

from ._version import __version__
from .cache import ExportKey, LocalExport
from .client import Client
from .curation import CurationSummary
from .errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CacheMissError,
    ConfigurationError,
    CorruptArchiveError,
    CurationError,
    DatasetNotFoundError,
    DatasetNotReadyError,
    DownloadError,
    ExportFailedError,
    ExportNotFoundError,
    ExportTimeoutError,
    ImageDecodeError,
    ImageNotFoundError,
    InsufficientDiskSpaceError,
    LockTimeoutError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    SchemaError,
    ServerError,
    UnsafeArchiveError,
    VLDatasetsError,
)
from .fetch import fetch_export
from .records import DatasetInfo, ExportTask
from .splits import leakage_safe_split

# The dataset side imports torch; load it on first use so the client and CLI start fast.
_LAZY = {"VisualLayerDataset": "dataset"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "VisualLayerDataset",
    "CurationSummary",
    "ExportNotFoundError",
    "Client",
    "DatasetInfo",
    "ExportTask",
    "ExportKey",
    "LocalExport",
    "fetch_export",
    "leakage_safe_split",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CacheMissError",
    "ConfigurationError",
    "CorruptArchiveError",
    "CurationError",
    "DatasetNotFoundError",
    "DatasetNotReadyError",
    "DownloadError",
    "ExportFailedError",
    "ExportTimeoutError",
    "ImageDecodeError",
    "ImageNotFoundError",
    "InsufficientDiskSpaceError",
    "LockTimeoutError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseValidationError",
    "SchemaError",
    "ServerError",
    "UnsafeArchiveError",
    "VLDatasetsError",
]
