"""Which read failures are retried, how long the waits are, and that the retries end."""

from __future__ import annotations

import errno

import aiohttp
import pytest
from multidict import CIMultiDict

from vl_datasets import errors
from vl_datasets.backoff import RetryPolicy
from vl_datasets.loading.retries import _retry_after_s, is_transient, read_with_retries


def http_error(status: int, **headers: str) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(None, (), status=status, headers=CIMultiDict(headers))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc",
    [
        http_error(503),
        http_error(429),
        ConnectionResetError(),
        TimeoutError(),
        OSError(errno.EBUSY, "SlowDown"),  # what s3fs makes of a 503 SlowDown
        aiohttp.ServerDisconnectedError(),
    ],
)
def test_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [FileNotFoundError("gone"), PermissionError("no"), http_error(404), http_error(403), ValueError("bad"), OSError()],
)
def test_not_transient(exc):
    assert not is_transient(exc)


def test_backoff_grows_with_jitter_up_to_the_cap_and_honours_retry_after():
    # jitter 0.5: each wait is uniform in [half, all] of its ceiling; random() == 0 gives the half.
    policy = RetryPolicy(base_s=0.1, cap_s=1.0, retry_after_max_s=1.0, random=lambda: 0.0)

    def delay(n, exc):
        return policy.delay_s(n, _retry_after_s(exc))

    assert [delay(n, ConnectionResetError()) for n in range(5)] == [0.05, 0.1, 0.2, 0.4, 0.5]
    assert delay(0, http_error(503, **{"Retry-After": "0.7"})) == 0.7
    assert delay(0, http_error(503, **{"Retry-After": "120"})) == 1.0
    # An HTTP date is read as the API client reads it: a date long past asks for no wait at all.
    assert delay(0, http_error(503, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0


def test_retries_are_bounded_and_keep_the_last_error():
    waits = []
    calls = []
    policy = RetryPolicy(max_attempts=3, sleep=waits.append)

    def read(timeout_s):
        calls.append(1)
        raise ConnectionResetError(f"reset {len(calls)}")

    with pytest.raises(errors.ImageReadError, match="reset 3") as caught:
        read_with_retries(policy, read, what="read of x")
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    assert "gave up after 3 of 3 attempts" in str(caught.value)
    assert (len(calls), len(waits)) == (3, 2)


def test_an_image_asked_to_wait_longer_than_reads_wait_is_read_again_after_their_longest_wait():
    """Unlike an API call, which gives up on such an answer, a read tries again sooner than asked:
    an image lost costs the batch more than a refused try."""
    from vl_datasets.backoff import image_read_policy

    waits, calls = [], []
    policy = image_read_policy({}, sleep=waits.append)

    def read(timeout_s):
        calls.append(1)
        if len(calls) == 1:
            raise http_error(503, **{"Retry-After": "600"})
        return b"pixels"

    assert read_with_retries(policy, read, what="read of x") == b"pixels"
    assert waits == [policy.retry_after_max_s] == [5.0]
