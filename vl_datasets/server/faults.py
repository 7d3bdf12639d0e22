"""Faults the tests switch on from Python; the server applies them to the requests it answers.

Switching faults on the server side means the client under test sends nothing test-only.
Every switch is thread-safe: the test thread flips it, handler and job threads consume it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("dataset", "snapshot", "export", "selective_export", "export_status", "cdn", "storage")
JOB_FAILURES = ("FAILED", "REJECTED")


@dataclass(frozen=True)
class ForcedAnswer:
    """An answer to give instead of the real one."""

    status: int
    retry_after: float | None = None
    detail: Any = None
    body: str | bytes | None = None
    content_type: str | None = None
    drip_s: float | None = None  # send the body a byte at a time, this long apart


@dataclass(frozen=True)
class JobFailure:
    """How an export job ends instead of COMPLETED."""

    status: str
    result_message: str


class Faults:
    """Switches for the local service. Each ``times`` counts down as requests consume the fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.reset()

    def reset(self) -> None:
        """Switch every fault off; stalled downloads and held exports go on at once."""
        with self._lock:
            self._forced: dict[str, list[ForcedAnswer]] = {name: [] for name in ENDPOINTS}
            self._breaks: list[int] = []
            self._stalls: list[tuple[int, float]] = []
            self._ignore_range: int | None = 0
            self._misplaced_ranges: list[int] = []
            self._compression: str | None = None
            self._limits_unnamed = False
            self._expired_urls = 0
            self._job_failure: JobFailure | None = None
            self._job_failures_left: int | None = None
            self._hold_s: float | None = 0.0
            self._images_dropped = 0
            self._entities_miscounted: list[int] = []
            self._hold_since = 0.0
            # A stall sleeps on this event: setting it wakes every stalled download at once.
            self._wake.set()
            self._wake = threading.Event()

    # -- switching on ----------------------------------------------------------------------

    def fail_next(
        self,
        endpoint: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        detail: Any = None,
        body: str | bytes | None = None,
        content_type: str | None = None,
        drip_s: float | None = None,
    ) -> None:
        """The next ``times`` calls of ``endpoint`` answer ``status``.

        The answer is ``{"detail": detail}`` (XML on the storage origin) unless ``body`` is given,
        sent as ``content_type`` (e.g. an HTML page from a proxy). ``retry_after`` adds the header.
        ``{header:<Name>}`` in the detail or body is the request's header, ``{token}`` the
        Authorization header's credential, ``{query}`` the query string: a server that echoes what
        it was sent (the Authorization header, a signature). ``drip_s``: the body goes out a byte
        at a time, this many seconds apart (a server, or a proxy, that trickles its answer).
        """
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}.")
        answer = ForcedAnswer(status, retry_after, detail, body, content_type, drip_s)
        with self._lock:
            self._forced[endpoint].extend([answer] * times)

    def break_download_after(self, n_bytes: int, *, times: int = 1) -> None:
        """The storage origin sends full headers, then closes the connection after ``n_bytes`` of body."""
        with self._lock:
            self._breaks.extend([n_bytes] * times)

    def stall_download_after(self, n_bytes: int, seconds: float, *, times: int = 1) -> None:
        """The storage origin sends ``n_bytes``, then waits ``seconds`` (or until ``reset``) for the rest."""
        with self._lock:
            self._stalls.extend([(n_bytes, seconds)] * times)

    def ignore_range(self, times: int | None = None) -> None:
        """Answer 200 with the whole file even when ``Range`` is asked (None: until reset)."""
        with self._lock:
            self._ignore_range = times

    def misplace_range(self, start: int, *, times: int = 1) -> None:
        """The next ``times`` ranged downloads are answered 206 from byte ``start``, whatever was asked
        (a cache or proxy answering from its own copy's offset)."""
        with self._lock:
            self._misplaced_ranges.extend([start] * times)

    def compress_downloads(self, *, whatever_asked: bool = False) -> None:
        """Whole-file downloads go gzipped, with the compressed Content-Length, as a compressing proxy
        sends them: to a request that accepts gzip, or with ``whatever_asked`` to every one. Until reset."""
        with self._lock:
            self._compression = "always" if whatever_asked else "when accepted"

    def name_no_limit(self) -> None:
        """A too-large export is REJECTED as "Export rejected: too many entities", naming no
        threshold (the contract's other spelling, §4). Until reset."""
        with self._lock:
            self._limits_unnamed = True

    def limits_named(self) -> bool:
        with self._lock:
            return not self._limits_unnamed

    def expire_urls(self, times: int = 1) -> None:
        """The next ``times`` presigned URLs are signed already expired."""
        with self._lock:
            self._expired_urls += times

    def fail_exports(
        self, result_message: str = "Export failed", status: str = "FAILED", times: int | None = None
    ) -> None:
        """The next ``times`` export jobs end with ``status`` and ``result_message`` (None: until reset)."""
        if status not in JOB_FAILURES:
            raise ValueError(f"status must be one of {JOB_FAILURES}, not {status!r}.")
        with self._lock:
            self._job_failure = JobFailure(status, result_message) if times is None or times > 0 else None
            self._job_failures_left = times

    def hold_exports(self, seconds: float | None = None) -> None:
        """Jobs stay IN_PROGRESS ``seconds`` after they start or after this call, whichever is later.

        With None they stay until ``release_exports()`` (or ``reset()``).
        """
        with self._lock:
            self._hold_s = seconds
            self._hold_since = time.monotonic()

    def drop_an_image(self, times: int = 1) -> None:
        """The next ``times`` exports with images leave out the image file of their first row; their
        metadata still lists it."""
        with self._lock:
            self._images_dropped += times

    def release_exports(self) -> None:
        """End a hold: held jobs complete at their next status poll."""
        with self._lock:
            self._hold_s = 0.0

    def miscount_entities(self, by: int, *, times: int = 1) -> None:
        """The next ``times`` export jobs announce an ``entities_count`` ``by`` more than the media
        items they export: the contract does not say what the count counts (objects too, or the ids
        asked for)."""
        with self._lock:
            self._entities_miscounted.extend([by] * times)

    # -- consumed by the server ------------------------------------------------------------

    def take_forced(self, endpoint: str) -> ForcedAnswer | None:
        """The forced answer for this call of ``endpoint``, if one is queued."""
        with self._lock:
            queue = self._forced[endpoint]
            return queue.pop(0) if queue else None

    def take_break(self) -> int | None:
        """Bytes of body to send before dropping this download, or None."""
        with self._lock:
            return self._breaks.pop(0) if self._breaks else None

    def take_stall(self) -> tuple[int, float, threading.Event] | None:
        """(bytes, seconds, wake) of a stall for this download, or None.

        The download sleeps with ``wake.wait(seconds)``: the event is the one current now, so a
        ``reset`` at any later moment cuts the sleep short.
        """
        with self._lock:
            return (*self._stalls.pop(0), self._wake) if self._stalls else None

    def take_ignore_range(self) -> bool:
        """True when this ranged download must be answered 200 with the whole file."""
        with self._lock:
            if self._ignore_range is None:
                return True
            if self._ignore_range > 0:
                self._ignore_range -= 1
                return True
            return False

    def compresses(self, accept_encoding: str) -> bool:
        """True when a whole-file download asked with this Accept-Encoding must go gzipped."""
        with self._lock:
            accepted = "gzip" in accept_encoding.lower()
            return self._compression == "always" or (self._compression == "when accepted" and accepted)

    def take_misplaced_range(self) -> int | None:
        """The byte this ranged download must be answered from instead of the one asked, if any."""
        with self._lock:
            return self._misplaced_ranges.pop(0) if self._misplaced_ranges else None

    def take_expired_url(self) -> bool:
        """True when the URL being signed now must be already expired."""
        with self._lock:
            if self._expired_urls > 0:
                self._expired_urls -= 1
                return True
            return False

    def take_job_failure(self) -> JobFailure | None:
        """How the job starting now must end, or None to let it complete."""
        with self._lock:
            failure = self._job_failure
            if failure is not None and self._job_failures_left is not None:
                self._job_failures_left -= 1
                if self._job_failures_left <= 0:
                    self._job_failure = None
            return failure

    def take_entities_miscount(self) -> int:
        """How many entities more than its media items the job starting now announces."""
        with self._lock:
            return self._entities_miscounted.pop(0) if self._entities_miscounted else 0

    def take_dropped_image(self) -> bool:
        """True when the export being built now must leave out its first row's image."""
        with self._lock:
            if self._images_dropped > 0:
                self._images_dropped -= 1
                return True
            return False

    def jobs_held(self, started: float) -> bool:
        """True while a job started at ``started`` (time.monotonic) must still report IN_PROGRESS."""
        with self._lock:
            if self._hold_s is None:
                return True
            return time.monotonic() - max(started, self._hold_since) < self._hold_s
