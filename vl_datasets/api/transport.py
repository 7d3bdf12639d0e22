"""HTTP to the Visual Layer API: one retry loop, one place that turns a response into an error.

Retries follow the good SDKs: connection errors, 408, 429 and 5xx are retried with exponential
backoff and jitter, honouring ``Retry-After``, under the package's one ``RetryPolicy``
(``backoff.py``). A caller that makes several requests for one operation (a download resuming)
hands its ``Attempts`` to each, so they spend from one count. A request that is not
idempotent (starting an export) is retried only when the connection was never made, or on the
answers the contract names retryable (408, 429, 502, 503, 504), not on a 500 from the platform
itself. A 401 renews a signed token once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from urllib3.exceptions import MaxRetryError, NewConnectionError

from .. import errors
from .._version import __version__
from ..backoff import RETRYABLE_STATUSES, Attempts, RetryPolicy, parse_retry_after
from ..redaction import redact_logs_of, redact_url, redact_value
from .auth import TokenProvider

logger = logging.getLogger("vl_datasets")


redact_logs_of("urllib3.connectionpool")  # its DEBUG request lines carry presigned signatures

# Answers after which even a request that starts work is sent again (contract §2: 429 and
# 502/503/504 are retryable). A gateway's 502 or 504 may hide a start the platform received: a
# second export then runs beside the one waited for, which costs the platform a job, where
# giving up ends a fetch of hours on one proxy hiccup. A 500 is the platform's own: not resent.
RESENT_STATUSES = frozenset({408, 429, 502, 503, 504})
USER_AGENT = f"vl_datasets/{__version__}"


def error_detail(response: requests.Response, secrets: tuple[str, ...] = ()) -> Any:
    """The server's ``detail``: FastAPI JSON when present, else a short text of an HTML/XML body.

    Redacted (``redact_value``) before it is cut or kept: a server may echo the request's
    Authorization header, or a storage service the signature it refused, and the detail reaches
    the error's message, its ``detail``, its pickle and the CLI's output. ``secrets``: the tokens
    sent, blanked even where no pattern finds them (an opaque token echoed bare).
    """
    try:
        payload = response.json()
    except ValueError:
        text = redact_value(" ".join(response.text.split()), secrets)
        return text[:300] or None
    if isinstance(payload, dict) and "detail" in payload:
        return redact_value(payload["detail"], secrets)
    return redact_value(payload, secrets)


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # 422: [{"loc": [...], "msg": ..., "type": ...}, ...]
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p is not None)
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


_STATUS_ERRORS: dict[int, type[errors.APIStatusError]] = {
    400: errors.BadRequestError,
    401: errors.AuthenticationError,
    403: errors.PermissionDeniedError,
    404: errors.DatasetNotFoundError,
    409: errors.DatasetNotReadyError,
    413: errors.RequestTooLargeError,
    422: errors.BadRequestError,
    429: errors.RateLimitError,
}

_HINTS = {
    401: "check VL_API_KEY and VL_API_SECRET (or the token), and that the clock is right",
    403: "these credentials may not access this dataset",
    409: "the dataset is not READY; wait for indexing to finish",
}


def raise_for_response(response: requests.Response, *, what: str, secrets: tuple[str, ...] = ()) -> None:
    """Raise the library's error for a non-2xx answer; ``what`` names the thing asked for, and
    ``secrets`` the tokens sent, which the server's detail may echo (``error_detail``)."""
    status = response.status_code
    if status < 400:
        return
    detail = error_detail(response, secrets)
    cls = _STATUS_ERRORS.get(status) or (errors.ServerError if status >= 500 else errors.APIStatusError)
    message = f"{what}: HTTP {status}"
    if text := _detail_text(detail):
        message += f": {text}"
    if hint := _HINTS.get(status):
        message += f" ({hint})"
    url = redact_url(response.url)
    raise cls(message, status_code=status, detail=detail, method=response.request.method, url=url)


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never established, so the server saw nothing."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError)


