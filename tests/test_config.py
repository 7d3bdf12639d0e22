"""Settings resolution and record parsing: the variants the contract says to accept."""

from __future__ import annotations

import pytest

from vl_datasets import Client, errors
from vl_datasets.config import normalize_base_url, resolve_cache_dir, resolve_client_settings
from vl_datasets.records import DatasetInfo, ExportTask, normalize_status
from vl_datasets.api.transport import parse_retry_after


@pytest.mark.parametrize("given,expected", [
    ("https://app.visual-layer.com", "https://app.visual-layer.com"),
    ("https://app.visual-layer.com/api/v1/", "https://app.visual-layer.com"),
    ("localhost:2080", "http://localhost:2080"),
    ("10.0.0.5:2080", "https://10.0.0.5:2080"),
    ("http://onprem:2080/", "http://onprem:2080"),
])
def test_base_url_forms(given, expected):
    assert normalize_base_url(given) == expected


def test_bad_base_url_is_a_configuration_error():
    with pytest.raises(errors.ConfigurationError, match="ftp"):
        normalize_base_url("ftp://host")


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
    assert settings.token == "t" and settings.api_secret is None


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
    assert client._transport.timeout_s == 5 and client._transport.retry.max_retries == 0
    with pytest.raises(errors.ConfigurationError, match="VL_API_MAX_RETRIES"):
        Client(env={"VL_API_MAX_RETRIES": "many"})


def test_cache_dir_resolution(tmp_path):
    assert resolve_cache_dir(tmp_path / "x", env={}) == str(tmp_path / "x")
    assert resolve_cache_dir(env={"VL_DATASETS_CACHE": "s3://b/p/"}) == "s3://b/p"
    assert resolve_cache_dir(env={"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "vl_datasets")


@pytest.mark.parametrize("raw,expected", [("READ ONLY", "READ_ONLY"), ("read_only", "READ_ONLY"),
                                          ("Partial Index", "PARTIAL_INDEX"), ("CANCELLED", "CANCELED")])
def test_status_spellings(raw, expected):
    assert normalize_status(raw) == expected


def test_dataset_prefers_status_new_over_legacy_status():
    info = DatasetInfo.from_json({"id": "d", "status_new": "Ready", "status": "INDEXING", "n_images": 3,
                                  "created_at": "2025-02-10T14:41:14.390429"})
    assert info.ready and info.n_images == 3 and info.created_at.year == 2025
    assert DatasetInfo.from_json({"id": "d", "status": "INDEXING"}).status == "INDEXING"


def test_export_task_variants():
    minimal = ExportTask.from_json({"id": "t"}, dataset_id="d")
    assert minimal.status == "INIT" and minimal.dataset_id == "d" and not minimal.is_terminal
    real = ExportTask.from_json({"id": "t", "dataset_id": "d2", "created_at": "2025-02-10T14:41:14.390429",
                                 "download_uri": None, "progress": 0.0, "status": "INIT", "entities_count": 4203,
                                 "result_message": None}, dataset_id="d")
    assert real.dataset_id == "d2" and real.entities_count == 4203
    with pytest.raises(errors.ResponseValidationError):
        ExportTask.from_json({"status": "INIT"}, dataset_id="d")
    with pytest.raises(errors.ResponseValidationError):
        ExportTask.from_json(["not", "an", "object"], dataset_id="d")


def test_retry_after_forms():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
