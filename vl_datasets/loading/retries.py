"""Which failed image reads are worth another try, and the one loop that retries them.

Object storage sheds load with 503 SlowDown, and connections reset or time out under load; these
pass after a moment. A missing object, a refused permission or a corrupt file does not, so those
fail at once. The loop backs off exponentially with full jitter (so the workers of a job that hit
SlowDown together do not come back together), honours a server's ``Retry-After`` up to the cap,
and gives up after a bounded number of attempts, re-raising the last error.

The network libraries are recognized without importing them: they are looked up in
``sys.modules``, so a local images_root never loads aiohttp or botocore.
"""

from __future__ import annotations

import asyncio
import errno
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ..backoff import RETRYABLE_STATUSES, parse_retry_after

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


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th wait is uniform in [0, min(cap_s, base_s * 2**n)].

    ``sleep`` and ``random`` are injectable so tests never wait.
    """

    attempts: int = 5
    base_s: float = 0.1
    cap_s: float = 5.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def delay_s(self, retry: int, exc: BaseException) -> float:
        """How long to wait before retry number ``retry`` (0-based) after ``exc``."""
        asked = _retry_after_s(exc)
        if asked is not None:
            return min(asked, self.cap_s)
        return self.random() * min(self.cap_s, self.base_s * 2**retry)

    def call(self, read: Callable[[], T]) -> T:
        """``read()``, tried again after transient errors; the last error when they run out."""
        for retry in range(self.attempts):
            try:
                return read()
            except Exception as exc:
                if retry + 1 >= self.attempts or not is_transient(exc):
                    raise
                self.sleep(self.delay_s(retry, exc))
        raise AssertionError("unreachable: the last attempt returns or raises")
