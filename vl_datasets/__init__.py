"""vl_datasets: Visual Layer exports, cached and curated, as PyTorch datasets.

The package has four sides, and imports run one way, from the network edge to the tensors::

    api/       auth, transport, client, download               a request becomes a task and a ZIP
    cache/     layout, store, archive, remote, opened, scan    a ZIP becomes a published cache entry;
               pruning                                          what is on disk, counted and pruned
    metadata/  read, normalize, index, curation, ...            an entry becomes a curated Arrow table
    loading/   dataset, sources, reads, loader, sampler, ...    a table becomes tensors
    exports.py, chunks.py   fetch_export: the modules that join the API side to the cache

The metadata and loading sides never import the API side, so a local export opens with no
network library loaded. This facade is lazy: ``import vl_datasets`` loads only the error tree,
and each name below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CacheError,
    CacheMissError,
    ConfigurationError,
    CorruptArchiveError,
    CurationError,
    DataError,
    DatasetMismatchError,
    DatasetNotFoundError,
    DatasetNotReadyError,
    DownloadError,
    ExportError,
    ExportFailedError,
    ExportNotFoundError,
    ExportTaskNotFoundError,
    ExportTimeoutError,
    ImageDecodeError,
    ImageNotFoundError,
    ImageReadError,
    InsufficientDiskSpaceError,
    LockTimeoutError,
    PermissionDeniedError,
    PredictionsError,
    PreparedStoreError,
    PrepareTimeoutError,
    RateLimitError,
    RemoteCacheError,
    RequestTooLargeError,
    ResponseValidationError,
    SchemaError,
    ServerError,
    ShardReadError,
    SharedStoreError,
    SharedStoreNotFoundError,
    UnsafeArchiveError,
    VersionInUseError,
    VersionNotFoundError,
    VLDatasetsError,
)

if TYPE_CHECKING:
    from .api.client import Client
    from .backoff import RetryPolicy
    from .cache.scan import CacheInfo, PrunePolicy, PruneResult, PruneStrategy, prune, scan
    from .cache.store import ExportKey, LocalExport
    from .exports import fetch_export
    from .loading.dataset import VisualLayerDataset
    from .loading.image_reader import ImageOptions
    from .metadata.curated import CuratedItems, TargetOptions
    from .metadata.curation import CurationRules, CurationSummary
    from .metadata.media_ids import MediaIds
    from .metadata.splits import leakage_safe_split
    from .records import DatasetInfo, ExportTask

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "Client": ".api.client",
    "DatasetInfo": ".records",
    "ExportTask": ".records",
    "ExportKey": ".cache.store",
    "LocalExport": ".cache.store",
    "scan": ".cache.scan",
    "prune": ".cache.scan",
    "CacheInfo": ".cache.scan",
    "PrunePolicy": ".cache.scan",
    "PruneResult": ".cache.scan",
    "PruneStrategy": ".cache.scan",
    "fetch_export": ".exports",
    "VisualLayerDataset": ".loading.dataset",
    "CurationRules": ".metadata.curation",
    "CurationSummary": ".metadata.curation",
    "CuratedItems": ".metadata.curated",
    "TargetOptions": ".metadata.curated",
    "ImageOptions": ".loading.image_reader",
    "RetryPolicy": ".backoff",
    "leakage_safe_split": ".metadata.splits",
    "MediaIds": ".metadata.media_ids",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CacheError",
    "CacheInfo",
    "CacheMissError",
    "Client",
    "ConfigurationError",
    "CorruptArchiveError",
    "CuratedItems",
    "CurationError",
    "CurationRules",
    "CurationSummary",
    "DataError",
    "DatasetInfo",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "DatasetNotReadyError",
    "DownloadError",
    "ExportError",
    "ExportFailedError",
    "ExportKey",
    "ExportNotFoundError",
    "ExportTask",
    "ExportTaskNotFoundError",
    "ExportTimeoutError",
    "ImageDecodeError",
    "ImageNotFoundError",
    "ImageOptions",
    "ImageReadError",
    "InsufficientDiskSpaceError",
    "LocalExport",
    "LockTimeoutError",
    "MediaIds",
    "PermissionDeniedError",
    "PredictionsError",
    "PrepareTimeoutError",
    "PreparedStoreError",
    "PrunePolicy",
    "PruneResult",
    "PruneStrategy",
    "RateLimitError",
    "RemoteCacheError",
    "RequestTooLargeError",
    "ResponseValidationError",
    "RetryPolicy",
    "SchemaError",
    "ServerError",
    "ShardReadError",
    "SharedStoreError",
    "SharedStoreNotFoundError",
    "TargetOptions",
    "UnsafeArchiveError",
    "VLDatasetsError",
    "VersionInUseError",
    "VersionNotFoundError",
    "VisualLayerDataset",
    "__version__",
    "errors",
    "fetch_export",
    "leakage_safe_split",
    "prune",
    "scan",
]
