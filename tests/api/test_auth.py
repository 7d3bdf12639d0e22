"""Bearer tokens: signed with the contract's claims, renewed before expiry and after a 401, never leaked."""

from __future__ import annotations

import jwt
import pytest

from tests.api.helpers import export_and_download, make_client
from vl_datasets import Client, errors


def _bearer(record) -> str | None:
    value = {k.lower(): v for k, v in record.headers.items()}.get("authorization")
    return value.split(" ", 1)[1] if value else None


def test_signed_token_has_the_contract_claims(local_vl_auth, fake_time):
    with make_client(
        local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789"
    ) as client:
        assert client.get_dataset("ds-ready").ready
    token = _bearer(local_vl_auth.requests[-1])
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token, "secret-456-0123456789abcdef0123456789", algorithms=["HS256"], options={"verify_exp": False}
    )
    assert header["alg"] == "HS256"
    assert header["kid"] == "key-123"
    assert claims["sub"] == "key-123"
    assert claims["iss"] == "sdk"
    assert claims["exp"] - claims["iat"] == 600


def test_credentials_come_from_the_environment_at_construction(local_vl_auth, fake_time):
    env = {
        "VL_API_URL": local_vl_auth.url,
        "VL_API_KEY": "key-123",
        "VL_API_SECRET": "secret-456-0123456789abcdef0123456789",
    }
    client = Client(env=env, progress=False, sleep=fake_time.sleep)
    assert client.base_url == local_vl_auth.url
    assert client.get_dataset("ds-ready").ready


def test_wrong_secret_is_an_authentication_error_after_one_renewal(local_vl_auth, fake_time):
    with (
        make_client(local_vl_auth, fake_time, api_key="key-123", api_secret="wrong") as client,
        pytest.raises(errors.AuthenticationError) as caught,
    ):
        client.get_dataset("ds-ready")
    assert isinstance(caught.value, PermissionError)
    assert caught.value.status_code == 401
    assert local_vl_auth.count("dataset") == 2


def test_a_401_renews_the_token_once(local_vl_auth, fake_time):
    local_vl_auth.faults.fail_next("dataset", 401)
    with make_client(
        local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789"
    ) as client:
        assert client.get_dataset("ds-ready").ready
    assert local_vl_auth.count("dataset") == 2
    assert fake_time.sleeps == []


def test_token_is_renewed_before_it_expires(local_vl_auth, fake_time):
    import time

    wall = [time.time() - 560]  # the first token expires 40 s from now: inside the renewal margin
    client = make_client(
        local_vl_auth,
        fake_time,
        api_key="key-123",
        api_secret="secret-456-0123456789abcdef0123456789",
        wall_clock=lambda: wall[0],
    )
    client.get_dataset("ds-ready")
    wall[0] += 100  # 460 s before expiry as far as the client knows: reused
    client.get_dataset("ds-ready")
    wall[0] = time.time()
    client.get_dataset("ds-ready")
    tokens = [_bearer(r) for r in local_vl_auth.requests]
    assert tokens[0] == tokens[1] != tokens[2]


def test_on_prem_sends_no_authorization_header(local_vl, client, tmp_path):
    export_and_download(client, tmp_path)
    assert local_vl.requests, "the export made no request to check"
    assert all(_bearer(r) is None for r in local_vl.requests), (
        f"an on-prem client sent a bearer token to {[r.path for r in local_vl.requests if _bearer(r) is not None]}"
    )


def test_token_never_leaks(local_vl_auth, fake_time, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    with make_client(
        local_vl_auth, fake_time, api_key="key-123", api_secret="secret-456-0123456789abcdef0123456789"
    ) as client:
        export_and_download(client, tmp_path)
        local_vl_auth.faults.fail_next("dataset", 500, times=10)
        with pytest.raises(errors.ServerError) as caught:
            client.get_dataset("ds-ready")
        text = repr(client) + str(caught.value) + repr(caught.value) + repr(client.settings)
    tokens = {_bearer(r) for r in local_vl_auth.requests if r.origin == "api"} - {None}
    assert tokens, "no API request carried a bearer token, so there is nothing to look for"
    secrets = tokens | {"secret-456-0123456789abcdef0123456789"}
    storage = [r for r in local_vl_auth.requests if r.origin == "storage"]
    assert storage, "the export was never downloaded from storage"
    assert all(_bearer(r) is None for r in storage), "the API's bearer token was sent to storage"
    for secret in secrets:
        assert secret not in text, "a token or the secret leaked into a repr or an error message"
        assert secret not in caplog.text, "a token or the secret leaked into the log"
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), f"a token or the secret leaked into {path}"


def test_fixed_token_is_sent_as_is(local_vl_auth, fake_time):
    import time

    now = int(time.time())
    token = jwt.encode(
        {"sub": "key-123", "iat": now, "exp": now + 600, "iss": "sdk"},
        "secret-456-0123456789abcdef0123456789",
        algorithm="HS256",
        headers={"kid": "key-123"},
    )
    with make_client(local_vl_auth, fake_time, token=token) as client:
        assert client.get_dataset("ds-ready").ready
        assert "key" not in repr(client).replace("auth=token", "")
    assert _bearer(local_vl_auth.requests[-1]) == token
