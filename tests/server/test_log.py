"""The record of what the service received, for tests to assert on."""

from __future__ import annotations

import dataclasses

import pytest
import requests

from tests.server.helpers import (
    api,
    token,
)


def test_request_log_records_what_was_received(local_vl_auth):
    bearer = f"Bearer {token()}"
    requests.post(
        api(local_vl_auth, "ds-ready/export_entities_async"),
        params={"export_format": "json"},
        json={"media_ids": ["x"]},
        headers={"Authorization": bearer},
    )
    requests.get(api(local_vl_auth, "ds-ready"))
    first, second = local_vl_auth.requests
    assert (first.origin, first.endpoint, first.method, first.status) == ("api", "selective_export", "POST", 200)
    assert first.path == "/api/v1/dataset/ds-ready/export_entities_async"
    assert first.query == {"export_format": "json"}
    assert first.json == {"media_ids": ["x"]}
    assert first.headers["authorization"] == bearer
    assert first.header("AUTHORIZATION") == bearer
    assert bearer not in repr(first)
    assert bearer not in repr(first.headers)
    assert (second.endpoint, second.status, second.header("Authorization")) == ("dataset", 401, None)
    assert local_vl_auth.count("dataset") == 1
    assert local_vl_auth.count("dataset", status=200) == 0
    requests.get(f"{local_vl_auth.url}/nowhere")
    assert local_vl_auth.requests[-1].endpoint is None
    assert local_vl_auth.requests[-1].status == 404
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = 500  # type: ignore[misc]
    local_vl_auth.clear_requests()
    assert local_vl_auth.requests == []
    assert local_vl_auth.count("dataset") == 0
