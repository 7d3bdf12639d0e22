"""The one retry policy of the three retry loops (API requests, export downloads, image reads).

A ``RetryPolicy`` says how many attempts an operation gets in all, how long to wait between them
(exponential backoff with jitter, a server's ``Retry-After`` honoured up to a cap) and, optionally,
an overall deadline. Each operation counts its attempts in one ``Attempts``: a layer that hands
its ``Attempts`` down (a download to each of its requests) spends from the same count, so the
layers never multiply. It needs nothing beyond the standard library, so the loading side can use it
without loading the API side's network stack. ``sleep``, ``clock`` and ``random`` are injectable so tests never wait.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .config import env_number
from .errors import ConfigurationError

logger = logging.getLogger("vl_datasets")

# 408 Request Timeout, 429 Too Many Requests, and the 5xx a server answers while overloaded.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds, from either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" reads as a float, and would reach time.sleep: no wait is said at all
        return None if math.isnan(seconds) else max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, how patiently and for how long a failing operation is tried.

    ``max_attempts`` counts every try, the first included. Before try n+1 the wait is
    ``min(cap_s, base_s * 2**n)``, of which the fraction ``jitter`` is random (0.5: uniform in
    [half, all] of it, so waits still grow while ranks that failed together spread out). A
    ``Retry-After`` replaces the wait; one longer than ``retry_after_max_s`` ends the attempts
    (``gives_up_on_long_retry_after``) or is cut to it.
    ``attempt_timeout_s`` bounds one try, ``deadline_s`` all of them together (None: no bound); a
    wait that would end past the deadline is not started.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    cap_s: float = 30.0
    deadline_s: float | None = None
    attempt_timeout_s: float | None = None
    jitter: float = 0.5
    retry_after_max_s: float = 120.0
    # A longer Retry-After: give up, saying so (an API call, which the caller can make again
    # later), or wait ``retry_after_max_s`` and try (an image read: sooner than asked beats an
    # image lost to the batch).
    gives_up_on_long_retry_after: bool = True
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    random: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an integer of at least 1, got {self.max_attempts!r}.")
        for name in ("deadline_s", "attempt_timeout_s"):
            value = getattr(self, name)
            if value is not None and not 0 < value < math.inf:  # a socket timeout cannot be infinite
                raise ConfigurationError(f"{name} must be a positive, finite number of seconds or None, got {value!r}.")
        if not 0.0 <= self.jitter <= 1.0 or self.base_s < 0 or self.cap_s < 0:
            raise ConfigurationError("jitter must be within [0, 1], and base_s and cap_s at least 0.")

    def delay_s(self, retry: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.retry_after_max_s)
        ceiling = min(self.cap_s, self.base_s * 2**retry)
        return ceiling * (1.0 - self.jitter + self.jitter * self.random())

    def replace(self, **changes) -> RetryPolicy:
        """This policy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def start(self, what: str) -> Attempts:
        """The attempts of one operation, described by ``what`` in logs; the first one is being made."""
        return Attempts(self, what)


