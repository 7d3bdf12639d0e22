"""Settings resolution: explicit argument, then environment, then default; the variants the contract accepts."""

from __future__ import annotations

import pytest

from vl_datasets import Client, errors
from vl_datasets.config import normalize_base_url, resolve_cache_dir, resolve_client_settings


@pytest.mark.parametrize(
    "given,expected",
    [
        ("https://app.visual-layer.com", "https://app.visual-layer.com"),
        ("https://app.visual-layer.com/api/v1/", "https://app.visual-layer.com"),
        ("localhost:2080", "http://localhost:2080"),
        ("10.0.0.5:2080", "https://10.0.0.5:2080"),
        ("http://onprem:2080/", "http://onprem:2080"),
        ("http://[::1]:2080/vl@team", "http://[::1]:2080/vl@team"),  # an "@" in the path of an IPv6 host
        ("app.visual-layer.com", "https://app.visual-layer.com"),
        ("localhost:8000", "http://localhost:8000"),
        ("localhost", "http://localhost"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("https://api.example.com/v1", "https://api.example.com/v1"),
        ("[fe80::1]", "https://[fe80::1]"),
        ("onprem:2080", "https://onprem:2080"),
        ("https://onprem", "https://onprem"),  # a one-word host, meant: its scheme says so
    ],
)
def test_base_url_forms(given, expected):
    assert normalize_base_url(given) == expected


def test_bad_base_url_is_a_configuration_error():
    with pytest.raises(errors.ConfigurationError, match="ftp"):
        normalize_base_url("ftp://host")


@pytest.mark.parametrize("url", ["http://[::1:2080", "http://host:99999999", "http://host:port", "http://:2080"])
def test_a_url_no_request_could_use_is_refused_when_the_client_is_made(url):
    """Not at each request after, retried as if the network had failed."""
    with pytest.raises(errors.ConfigurationError, match="Invalid Visual Layer API URL"):
        Client(url, env={}, progress=False)


@pytest.mark.parametrize("url", ["notaurl", "notaurl/api/v1", "vl-server"])
def test_a_bare_word_is_no_host(url):
    """It became https://notaurl, and failed only after the client's retries (about 11 s)."""
    for given in ({"base_url": url, "env": {}}, {"env": {"VL_API_URL": url}}):
        with pytest.raises(errors.ConfigurationError, match=f"Invalid Visual Layer API URL '{url}': no scheme"):
            resolve_client_settings(**given)


@pytest.mark.parametrize(
    "url",
    [
        "http://alice:Pw-s3cret@host:8080",
        "https://alice:Pw-s3cret@host/api/v1",
        "alice:Pw-s3cret@host",
        "https://alice:Pw/s3cret@host",  # a raw secret holding "/" (an AWS secret key): the parsed host ends early
        "https://alice:Pw-s3cret?x#y@host:2080",
    ],
)
def test_credentials_in_the_base_url_are_refused_without_echoing_them(url):
    """They would show in the client's repr, key the cache and be written into its manifests."""
    with pytest.raises(errors.ConfigurationError, match="holds credentials") as caught:
        resolve_client_settings(base_url=url, env={})
    assert "s3cret" not in str(caught.value) and "alice" not in str(caught.value)
    with pytest.raises(errors.ConfigurationError) as caught:
        resolve_client_settings(env={"VL_API_URL": url})
    assert "s3cret" not in str(caught.value)


def test_arguments_win_over_environment_which_wins_over_defaults():
    env = {"VL_API_URL": "http://env:2080", "VL_API_KEY": "ek", "VL_API_SECRET": "es"}
    settings = resolve_client_settings(env=env)
    assert (settings.base_url, settings.api_key, settings.api_secret) == ("http://env:2080", "ek", "es")
    settings = resolve_client_settings("http://arg:1", api_key="ak", api_secret="as", env=env)
    assert (settings.base_url, settings.api_key) == ("http://arg:1", "ak")
    assert resolve_client_settings(env={}).base_url == "https://app.visual-layer.com"
    assert resolve_client_settings(env={}).on_prem


def test_an_explicit_token_ignores_signing_credentials_from_the_environment():
    settings = resolve_client_settings(token="t", env={"VL_API_KEY": "ek", "VL_API_SECRET": "es"})
    assert settings.token == "t"
    assert settings.api_secret is None


def test_half_credentials_are_refused_without_echoing_the_secret():
    with pytest.raises(errors.ConfigurationError, match="VL_API_KEY") as caught:
        resolve_client_settings(env={"VL_API_SECRET": "very-secret"})
    assert "very-secret" not in str(caught.value)


def test_secrets_stay_out_of_reprs():
    settings = resolve_client_settings(api_key="k", api_secret="very-secret", env={})
    client = Client(api_key="k", api_secret="very-secret", env={})
    assert "very-secret" not in repr(settings) + repr(client) + repr(client._transport.tokens)


def test_numeric_settings_from_the_environment():
    client = Client(env={"VL_API_TIMEOUT_S": "5", "VL_API_MAX_RETRIES": "0"})
    assert client._transport.timeout_s == 5
    assert client._transport.retry.max_attempts == 1  # no retry: the first attempt only
    with pytest.raises(errors.ConfigurationError, match="VL_API_MAX_RETRIES"):
        Client(env={"VL_API_MAX_RETRIES": "many"})


@pytest.mark.parametrize(
    ("cache_dir", "says"), [("", "cache_dir is empty"), ("  ", "cache_dir is empty"), ("~no-such-user-x/c", "~user")]
)
def test_a_cache_dir_that_names_no_folder_is_refused_not_replaced(cache_dir, says):
    """ "" is not the default folder (nor the current one): a setting that went missing says so."""
    with pytest.raises(errors.ConfigurationError, match=says):
        resolve_cache_dir(cache_dir, env={})


def test_cache_dir_resolution(tmp_path):
    assert resolve_cache_dir(tmp_path / "x", env={}) == str(tmp_path / "x")
    assert resolve_cache_dir(env={"VL_DATASETS_CACHE": "s3://b/p/"}) == "s3://b/p"
    assert resolve_cache_dir(env={"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "vl_datasets")


@pytest.mark.parametrize("under", ["", "cache"], ids=["is-a-file", "under-a-file"])
def test_a_cache_dir_that_is_no_folder_is_refused_by_name(tmp_path, under):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("mine")
    root = blocker / under if under else blocker
    with pytest.raises(errors.ConfigurationError) as caught:
        resolve_cache_dir(root, env={})
    assert str(root) in str(caught.value) and "cache_dir" in str(caught.value)
    with pytest.raises(errors.ConfigurationError, match="VL_DATASETS_CACHE"):
        resolve_cache_dir(env={"VL_DATASETS_CACHE": str(root)})
    with pytest.raises(errors.ConfigurationError, match="cache_dir or VL_DATASETS_CACHE"):
        resolve_cache_dir(env={"XDG_CACHE_HOME": str(blocker)})  # the default folder under a file
    assert blocker.read_text() == "mine", "the file in the cache's way was touched"
