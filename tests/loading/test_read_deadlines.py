"""Image reads from storage that misbehaves, set up as a user sets them (the ``VL_DATASETS_READ_*``
variables) against real local servers: a 503 storm costs the policy's attempts at the server and no
more, however many retry layers sit between (botocore, s3fs, ours); a server that hangs or trickles
a byte at a time is cut at the image's deadline; the typed error says which bound ran out."""

from __future__ import annotations

import logging

import pytest

from tests.loading.image_server import ImageServer
from tests.loading.s3_server import serving_folder
from vl_datasets import RetryPolicy, errors
from vl_datasets.backoff import image_read_policy
from vl_datasets.loading.dataset import VisualLayerDataset


def open_remote(export, root, tmp_path, **options):
    return VisualLayerDataset.from_export(export, images_root=root, image_size=8, cache_dir=tmp_path / "c", **options)


def test_the_read_policy_is_set_by_environment_and_checked(monkeypatch):
    assert image_read_policy(env={}).max_attempts == 6
    assert (image_read_policy(env={}).attempt_timeout_s, image_read_policy(env={}).deadline_s) == (60.0, 180.0)
    env = {"VL_DATASETS_READ_ATTEMPTS": "2", "VL_DATASETS_READ_TIMEOUT_S": "1.5", "VL_DATASETS_READ_DEADLINE_S": "4"}
    policy = image_read_policy(env=env)
    assert (policy.max_attempts, policy.attempt_timeout_s, policy.deadline_s) == (2, 1.5, 4.0)
    with pytest.raises(errors.ConfigurationError, match="VL_DATASETS_READ_DEADLINE_S"):
        image_read_policy(env={"VL_DATASETS_READ_DEADLINE_S": "soon"})
    with pytest.raises(errors.ConfigurationError, match="deadline_s"):
        image_read_policy(env={"VL_DATASETS_READ_DEADLINE_S": "-1"})
    with pytest.raises(errors.ConfigurationError, match="max_attempts"):
        image_read_policy(env={"VL_DATASETS_READ_ATTEMPTS": "0"})
    with pytest.raises(errors.ConfigurationError, match="VL_DATASETS_READ_ATTEMPTS"):
        image_read_policy(env={"VL_DATASETS_READ_ATTEMPTS": "2.5"})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("VL_DATASETS_READ_TIMEOUT_S", "inf"),
        ("VL_DATASETS_READ_DEADLINE_S", "inf"),
        ("VL_DATASETS_READ_TIMEOUT_S", "nan"),
    ],
)
def test_an_unbounded_read_setting_is_refused_when_the_dataset_opens_not_by_every_read(
    split_export, tmp_path, monkeypatch, variable, value
):
    """ "inf" reads as "no limit" to a user, and float() takes it; a socket cannot wait forever, so
    every image would fail (and be skipped with on_error="skip") as if it were damaged."""
    export, source = split_export
    monkeypatch.setenv(variable, value)
    with ImageServer(source) as server, pytest.raises(errors.ConfigurationError, match=f"{variable}.*finite"):
        open_remote(export, server.url, tmp_path, on_error="skip")
    assert server.requests == [], "an image was asked for under a setting that cannot work"


def test_the_api_clients_timeout_and_retries_are_finite(monkeypatch):
    from vl_datasets import Client

    for variable, value in (("VL_API_TIMEOUT_S", "inf"), ("VL_API_TIMEOUT_S", "nan"), ("VL_API_MAX_RETRIES", "inf")):
        with pytest.raises(errors.ConfigurationError, match=variable):
            Client("http://127.0.0.1:9", env={variable: value})
    with pytest.raises(errors.ConfigurationError, match="finite"):
        Client("http://127.0.0.1:9", env={}, timeout_s=float("inf"))


def test_a_503_storm_on_http_costs_the_policy_attempts(split_export, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "3")
    export, source = split_export
    with ImageServer(source) as server:
        ds = open_remote(export, server.url, tmp_path)
        server.fail_next(100, 503)
        with pytest.raises(errors.ImageReadError) as caught:
            ds[0]
        assert server.count() == 3, f"the server saw {server.count()} GETs for a policy of 3 attempts"
    message = str(caught.value)
    assert "gave up after 3 of 3 attempts" in message
    assert ds.media_ids[0] in message and "503" in message
    assert caught.value.attempts == 3
    assert isinstance(caught.value, errors.ImageDecodeError)  # what callers caught before still catches it