class Attempts:
    """One operation's attempts under a policy: how many were made, and the time left."""

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self.policy, self.what = policy, what
        self.made = 1
        self.started = policy.clock()
        self.deadline_hit = False
        self.asked_wait_s: float | None = None  # a Retry-After longer than the policy waits

    def elapsed_s(self) -> float:
        return self.policy.clock() - self.started

    def remaining_s(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        if self.policy.deadline_s is None:
            return None
        return max(self.policy.deadline_s - self.elapsed_s(), 0.0)

    def timeout_s(self) -> float | None:
        """How long the attempt about to be made may take: its own bound, or the time left if shorter."""
        bounds = [b for b in (self.policy.attempt_timeout_s, self.remaining_s()) if b is not None]
        return min(bounds) if bounds else None

    def next_delay_s(self, retry_after_s: float | None = None) -> float | None:
        """After a failed attempt: count the next one and return the wait before it; or None when
        the attempts are spent or the wait would end past the deadline."""
        if self.made >= self.policy.max_attempts:
            return None
        long_wait = retry_after_s is not None and retry_after_s > self.policy.retry_after_max_s
        if long_wait and self.policy.gives_up_on_long_retry_after:
            # Resent sooner than asked, the request is refused again (or counts against us): give
            # up now, saying how long the server asked for.
            self.asked_wait_s = retry_after_s
            return None
        delay = self.policy.delay_s(self.made - 1, retry_after_s)
        remaining = self.remaining_s()
        if remaining is not None and delay >= remaining:
            self.deadline_hit = True
            return None
        self.made += 1
        return delay

    def pause(self, delay_s: float, reason: str, *, level: int = logging.INFO) -> None:
        """Wait ``delay_s`` before the attempt ``next_delay_s`` counted, saying why in the log."""
        total = self.policy.max_attempts
        logger.log(level, "%s: %s; attempt %d/%d in %.1fs", self.what, reason, self.made, total, delay_s)
        self.policy.sleep(delay_s)

    def wait(self, reason: str, retry_after_s: float | None = None, *, level: int = logging.INFO) -> bool:
        """``next_delay_s`` and ``pause``: True after waiting, False (at once) when nothing is left."""
        delay = self.next_delay_s(retry_after_s)
        if delay is None:
            return False
        self.pause(delay, reason, level=level)
        return True

    def progressed(self) -> None:
        """The operation moved forward (a download received bytes): its count starts again."""
        self.made = 1

    def summary(self) -> str:
        """Why the operation stopped, for an error message: ``gave up after 3 of 6 attempts in 2.1 s,
        at the 2 s deadline``."""
        text = f"gave up after {self.made} of {self.policy.max_attempts} attempts in {self.elapsed_s():.1f} s"
        if self.asked_wait_s is not None:
            return f"{text}: the server asked to be retried in {self.asked_wait_s:g} s, try again then"
        remaining = self.remaining_s()
        if self.deadline_hit or remaining == 0.0:
            return f"{text}, at the {self.policy.deadline_s:g} s deadline"
        return text


def stoppable(
    sleep: Callable[[float], None], stop: threading.Event, stopped: Callable[[], BaseException]
) -> Callable[[float], None]:
    """``sleep``, cut short by ``stop`` (set by another thread): once it is set, raise ``stopped()``
    rather than go on with the loop the sleep paces. A test's own ``sleep``, which never waits, is
    kept, and ``stop`` looked at after it."""

    def pause(seconds: float) -> None:
        if sleep is time.sleep:
            stop.wait(seconds)
        else:
            sleep(seconds)
        if stop.is_set():
            raise stopped()

    return pause


# Image reads: a batch waits on its slowest image, so they wait less than API calls, and give up
# on one image after a bounded time however the storage misbehaves.
IMAGE_READ_ATTEMPTS, IMAGE_READ_TIMEOUT_S, IMAGE_READ_DEADLINE_S = 6, 60.0, 180.0


def image_read_policy(env: Mapping[str, str] | None = None, **overrides) -> RetryPolicy:
    """The policy of image reads: ``overrides``, then ``VL_DATASETS_READ_ATTEMPTS`` (6),
    ``VL_DATASETS_READ_TIMEOUT_S`` (60, one attempt) and ``VL_DATASETS_READ_DEADLINE_S`` (180, one
    image across its attempts), then the defaults; waits of 0.1 s doubling up to 5 s."""
    attempts = env_number("VL_DATASETS_READ_ATTEMPTS", None, IMAGE_READ_ATTEMPTS, env)
    if attempts != int(attempts):
        raise ConfigurationError(f"VL_DATASETS_READ_ATTEMPTS must be a whole number, got {attempts!r}.")
    settings = {
        "max_attempts": int(attempts),
        "attempt_timeout_s": env_number("VL_DATASETS_READ_TIMEOUT_S", None, IMAGE_READ_TIMEOUT_S, env),
        "deadline_s": env_number("VL_DATASETS_READ_DEADLINE_S", None, IMAGE_READ_DEADLINE_S, env),
        "base_s": 0.1,
        "cap_s": 5.0,
        "retry_after_max_s": 5.0,
        "gives_up_on_long_retry_after": False,
    }
    return RetryPolicy(**{**settings, **overrides})
