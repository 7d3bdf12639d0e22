"""Which failed image reads are worth another try, and the one loop that retries them.

Object storage sheds load with 503 SlowDown, and connections reset or time out under load; these
pass after a moment. A missing object, a refused permission or a corrupt file does not, so those
fail at once. The loop follows the package's one ``RetryPolicy`` (``backoff.py``): a bounded number
of attempts in all, backoff with jitter (so the workers of a job that hit SlowDown together do not
come back together), a server's ``Retry-After`` honoured up to the cap, each attempt bounded by
``attempt_timeout_s`` and the image by ``deadline_s``. When they run out it raises
``ImageReadError``, saying how many attempts were made and carrying the last error's text.

The network libraries are recognized without importing them: they are looked up in
``sys.modules``, so a local images_root never loads aiohttp or botocore.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from ..backoff import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from ..errors import ImageReadError

T = TypeVar("T")

# s3fs turns SlowDown and ServiceUnavailable into EBUSY, InternalError into EREMOTEIO.
TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EBUSY",
        "EAGAIN",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EPIPE",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "ENETDOWN",
        "EREMOTEIO",
    )
    if hasattr(errno, name)
)
# What no retry fixes; checked first, since these are OSErrors too.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(exc: BaseException) -> bool:
    """Whether a read that raised ``exc`` may succeed if tried again."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
        return True
    status = getattr(exc, "status", None)
    if isinstance(status, int):  # aiohttp's ClientResponseError, through fsspec's HTTP filesystem
        return status in RETRYABLE_STATUSES
    if isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS:
        return True
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def _retry_after_s(exc: BaseException) -> float | None:
    headers = getattr(exc, "headers", None)
    value = headers.get("Retry-After") if headers is not None and hasattr(headers, "get") else None
    return parse_retry_after(str(value)) if value is not None else None


def read_with_retries(policy: RetryPolicy, read: Callable[[float | None], T], *, what: str) -> T:
    """``read(timeout_s)``, tried again after transient errors until ``policy`` runs out, then
    ``ImageReadError``. ``timeout_s`` is what the attempt may take: its own bound or the time left."""
    attempts = policy.start(what)
    while True:
        try:
            return read(attempts.timeout_s())
        except Exception as exc:
            if not is_transient(exc):
                raise
            # The log names the error's type only: its text may hold a URL with a signed query.
            if not attempts.wait(type(exc).__name__, _retry_after_s(exc), level=logging.DEBUG):
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                message = f"{attempts.summary()}; the last error was {last}"
                raise ImageReadError(message, attempts=attempts.made) from exc
