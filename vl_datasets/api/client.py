"""``Client``: every export call of the Visual Layer API, returning typed records."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tqdm.auto import tqdm

from .. import errors
from ..backoff import RETRYABLE_STATUSES, Attempts, RetryPolicy, stoppable
from ..config import check_seconds, env_number, progress_enabled, resolve_client_settings
from ..records import KNOWN_EXPORT_STATUSES, DatasetInfo, ExportTask, check_export_format
from . import download
from .auth import TokenProvider
from .transport import Transport

logger = logging.getLogger("vl_datasets")

DEFAULT_EXPORT_TIMEOUT_S = 3 * 3600.0
# The official examples poll every 5 s and the web app every 2 s: start fast, settle at 10 s.
POLL_START_S, POLL_GROWTH, POLL_MAX_S = 2.0, 1.5, 10.0
# "export 1a2b3c4d:  40%|████      | 00:12 waited". The bar counts the server's percent, so tqdm's
# default n/total and rate ("37.5/100 [2383.37%/s]") would read as nonsense.
EXPORT_BAR_FORMAT = "{l_bar}{bar}| {elapsed} waited"
_UNFINISHED_MAX_PERCENT = 99.0  # tqdm would round 99.5 up to "100%"


class Client:
    """A connection to a Visual Layer API (cloud, on-prem, or the local service).

    Arguments fall back to ``VL_API_URL`` (default ``https://app.visual-layer.com``),
    ``VL_API_KEY``, ``VL_API_SECRET``, ``VL_API_TOKEN``, ``VL_API_TIMEOUT_S`` (30) and
    ``VL_API_MAX_RETRIES`` (5), read when the client is built. With no credentials the client
    runs in on-prem mode and sends no Authorization header.

    ``sleep``, ``clock`` and ``wall_clock`` exist so tests never wait; leave them alone otherwise.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        api_secret: str | None = None,
        token: str | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        progress: bool | None = None,
        env: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = resolve_client_settings(base_url, api_key=api_key, api_secret=api_secret, token=token, env=env)
        timeout_s = env_number("VL_API_TIMEOUT_S", timeout_s, 30.0, env)
        max_retries = int(env_number("VL_API_MAX_RETRIES", max_retries, 5, env))
        if not 0 < timeout_s < math.inf or max_retries < 0:
            raise errors.ConfigurationError("timeout_s must be positive and finite, and max_retries at least 0.")
        tokens = None
        if not self.settings.on_prem:
            # A pre-made token cannot be re-signed, so it never comes with the secret.
            secret = None if self.settings.token else self.settings.api_secret
            tokens = TokenProvider(
                api_key=self.settings.api_key, api_secret=secret, token=self.settings.token, wall_clock=wall_clock
            )
        # Connection errors, 408, 429 and 5xx: 1 + max_retries attempts, waits from 0.5 s doubling to
        # 30 s, a Retry-After honoured up to 120 s.
        retry = RetryPolicy(max_attempts=max_retries + 1, sleep=sleep, clock=clock)
        self._transport = Transport(tokens=tokens, timeout_s=timeout_s, retry=retry)
        self.progress = progress_enabled(progress, env)
        self._sleep = sleep
        self._clock = clock

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def __repr__(self) -> str:
        if self.settings.on_prem:
            auth = "none"
        elif self.settings.token:
            auth = "token"
        else:
            auth = f"key {self.settings.api_key!r}"
        return f"Client(base_url={self.base_url!r}, auth={auth})"

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- endpoints ---------------------------------------------------------------------------

    def get_dataset(self, dataset_id: str, *, attempts: Attempts | None = None) -> DatasetInfo:
        """The dataset's status and counts (``GET /api/v1/dataset/{id}``). ``attempts``: what the
        request's retries spend from (by default, the client's policy afresh)."""
        url = self._api_url(dataset_id)
        payload = self._get_json(url, what=f"Dataset {dataset_id!r}", attempts=attempts)
        return DatasetInfo.from_json(payload, url=url, secrets=self._tokens_sent())

    def start_export(
        self,
        dataset_id: str,
        *,
        export_format: str = "parquet",
        include_images: bool = True,
        file_name: str = "export.zip",
        entity_type: str | None = None,
        vql: str | list[dict[str, Any]] | None = None,
    ) -> ExportTask:
        """Start exporting the whole dataset; returns the task to pass to ``wait_for_export``.

        ``entity_type`` (``"IMAGES"`` or ``"OBJECTS"``) and ``vql`` (filters: a list, sent as JSON,
        or its JSON text) are passed through as the platform takes them (contract §2); the library
        reads the export whatever they selected."""
        params = {"file_name": file_name, **_export_params(export_format, include_images)}
        if entity_type is not None:
            params["entity_type"] = _text_option("entity_type", entity_type)
        if vql is not None:
            params["vql"] = vql if isinstance(vql, str) else json.dumps(vql, separators=(",", ":"))
        url = self._api_url(dataset_id, "export_context_async")
        payload = self._get_json(url, what=f"Export of dataset {dataset_id!r}", params=params, idempotent=False)
        return ExportTask.from_json(payload, dataset_id=dataset_id, url=url, secrets=self._tokens_sent())

    def start_selective_export(
        self,
        dataset_id: str,
        *,
        media_ids: Iterable[str] | None = None,
        cluster_ids: Iterable[str] | None = None,
        export_format: str = "parquet",
        include_images: bool = True,
    ) -> ExportTask:
        """Start exporting only the given media items, or the items of the given clusters."""
        body = _selection_body(media_ids, cluster_ids)
        url = self._api_url(dataset_id, "export_entities_async")
        payload = self._get_json(
            url,
            what=f"Selective export of dataset {dataset_id!r}",
            method="POST",
            params=_export_params(export_format, include_images),
            json=body,
            idempotent=False,
        )
        return ExportTask.from_json(payload, dataset_id=dataset_id, url=url, secrets=self._tokens_sent())

    def get_export_status(self, dataset_id: str, task_id: str, *, attempts: Attempts | None = None) -> ExportTask:
        """The export task as it stands now.

        A 404 raises ``ExportTaskNotFoundError`` when the dataset exists (the server does not know
        the task) and ``DatasetNotFoundError`` when it does not: the dataset is asked to tell them apart.
        ``attempts``: what the request's retries spend from (by default, the client's policy afresh).
        """
        url = self._api_url(dataset_id, "export_status")
        what = f"Export task {task_id!r} of dataset {dataset_id!r}"
        try:
            payload = self._get_json(url, what=what, params={"export_task_id": task_id}, attempts=attempts)
        except errors.DatasetNotFoundError as exc:
            # Raises DatasetNotFoundError if the dataset is what is missing; from the same attempts, so
            # that a bounded wait's poll stays inside its deadline.
            self.get_dataset(dataset_id, attempts=attempts)
            raise errors.ExportTaskNotFoundError(
                f"{what}: the server has no such export task (HTTP 404).",
                task_id=task_id,
                dataset_id=dataset_id,
                status_code=exc.status_code,
                detail=exc.detail,
                method=exc.method,
                url=exc.url,
            ) from None
        return ExportTask.from_json(payload, dataset_id=dataset_id, url=url, secrets=self._tokens_sent())

    # -- workflow ----------------------------------------------------------------------------

    def wait_for_export(
        self,
        dataset_id: str,
        task_id: str,
        *,
        timeout_s: float | None = DEFAULT_EXPORT_TIMEOUT_S,
        on_progress: Callable[[ExportTask], None] | None = None,
        progress: bool | None = None,
        stop: threading.Event | None = None,
    ) -> ExportTask:
        """Poll until the export completes; return the COMPLETED task.

        Raises ``ExportFailedError`` (FAILED, REJECTED, CANCELED) with the server's
        ``result_message``, and ``ExportTimeoutError`` (carrying ``task_id``, so waiting can resume)
        when ``timeout_s`` passes first. ``timeout_s=None`` waits as long as it takes. ``progress``
        overrides the client's setting for this call's bar. ``stop``, set by another thread, ends
        the wait as a timeout would, at once or when the poll under way is answered.
        """
        check_seconds("timeout_s", timeout_s)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        pause = self._sleep  # between polls, and between the retries of one
        if stop is not None:
            pause = stoppable(pause, stop, lambda: _export_timeout(dataset_id, task_id, "was waited for until stopped"))
        interval = POLL_START_S
        scale = _ProgressScale()
        warned: set[str] = set()
        with tqdm(
            total=100,
            desc=f"export {task_id[:8]}",
            bar_format=EXPORT_BAR_FORMAT,
            disable=not _shown(progress, self.progress),
            leave=False,
        ) as bar:
            while True:
                task = self._poll(dataset_id, task_id, deadline, timeout_s, pause)
                bar.n = scale.percent(task)
                bar.refresh()
                if on_progress is not None:
                    on_progress(task)
                if task.is_terminal:
                    return _completed_or_raise(task)
                if task.status not in KNOWN_EXPORT_STATUSES and task.status not in warned:
                    warned.add(task.status)
                    logger.warning("Export %s has unknown status %r; still waiting", task_id, task.status)
                wait_s = interval
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        raise _export_timeout(dataset_id, task_id, f"is still {task.status} after {timeout_s:g}s")
                    wait_s = min(interval, left)  # the last poll at the deadline, not an interval before it
                pause(wait_s)
                interval = min(interval * POLL_GROWTH, POLL_MAX_S)

    def _poll(
        self,
        dataset_id: str,
        task_id: str,
        deadline: float | None,
        timeout_s: float | None,
        pause: Callable[[float], None],
    ) -> ExportTask:
        """One status poll of ``wait_for_export``, its retries spending only what is left before
        ``deadline`` (a server answering 503 with a long Retry-After, or not at all, would hold
        the wait past it): the wait's ``ExportTimeoutError`` when that runs out. Past the deadline
        already (a ``timeout_s`` of 0), one attempt; with none, or an infinite one, the client's
        policy. Its retries wait by ``pause``, which a stopped wait ends."""
        left = None if deadline is None else deadline - self._clock()
        policy = self._transport.retry.replace(sleep=pause)
        what = f"Export task {task_id!r}"
        if left is None or not math.isfinite(left):
            return self.get_export_status(dataset_id, task_id, attempts=policy.start(what))
        # Within the wait, a Retry-After is waited out however long, up to the time left: an export
        # runs for hours, and a poll given up on would end the wait sooner than its deadline.
        if left <= 0:
            attempts = policy.replace(max_attempts=1).start(what)
        else:
            waits_out = max(policy.retry_after_max_s, left)
            attempts = policy.replace(deadline_s=left, retry_after_max_s=waits_out).start(what)
        try:
            return self.get_export_status(dataset_id, task_id, attempts=attempts)
        except errors.APIError as exc:
            if not (_retried(exc) and (attempts.deadline_hit or attempts.remaining_s() == 0.0)):
                raise  # given up for another reason than the time left
            state = f"has no status before its {timeout_s:g} s timeout ({exc})"
            raise _export_timeout(dataset_id, task_id, state) from None

    def download_export(
        self,
        task: ExportTask,
        dest: str | os.PathLike,
        *,
        lock_timeout_s: float | None = None,
        progress: bool | None = None,
        stop: threading.Event | None = None,
    ) -> Path:
        """Download a completed export's ZIP to ``dest`` (resumable; see ``vl_datasets.download``).

        ``stop``, set by another thread, ends the download with ``DownloadError`` after the block
        of bytes (or the request) under way, its bytes kept for the next download to resume from."""

        def refresh(stale: ExportTask) -> ExportTask:
            return _completed_or_raise(self.get_export_status(stale.dataset_id, stale.id))

        return download.download_export(
            self._transport,
            task,
            dest,
            base_url=self.base_url,
            refresh_task=refresh,
            progress=_shown(progress, self.progress),
            lock_timeout_s=lock_timeout_s,
            stop=stop,
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _api_url(self, dataset_id: str, action: str | None = None) -> str:
        if not isinstance(dataset_id, str) or not dataset_id.strip():
            raise errors.ConfigurationError(f"dataset_id must be a non-empty string, got {dataset_id!r}.")
        url = f"{self.base_url}/api/v1/dataset/{quote(dataset_id, safe='')}"
        return f"{url}/{action}" if action else url

    def _tokens_sent(self) -> tuple[str, ...]:
        """The tokens this client sent: an answer's free text may echo one bare, where no pattern finds it."""
        tokens = self._transport.tokens
        return tokens.handed_out() if tokens is not None else ()

    def _get_json(self, url: str, *, what: str, method: str = "GET", idempotent: bool = True, **kwargs: Any) -> Any:
        response = self._transport.request(method, url, what=what, idempotent=idempotent, **kwargs)
        try:
            return response.json()
        except ValueError:
            pass  # raised below, outside this block: the decoder's error holds the whole body (a
            # page that echoes the token), and as the new error's __context__ it would travel with it
        raise errors.ResponseValidationError(
            f"{what}: the answer is not JSON (HTTP {response.status_code}, "
            f"{response.headers.get('Content-Type', 'no content type')}).",
            url=url,
        )


def _retried(exc: errors.APIError) -> bool:
    """Whether the transport retries what raised ``exc`` (a connection error, 408, 429, 5xx): the
    errors a poll that ran out of time ends with, to be told as the wait's timeout."""
    if isinstance(exc, errors.APIConnectionError):
        return True
    return isinstance(exc, errors.APIStatusError) and exc.status_code in RETRYABLE_STATUSES


def _export_timeout(dataset_id: str, task_id: str, state: str) -> errors.ExportTimeoutError:
    return errors.ExportTimeoutError(
        f"Export {task_id} of dataset {dataset_id!r} {state}; "
        f"it keeps running: call wait_for_export({dataset_id!r}, {task_id!r}) to resume.",
        task_id=task_id,
        dataset_id=dataset_id,
    )


def _shown(progress: bool | None, default: bool) -> bool:
    return default if progress is None else progress


def _text_option(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise errors.ConfigurationError(f"{name} must be a non-empty string, got {value!r}.")
    return value


def _export_params(export_format: str, include_images: bool) -> dict[str, str]:
    check_export_format(export_format)
    return {"export_format": export_format, "include_images": "true" if include_images else "false"}


def _selection_body(media_ids: Iterable[str] | None, cluster_ids: Iterable[str] | None) -> dict[str, list[str]]:
    if media_ids is not None and cluster_ids is None:
        name, ids = "media_ids", media_ids
    elif cluster_ids is not None and media_ids is None:
        name, ids = "cluster_ids", cluster_ids
    else:
        raise errors.ConfigurationError("Give exactly one of media_ids or cluster_ids.")
    if isinstance(ids, (str, bytes)):
        raise errors.ConfigurationError(f"{name} must be a list of ids, not a single string.")
    values = sorted({str(i) for i in ids})  # order and repeats carry no meaning
    if not values:
        raise errors.ConfigurationError(f"{name} is empty: nothing to export.")
    return {name: values}


def _completed_or_raise(task: ExportTask) -> ExportTask:
    if task.succeeded:
        return task
    if task.is_terminal:
        reason = task.result_message or "no reason given"
        raise errors.ExportFailedError(
            f"Export {task.id} of dataset {task.dataset_id!r} ended {task.status}: {reason}",
            task_id=task.id,
            dataset_id=task.dataset_id,
            status=task.status,
            result_message=task.result_message,
        )
    return task


class _ProgressScale:
    """Turn the server's progress into percent; its scale (0-1 or 0-100) is not documented.

    Values above 1 mean percent; until one is seen, values are read as fractions: a server counting
    in percent is mistaken only within its first percent, where a reading of "least it can mean"
    would show a server counting in fractions at under 1 % for its whole export. Whatever the
    scale, an unfinished export never shows 100 % (a percent server's early 1.0 read as a fraction).
    """

    def __init__(self) -> None:
        self.percent_scale = False

    def percent(self, task: ExportTask) -> float:
        if task.succeeded:
            return 100.0
        if task.progress is None:
            return 0.0
        self.percent_scale = self.percent_scale or task.progress > 1.0
        value = task.progress if self.percent_scale else task.progress * 100.0
        return max(0.0, min(value, _UNFINISHED_MAX_PERCENT))
