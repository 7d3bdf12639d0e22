"""Fixtures of the API tests: the fake clock, and a client of the local service that sleeps on it."""

from __future__ import annotations

import pytest

from tests.api.helpers import FakeTime, make_client


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def client(local_vl, fake_time):
    with make_client(local_vl, fake_time) as c:
        yield c
