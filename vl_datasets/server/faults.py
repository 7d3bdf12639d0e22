"""Faults the tests switch on from Python; the server applies them to the requests it answers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("dataset", "export", "selective_export", "export_status", "cdn", "storage")


@dataclass
class ForcedAnswer:
    """An answer to give instead of the real one."""

    status: int
    retry_after: float | None = None
    detail: Any = None
    body: str | None = None
    content_type: str | None = None


class Faults:
    """Thread-safe switches. Each ``times`` counts down as requests consume the fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._forced: dict[str, list[ForcedAnswer]] = {name: [] for name in ENDPOINTS}
            self._breaks: list[int] = []
            self._stalls: list[tuple[int, float]] = []
            self._ignore_range: int | None = 0
            self._expired_urls = 0
            self._job_failure: tuple[str, str, int | None] | None = None
            self.hold_seconds: float | None = 0.0
            self._released = threading.Event()
            self._released.set()

    # -- switching on ----------------------------------------------------------------------

    def fail_next(self, endpoint: str, status: int, *, times: int = 1, retry_after: float | None = None,
                  detail: Any = None, body: str | None = None, content_type: str | None = None) -> None:
        """The next ``times`` calls of ``endpoint`` answer ``status``."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"Unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}.")
        with self._lock:
            self._forced[endpoint].extend(ForcedAnswer(status, retry_after, detail, body, content_type)
                                          for _ in range(times))

    def break_download_after(self, n_bytes: int, *, times: int = 1) -> None:
        """The storage origin closes the connection after ``n_bytes`` of body."""
        with self._lock:
            self._breaks.extend([n_bytes] * times)

    def stall_download_after(self, n_bytes: int, seconds: float, *, times: int = 1) -> None:
        """The storage origin sends ``n_bytes``, then waits ``seconds`` before the rest."""
        with self._lock:
            self._stalls.extend([(n_bytes, seconds)] * times)

    def ignore_range(self, times: int | None = None) -> None:
        """Answer 200 with the whole file even when ``Range`` is asked (None: until reset)."""
        with self._lock:
            self._ignore_range = times

    def expire_urls(self, times: int = 1) -> None:
        """The next ``times`` presigned URLs are signed already expired."""
        with self._lock:
            self._expired_urls += times

    def fail_exports(self, result_message: str = "Export failed", status: str = "FAILED",
                     times: int | None = None) -> None:
        """Export jobs end with ``status`` and ``result_message`` (None: every job until reset)."""
        with self._lock:
            self._job_failure = (status, result_message, times)

    def hold_exports(self, seconds: float | None = None) -> None:
        """Jobs stay IN_PROGRESS for ``seconds`` (None: until ``release_exports``)."""
        with self._lock:
            self.hold_seconds = seconds
            if seconds is None:
                self._released.clear()

    def release_exports(self) -> None:
        with self._lock:
            self.hold_seconds = 0.0
            self._released.set()

    # -- consumed by the server ------------------------------------------------------------

    def take_forced(self, endpoint: str) -> ForcedAnswer | None:
        with self._lock:
            queue = self._forced[endpoint]
            return queue.pop(0) if queue else None

    def take_break(self) -> int | None:
        with self._lock:
            return self._breaks.pop(0) if self._breaks else None

    def take_stall(self) -> tuple[int, float] | None:
        with self._lock:
            return self._stalls.pop(0) if self._stalls else None

    def take_ignore_range(self) -> bool:
        with self._lock:
            if self._ignore_range is None:
                return True
            if self._ignore_range > 0:
                self._ignore_range -= 1
                return True
            return False

    def take_expired_url(self) -> bool:
        with self._lock:
            if self._expired_urls > 0:
                self._expired_urls -= 1
                return True
            return False

    def take_job_failure(self) -> tuple[str, str] | None:
        with self._lock:
            if self._job_failure is None:
                return None
            status, message, times = self._job_failure
            if times is not None:
                self._job_failure = (status, message, times - 1) if times > 1 else None
            return status, message

    def jobs_held(self, age_s: float) -> bool:
        """True while a job of this age must still report IN_PROGRESS."""
        with self._lock:
            if not self._released.is_set():
                return True
            return self.hold_seconds is not None and age_s < self.hold_seconds
