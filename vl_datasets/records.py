"""Typed records of what the API returns: a dataset and an export task.

Parsing is lenient where the contract lists variants (status spellings, progress scale, a start
answer holding only ``{"id": ...}``) and strict where a missing field would mislead the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import ConfigurationError, ResponseValidationError
from .redaction import redact_url, redact_value

EXPORT_FORMATS = ("parquet", "json")


def check_export_format(export_format: str) -> None:
    """ConfigurationError unless ``export_format`` is one the API exports."""
    if export_format not in EXPORT_FORMATS:
        raise ConfigurationError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}.")


TERMINAL_EXPORT_STATUSES = frozenset({"COMPLETED", "FAILED", "REJECTED", "CANCELED"})
KNOWN_EXPORT_STATUSES = TERMINAL_EXPORT_STATUSES | {"INIT", "IN_PROGRESS"}
DATASET_STATUSES = frozenset({"DRAFT", "INDEXING", "READ_ONLY", "PARTIAL_INDEX", "READY", "ERROR"})
_SEPARATORS = re.compile(r"[\s_\-]+")


def _status_key(text: str) -> str:
    """The contract's comparison (§3): case, spaces and underscores ignored."""
    return _SEPARATORS.sub("", text).upper()


_DOCUMENTED_STATUSES = {_status_key(s): s for s in DATASET_STATUSES | KNOWN_EXPORT_STATUSES} | {"CANCELLED": "CANCELED"}


def normalize_status(value: Any) -> str | None:
    """A status spelt as the contract documents it, whatever its case and separators: ``"Read Only"``,
    ``"read_only"``, ``"ReadOnly"`` and ``"READONLY"`` all become ``"READ_ONLY"``. A status the contract
    does not list keeps its words, in capitals joined by underscores, so messages stay readable."""
    if value is None:
        return None
    text = str(value).strip()
    return _DOCUMENTED_STATUSES.get(_status_key(text)) or _SEPARATORS.sub("_", text).upper()


def _server_text(value: Any, secrets: tuple[str, ...]) -> str | None:
    """The server's free text (why an export failed, a dataset's fatal error), redacted once, here:
    a storage failure may quote a presigned URL, a proxy the Authorization it got, and the text
    reaches error messages, reprs, logs, cache manifests and the CLI. ``secrets``: the tokens the
    client sent, blanked even bare. Words stay as they are ("exceeds threshold of 5000", which the
    chunking reads)."""
    return None if value is None else redact_value(str(value), secrets)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _require_object(payload: Any, what: str, url: str | None) -> dict:
    if not isinstance(payload, dict):
        raise ResponseValidationError(f"Expected a JSON object for {what}, got {type(payload).__name__}.", url=url)
    return payload


def _require_id(payload: dict, what: str, url: str | None) -> str:
    value = payload.get("id")
    if not isinstance(value, (str, int)) or value == "":
        raise ResponseValidationError(f"The {what} answer has no 'id' field.", url=url)
    return str(value)


def _as_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's status as ``GET /api/v1/dataset/{id}`` reports it."""

    id: str
    status: str | None
    display_name: str | None = None
    description: str | None = None
    created_at: datetime | None = None
    progress: float | None = None
    n_images: int | None = None
    n_videos: int | None = None
    n_objects: int | None = None
    fatal_error_msg: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def ready(self) -> bool:
        """Only a READY dataset can be exported."""
        return self.status == "READY"

    @classmethod
    def from_json(cls, payload: Any, *, url: str | None = None, secrets: tuple[str, ...] = ()) -> DatasetInfo:
        payload = _require_object(payload, "a dataset", url)
        # status_new is the current field; status is the legacy one.
        status = normalize_status(payload.get("status_new") or payload.get("status"))
        progress = payload.get("progress")
        return cls(
            id=_require_id(payload, "dataset", url),
            status=status,
            display_name=payload.get("display_name"),
            description=payload.get("description"),
            created_at=_parse_time(payload.get("created_at")),
            progress=float(progress) if isinstance(progress, (int, float)) else None,
            n_images=_as_int(payload.get("n_images")),
            n_videos=_as_int(payload.get("n_videos")),
            n_objects=_as_int(payload.get("n_objects")),
            fatal_error_msg=_server_text(payload.get("fatal_error_msg"), secrets),
            raw=payload,
        )


@dataclass(frozen=True)
class ExportTask:
    """An export job. ``progress`` is the server's raw figure; its scale (0-1 or 0-100) varies."""

    id: str
    dataset_id: str
    status: str
    progress: float | None = None
    download_uri: str | None = None
    entities_count: int | None = None
    result_message: str | None = None
    created_at: datetime | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        # A presigned download URI is a bearer secret until it expires: show it without its signature.
        uri = None if self.download_uri is None else redact_url(self.download_uri)
        return (
            f"ExportTask(id={self.id!r}, dataset_id={self.dataset_id!r}, status={self.status!r}, "
            f"progress={self.progress!r}, download_uri={uri!r}, entities_count={self.entities_count!r})"
        )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_EXPORT_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "COMPLETED"

    @property
    def failed(self) -> bool:
        """Ended without an archive (FAILED, REJECTED, CANCELED): nothing to resume."""
        return self.is_terminal and not self.succeeded

    @classmethod
    def from_json(
        cls, payload: Any, *, dataset_id: str, url: str | None = None, secrets: tuple[str, ...] = ()
    ) -> ExportTask:
        payload = _require_object(payload, "an export task", url)
        # A start answer may hold only {"id": ...}: that is a task not yet started.
        status = normalize_status(payload.get("status")) or "INIT"
        progress = payload.get("progress")
        uri = payload.get("download_uri")
        if uri is not None and not isinstance(uri, str):
            raise ResponseValidationError("The export task's 'download_uri' is not a string.", url=url)
        return cls(
            id=_require_id(payload, "export task", url),
            dataset_id=str(payload.get("dataset_id") or dataset_id),
            status=status,
            progress=float(progress) if isinstance(progress, (int, float)) else None,
            download_uri=uri or None,
            entities_count=_as_int(payload.get("entities_count")),
            result_message=_server_text(payload.get("result_message"), secrets),
            created_at=_parse_time(payload.get("created_at")),
            raw=payload,
        )