class Transport:
    """A ``requests`` session per process, with authentication, timeouts and retries."""

    def __init__(self, *, tokens: TokenProvider | None, timeout_s: float, retry: RetryPolicy) -> None:
        self.tokens = tokens
        self.timeout_s = timeout_s
        self.retry = retry
        self._session: requests.Session | None = None
        self._session_pid: int | None = None

    @property
    def session(self) -> requests.Session:
        # A session's pooled sockets must not be shared across fork: make one per process.
        if self._session is None or self._session_pid != os.getpid():
            self._session = requests.Session()
            self._session.headers["User-Agent"] = USER_AGENT
            self._session_pid = os.getpid()
        return self._session

    def close(self) -> None:
        if self._session is not None and self._session_pid == os.getpid():
            self._session.close()
        self._session = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_session": None, "_session_pid": None}

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        authenticate: bool = True,
        idempotent: bool = True,
        stream: bool = False,
        attempts: Attempts | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send with retries; return a 2xx (or 3xx with redirects off) response, else raise.

        ``authenticate=False`` sends no Authorization header: used for download hosts.
        ``attempts``, when given, is the caller's count, which this request's retries spend from.
        """
        attempts = attempts or self.retry.start(what)
        renewed = False
        extra_headers = dict(kwargs.pop("headers", None) or {})
        while True:
            outcome = self._send(method, url, extra_headers, authenticate, stream, kwargs, attempts.timeout_s())
            if isinstance(outcome, _Failure):
                if not (idempotent or outcome.never_sent) or not attempts.wait(outcome.kind):
                    raise self._connection_error(outcome, method, url, what, attempts)
                continue
            response = outcome
            logger.debug("%s %s -> %s", method, redact_url(url), response.status_code)
            status = response.status_code
            if status == 401 and authenticate and not renewed and self.tokens and self.tokens.can_renew:
                response.close()
                self.tokens.invalidate()
                renewed = True
                continue
            retryable = status in RETRYABLE_STATUSES and (idempotent or status in RESENT_STATUSES)
            if retryable:
                delay = attempts.next_delay_s(parse_retry_after(response.headers.get("Retry-After")))
                if delay is not None:
                    response.close()
                    attempts.pause(delay, f"HTTP {status}")
                    continue
            if status >= 400:
                try:
                    asked = f"{what} ({attempts.summary()})" if retryable else what
                    raise_for_response(response, what=asked, secrets=self._tokens_sent(authenticate))
                finally:
                    response.close()
            return response

    def _send(
        self,
        method: str,
        url: str,
        extra_headers: dict[str, str],
        authenticate: bool,
        stream: bool,
        kwargs: dict[str, Any],
        time_left_s: float | None,
    ) -> requests.Response | _Failure:
        """One attempt. A failure comes back as plain facts, never as requests' exception: that one
        holds the prepared request with its Authorization header, and would ride along as the
        ``__context__`` of the error we raise, reachable by any error reporter that walks chains."""
        read_s = self.timeout_s if time_left_s is None else min(self.timeout_s, time_left_s)
        deadline = time.monotonic() + read_s
        try:
            response = self.session.request(
                method,
                url,
                headers=self._headers(extra_headers, authenticate),
                timeout=(min(10.0, read_s), read_s),
                stream=True,
                **kwargs,
            )
        except requests.RequestException as exc:
            return _Failure(type(exc).__name__, isinstance(exc, requests.Timeout), _never_sent(exc))
        if stream:
            return response
        try:
            _read_body(response, deadline)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            timed_out = isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError))
            return _Failure(type(exc).__name__, timed_out, never_sent=False)
        return response

    def _tokens_sent(self, authenticate: bool) -> tuple[str, ...]:
        return self.tokens.handed_out() if authenticate and self.tokens is not None else ()

    def _headers(self, extra: dict[str, str], authenticate: bool) -> dict[str, str]:
        # Built per call and handed straight to requests: no frame of ours keeps the bearer token.
        _check_header_values(extra)
        if authenticate and self.tokens is not None:
            return {**extra, "Authorization": _authorization(self.tokens.bearer())}
        return dict(extra)

    @staticmethod
    def _connection_error(
        failure: _Failure, method: str, url: str, what: str, attempts: Attempts
    ) -> errors.APIConnectionError:
        cls = errors.APITimeoutError if failure.timed_out else errors.APIConnectionError
        # The exception text of requests can embed the full URL; name only its redacted form.
        message = f"{what}: could not reach {redact_url(url)} ({failure.kind}; {attempts.summary()})"
        return cls(message, method=method, url=redact_url(url))


def _read_body(response: requests.Response, deadline: float) -> None:
    """Read the whole body into ``response`` (as requests does unless streaming), by
    ``deadline`` (``time.monotonic``): the read timeout bounds each wait for the next bytes only,
    and a body sent a byte at a time would never time out. Past it: ``TimeoutError``."""
    chunks = []
    while chunk := response.raw.read1(_BODY_CHUNK, decode_content=True):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError("the answer did not arrive whole within the timeout")
    # What Response.content and iter_content read from once the body is in, as requests leaves them.
    response._content, response._content_consumed = b"".join(chunks), True


_BODY_CHUNK = 64 << 10


def _authorization(token: str) -> str:
    """``Bearer <token>``, or ``ConfigurationError`` when no header may hold the token (read from a
    file with its newline, a dash pasted from outside latin-1): requests and http.client refused it
    before sending, which the retries took for an unreachable API, or raised a UnicodeEncodeError
    holding the whole header."""
    if _HEADER_VALUE.fullmatch(token):
        return f"Bearer {token}"
    del token  # the error's traceback shows this frame, to a reporter that records locals
    raise errors.ConfigurationError(
        "The token holds a character no HTTP header may hold (a line break, say): check how it was read."
    )


def _check_header_values(headers: dict[str, str]) -> None:
    """The same refusal for the other headers of a request (a Range, say)."""
    for name, value in headers.items():
        if not _HEADER_VALUE.fullmatch(value):
            raise errors.ConfigurationError(f"The {name} header holds a character no HTTP header may hold.")


_HEADER_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f\u0100-\U0010ffff]*")  # latin-1, no control character but a tab


@dataclass(frozen=True)
class _Failure:
    """What an attempt that got no answer tells the retry loop."""

    kind: str  # the name of requests' exception, for messages
    timed_out: bool
    never_sent: bool  # the connection was never made, so the server saw nothing
