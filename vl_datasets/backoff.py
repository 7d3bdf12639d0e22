"""What the two retry loops (API requests, image reads) agree on: which HTTP answers pass after a
moment, and how long a server's ``Retry-After`` asks to wait. Standard library only, so the loading
side can use it without loading the API side's network stack."""

from __future__ import annotations

import email.utils
import time

# 408 Request Timeout, 429 Too Many Requests, and the 5xx a server answers while overloaded.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds, from either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)
