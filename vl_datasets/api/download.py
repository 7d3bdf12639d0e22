"""Download an export's ZIP to a path, resumably, and never leave a half-written file there.

Bytes stream into a hidden partial file beside the destination, named after the export task (the
same task always serves the same bytes), under a lock so two processes never write it at once. The
lock lives in a private per-user folder under the temp dir, so a finished download leaves nothing
in the user's folder but the archive.
After a broken connection the next attempt, in this process or a later one, asks for the rest
with ``Range``; a server that ignores ``Range`` gets a fresh start. The length is checked against
what the server announced, then the partial file is renamed into place. An expired presigned URL
(the storage answers 403) is replaced by polling the task for a fresh one.

One count of attempts (the transport's ``RetryPolicy``) covers the whole download: failed requests
and broken streams spend from it alike, so the layers do not multiply, and bytes received give it
back in full (a huge file over a flaky link still finishes).
"""

from __future__ import annotations

import getpass
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin

import requests
import urllib3
from tqdm.auto import tqdm

from .. import errors
from ..backoff import stoppable
from ..locks import hold_lock
from ..records import ExportTask
from ..redaction import redact_url
from .transport import Transport

logger = logging.getLogger("vl_datasets")

CHUNK_BYTES = 1 << 20
MAX_URL_REFRESHES = 3
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def partial_path(dest: Path, task_id: str) -> Path:
    """Where the bytes of ``task_id`` accumulate before they become ``dest``. The id comes from the
    server: one that is no file name (a ``/``, say) is made one, told apart by a hash."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", task_id)[:64]
    if name != task_id:
        name = f"{name}-{hashlib.sha256(task_id.encode()).hexdigest()[:12]}"
    return dest.with_name(f".{dest.name}.{name}.incomplete")


def lock_path(dest: Path) -> Path:
    """The lock that downloads to ``dest`` take: one per destination (resolved), private to the user."""
    user = str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()
    folder = Path(tempfile.gettempdir()) / f"vl_datasets-locks-{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    _check_private(folder)
    return folder / f"{hashlib.sha256(os.fsencode(dest.resolve())).hexdigest()}.lock"


def _check_private(folder: Path) -> None:
    # The temp dir is shared: whoever else can write to this folder can swap our lock files for
    # links to files of ours, which taking the lock would then open for writing.
    if not hasattr(os, "getuid"):
        return  # Windows: the temp dir is already the user's own
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise errors.ConfigurationError(
            f"The download lock folder {folder} is not a private folder of this user (owner uid {info.st_uid}, "
            f"mode {stat.filemode(info.st_mode)}): remove it, or point TMPDIR elsewhere."
        )


def download_export(
    transport: Transport,
    task: ExportTask,
    dest: str | os.PathLike,
    *,
    base_url: str,
    refresh_task: Callable[[ExportTask], ExportTask],
    progress: bool = True,
    lock_timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> Path:
    """Fetch ``task``'s archive into ``dest`` and return ``dest``; see the module docstring.
    ``stop``, once set, ends it with ``DownloadError``, the bytes received kept for a resume."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock(lock_path(dest), timeout_s=lock_timeout_s, what=f"download of {dest}"):
        _Download(transport, task, dest, base_url, refresh_task, progress, stop).run()
    return dest


