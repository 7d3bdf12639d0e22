"""Starting an export task, or resuming the one a killed run recorded: one path for whole exports
and for each chunk of a chunked export (see exports.py and chunks.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import errors
from .cache.store import ExportKey, TaskRecord
from .records import ExportTask

if TYPE_CHECKING:
    from .api.client import Client

logger = logging.getLogger("vl_datasets")

# What a server answers for a task it no longer has, besides 404: gone, or no longer addressable.
FORGOTTEN_STATUSES = (410, 422)


def start_or_resume(
    client: Client, record: TaskRecord, key: ExportKey, *, media_ids: Sequence[str] | None = None
) -> ExportTask:
    """The task ``record`` names, if the server still has it and it has not failed; else a new
    export of ``key`` (of exactly ``media_ids``, for a chunk), recorded before it is returned."""
    resumed = _resume(client, record, key.dataset_id)
    if resumed is not None:
        return resumed
    if media_ids is not None or key.media_ids is not None or key.cluster_ids is not None:
        task = client.start_selective_export(
            key.dataset_id,
            media_ids=media_ids if media_ids is not None else key.media_ids,
            cluster_ids=None if media_ids is not None else key.cluster_ids,
            export_format=key.export_format,
            include_images=key.include_images,
        )
    else:
        task = client.start_export(key.dataset_id, export_format=key.export_format, include_images=key.include_images)
    record.write(task.id)
    return task


def _resume(client: Client, record: TaskRecord, dataset_id: str) -> ExportTask | None:
    """The recorded task, unless there is none, it failed, or the server forgot it."""
    task_id = record.read()
    if task_id is None:
        return None
    try:
        task = client.get_export_status(dataset_id, task_id)
    except errors.ExportTaskNotFoundError:
        logger.info("Export %s of dataset %r is gone from the server; starting another", task_id, dataset_id)
        return None
    except errors.APIStatusError as exc:
        if exc.status_code not in FORGOTTEN_STATUSES:
            raise
        logger.info("Export %s of dataset %r answers HTTP %d; starting another", task_id, dataset_id, exc.status_code)
        return None
    if task.failed:
        return None
    logger.info("Resuming export %s of dataset %r", task_id, dataset_id)
    return task