def test_read_retry_given_to_the_dataset_is_the_policy_its_reads_follow(split_export, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "5")  # the option wins over the environment
    export, source = split_export
    waits: list[float] = []
    policy = RetryPolicy(max_attempts=2, base_s=0.25, sleep=waits.append, random=lambda: 1.0)
    with ImageServer(source) as server:
        ds = open_remote(export, server.url, tmp_path, read_retry=policy)
        server.fail_next(100, 503)
        with pytest.raises(errors.ImageReadError) as caught:
            ds[0]
        assert server.count() == 2, f"the server saw {server.count()} GETs for read_retry of 2 attempts"
    assert "gave up after 2 of 2 attempts" in str(caught.value)
    assert waits == [0.25], "the policy's own sleep and backoff were not the ones used"
    with pytest.raises(errors.ConfigurationError):
        RetryPolicy(max_attempts=0)


def test_a_trickling_http_server_is_cut_at_the_deadline(split_export, tmp_path, monkeypatch):
    """A byte every 0.5 s never trips a per-read socket timeout: only the image's deadline stops it."""
    monkeypatch.setenv("VL_DATASETS_READ_DEADLINE_S", "2")
    export, source = split_export
    with ImageServer(source, lifetime_s=120) as server:
        ds = open_remote(export, server.url, tmp_path)
        server.trickle_next(1, every_s=0.5)
        with pytest.raises(errors.ImageReadError) as caught:
            ds[0]
        assert server.count() == caught.value.attempts == 1
        assert ds[1][0].shape == (3, 8, 8), "the next image did not read once the trickle stopped"
    assert "at the 2 s deadline" in str(caught.value)
    assert "gave up after 1 of 6 attempts" in str(caught.value)


def test_a_hanging_http_server_gets_each_attempt_its_timeout_and_the_image_its_deadline(
    split_export, tmp_path, monkeypatch
):
    monkeypatch.setenv("VL_DATASETS_READ_TIMEOUT_S", "0.5")
    monkeypatch.setenv("VL_DATASETS_READ_DEADLINE_S", "2")
    export, source = split_export
    with ImageServer(source, lifetime_s=120) as server:
        ds = open_remote(export, server.url, tmp_path)
        server.hang_next(100)
        with pytest.raises(errors.ImageReadError) as caught:
            ds[0]
        seen = server.count()
    assert seen == caught.value.attempts >= 2, "an attempt was not cut at its own timeout"
    assert "at the 2 s deadline" in str(caught.value)
    assert "TimeoutError" in str(caught.value)


@pytest.fixture
def slow_down_s3(split_export, monkeypatch):
    with serving_folder(split_export[1], monkeypatch) as server:
        yield server


def test_a_slowdown_storm_on_s3_costs_the_policy_attempts_not_25(split_export, slow_down_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "3")
    export, _ = split_export
    server = slow_down_s3
    options = {"endpoint_url": server.endpoint}
    ds = open_remote(export, f"s3://{server.bucket}/photos", tmp_path, storage_options=options)
    before = server.object_requests()
    server.slow_down_next(100)
    with pytest.raises(errors.ImageReadError) as caught:
        ds[0]
    seen = server.requests[before:]
    assert seen == [f"GET /{server.bucket}/photos/{ds.table.column('file_path')[0].as_py()}"] * 3, (
        f"S3 saw {seen} for a policy of 3 attempts: a retry layer multiplies, or a HEAD precedes each GET"
    )
    assert "gave up after 3 of 3 attempts" in str(caught.value)
    server.slow_down_next(2)  # a short storm passes within the attempts
    assert ds[1][0].shape == (3, 8, 8)


def test_botocore_retries_set_by_the_user_are_kept_and_said_to_multiply(
    split_export, slow_down_s3, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("VL_DATASETS_READ_ATTEMPTS", "2")
    export, _ = split_export
    server = slow_down_s3
    botocore_retries = {"total_max_attempts": 2, "mode": "standard"}
    options = {"endpoint_url": server.endpoint, "config_kwargs": {"retries": botocore_retries}}
    ds = open_remote(export, f"s3://{server.bucket}/photos", tmp_path, storage_options=options)
    ds.images._source.retry = ds.images._source.retry.replace(sleep=lambda s: None)
    before = server.object_requests()
    server.slow_down_next(100)
    with caplog.at_level(logging.WARNING, logger="vl_datasets"), pytest.raises(errors.ImageReadError):
        ds[0]
    assert server.object_requests() - before == 4  # 2 of ours, each 2 of botocore's: as the warning says
    assert any("multiply" in r.getMessage() for r in caplog.records)
