"""Bearer tokens checked the way the cloud API checks them, on every API endpoint but /cdn."""

from __future__ import annotations

import time

import pytest
import requests

from tests.server.helpers import (
    api,
    download,
    finished,
    start_full,
    start_selective,
    token,
)


@pytest.mark.parametrize(
    "header,ok",
    [
        (lambda: f"Bearer {token()}", True),
        (lambda: f"bearer {token()}", True),
        (lambda: None, False),
        (lambda: token(), False),
        (lambda: f"Bearer {token(secret='wrong-secret-0123456789abcdef01234')}", False),
        (lambda: f"Bearer {token(kid='other-key')}", False),
        (lambda: f"Bearer {token(sub='other-key')}", False),
        (lambda: f"Bearer {token(iss='someone')}", False),
        (lambda: f"Bearer {token(drop=('iat',))}", False),
        (lambda: f"Bearer {token(drop=('exp',))}", False),
        (lambda: f"Bearer {token(time.time() - 700)}", False),
    ],
)
def test_jwt_is_verified(local_vl_auth, header, ok):
    value = header()
    answer = requests.get(api(local_vl_auth, "ds-ready"), headers={"Authorization": value} if value else {})
    assert answer.status_code == (200 if ok else 401)
    if not ok:
        assert isinstance(answer.json()["detail"], str)
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_every_api_endpoint_needs_the_token_but_cdn_does_not(local_vl_auth):
    assert start_full(local_vl_auth).status_code == 401
    assert start_selective(local_vl_auth, {"media_ids": ["a"]}).status_code == 401
    auth = {"Authorization": f"Bearer {token()}"}
    start = requests.get(
        api(local_vl_auth, "ds-ready/export_context_async"),
        params={"file_name": "export.zip", "export_format": "json"},
        headers=auth,
    )
    assert (
        requests.get(
            api(local_vl_auth, "ds-ready/export_status"), params={"export_task_id": start.json()["id"]}
        ).status_code
        == 401
    )
    task = finished(local_vl_auth, start, headers=auth)
    answer = download(local_vl_auth, task)  # no token: /cdn redirects, storage serves
    assert answer.status_code == 200
    assert answer.history[0].status_code == 302