class _Download:
    """One download's state: the task (its URL may be refreshed), the partial file, the retries."""

    def __init__(self, transport, task, dest, base_url, refresh_task, progress, stop) -> None:
        self.transport = transport
        self.task = task
        self.dest = dest
        self.partial = partial_path(dest, task.id)
        self.base_url = base_url
        self.refresh_task = refresh_task
        self.progress = progress
        self.stop = stop
        self.url_refreshes = 0
        self.content_type = ""  # of the last answer that carried bytes, for an error about them
        retry = transport.retry
        if stop is not None:  # a stop ends the waits between attempts too
            retry = retry.replace(sleep=stoppable(retry.sleep, stop, self._stopped))
        self.attempts = retry.start(f"Download of export {task.id}")
        self.size_at_last_failure = self._have()  # bytes a break must add to count as progress

    def run(self) -> None:
        if self.task.download_uri is None:
            self.task = self.refresh_task(self.task)
        while True:
            try:
                total = self._attempt()
            except errors.PermissionDeniedError:
                self._renew_url()
                continue
            except (requests.RequestException, urllib3.exceptions.HTTPError, _AnsweredElsewhere) as exc:  # resume
                self._after_broken_stream(exc)
                continue
            if total is not None and self._have() < total:
                self._after_broken_stream(None)
                continue
            break
        if total is not None and self._have() != total:
            size = self._have()
            self.partial.unlink(missing_ok=True)
            raise errors.DownloadError(
                f"Download of export {self.task.id} is {size} bytes, expected {total}; discarded.",
                url=redact_url(self._url()),
            )
        if not zipfile.is_zipfile(self.partial):
            # An error page answered 200, or an archive cut short with no length announced: kept, it
            # would be blamed on the archive at unpacking, or resumed from its broken bytes.
            size = self._have()
            self.partial.unlink(missing_ok=True)
            sent_as = f", sent as {self.content_type}" if self.content_type else ""
            raise errors.DownloadError(
                f"Download of export {self.task.id} is no ZIP archive ({size:,} bytes"
                f"{sent_as}); discarded, the next attempt downloads it again.",
                url=redact_url(self._url()),
            )
        os.replace(self.partial, self.dest)

    def _url(self) -> str:
        if not self.task.download_uri:
            raise errors.ResponseValidationError(
                f"Export {self.task.id} is {self.task.status} but has no download_uri; wait for it to complete."
            )
        # On-prem answers a server-relative path; cloud a presigned absolute URL. The path goes after
        # the base URL whole, as the docs' clients join it: behind a proxy at /vl, "/cdn/..." is
        # "/vl/cdn/...", where urljoin put it at the host's root.
        uri = self.task.download_uri
        if uri.startswith("/") and not uri.startswith("//"):
            return self.base_url + uri
        return urljoin(self.base_url + "/", uri)

    def _have(self) -> int:
        try:
            return self.partial.stat().st_size
        except FileNotFoundError:
            return 0

    def _attempt(self) -> int | None:
        """Stream once, appending to the partial file; return the archive's total size if known."""
        url, have = self._url(), self._have()
        # The archive's own bytes: requests asks for gzip by default, and a proxy that takes it up
        # sends a Content-Length (and ranges) of compressed bytes, which the ZIP's are not.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            response = self.transport.request(
                "GET",
                url,
                what=f"Download of export {self.task.id}",
                authenticate=False,
                stream=True,
                headers=headers,
                attempts=self.attempts,
            )
        except errors.APIStatusError as exc:
            if exc.status_code == 416:  # our partial file is not a prefix the server recognizes
                self.partial.unlink(missing_ok=True)
                return self._attempt() if have else self._fail(exc)
            if isinstance(exc, errors.PermissionDeniedError):
                raise
            return self._fail(exc)
        with response:
            if response.is_redirect or 300 <= response.status_code < 400:
                # requests follows a redirect only when it says where to: the body of one that does
                # not is no archive, and saving it would blame the archive for the server's answer.
                raise errors.DownloadError(
                    f"Download of export {self.task.id}: the storage answered HTTP {response.status_code} "
                    "without a Location header to follow.",
                    url=redact_url(url),
                )
            start, total = _range_of(response, have)
            encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
            if encoded and response.status_code == 206:  # a range of compressed bytes: no part of the file
                self.partial.unlink(missing_ok=True)
                raise _AnsweredElsewhere("answered a range of compressed bytes")
            if encoded:
                # Compressed all the same: its length counts other bytes than the file's.
                start, total = 0, None
            if start not in (have, 0):
                # A part from elsewhere than asked: written from byte 0 it made a file of the right
                # size and the wrong bytes. Of no use: the whole archive again, without a Range.
                if not have:
                    raise errors.DownloadError(
                        f"Download of export {self.task.id}: asked for the whole archive, the storage "
                        f"answered from byte {start}.",
                        url=redact_url(url),
                    )
                self.partial.unlink(missing_ok=True)
                raise _AnsweredElsewhere(f"answered from byte {start}, not {have}")
            if start != have:  # Range ignored (200): start over
                logger.info("Server did not resume at byte %d; restarting the download", have)
                have = 0
            self.content_type = response.headers.get("Content-Type", "")
            self._check_disk_space(total, have)
            mode = "ab" if have else "wb"
            # Unbuffered: bytes received are on disk for the next run even if this process is killed.
            with open(self.partial, mode, buffering=0) as out, self._bar(total, have) as bar:
                # read1 hands over whatever has arrived, so bytes before a break are kept for the resume.
                while chunk := response.raw.read1(CHUNK_BYTES, decode_content=encoded):
                    out.write(chunk)
                    bar.update(len(chunk))
                    if self.stop is not None and self.stop.is_set() and (total is None or self._have() < total):
                        raise self._stopped()  # not after the last block: the archive is whole
                os.fsync(out.fileno())
        return total

    def _stopped(self) -> errors.DownloadError:
        return errors.DownloadError(
            f"Download of export {self.task.id} was stopped at byte {self._have()}; the bytes are kept in "
            f"{self.partial} and the next attempt resumes from there.",
            url=redact_url(self._url()) if self.task.download_uri else None,
        )

    def _fail(self, exc: errors.APIStatusError):
        raise errors.DownloadError(f"Download of export {self.task.id} failed: {exc}", url=exc.url) from None

    def _renew_url(self) -> None:
        self.url_refreshes += 1
        if self.url_refreshes > MAX_URL_REFRESHES:
            raise errors.DownloadError(
                f"Download of export {self.task.id} was refused (403) {MAX_URL_REFRESHES + 1} times, "
                "even with fresh URLs.",
                url=redact_url(self._url()),
            )
        logger.info("Download URL refused (expired?); asking for a fresh one")
        self.task = self.refresh_task(self.task)

    def _after_broken_stream(self, exc: Exception | None) -> None:
        # Only breaks that make no progress count: a huge file over a flaky link still finishes.
        if self._have() > self.size_at_last_failure:
            self.attempts.progressed()
        self.size_at_last_failure = self._have()
        reason = type(exc).__name__ if exc else "connection closed early"
        if not self.attempts.wait(f"broke off at byte {self._have()} ({reason}); resuming"):
            raise errors.DownloadError(
                f"Download of export {self.task.id} broke off ({reason}) and {self.attempts.summary()}; "
                f"{self._have()} bytes are kept in {self.partial} and the next attempt resumes from there.",
                url=redact_url(self._url()),
            )

    def _check_disk_space(self, total: int | None, have: int) -> None:
        if total is None:
            return
        need = total - have
        free = shutil.disk_usage(self.dest.parent).free
        if need > free:
            raise errors.InsufficientDiskSpaceError(
                f"Export {self.task.id} needs {need:,} bytes but {self.dest.parent} has {free:,} free.",
                required_bytes=need,
                free_bytes=free,
            )

    def _bar(self, total: int | None, have: int):
        return tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"download {self.task.id[:8]}",
            disable=not self.progress,
            leave=False,
        )


class _AnsweredElsewhere(Exception):
    """A resumed download answered from another byte than asked: its bytes are discarded, and the
    next attempt asks for the whole archive."""


def _range_of(response: requests.Response, have: int) -> tuple[int, int | None]:
    """(first byte this answer carries, size of the whole archive or None)."""
    if response.status_code == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match:
            total = None if match.group(3) == "*" else int(match.group(3))
            return int(match.group(1)), total
        return have, None
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None
