"""Datasets at rest as the service serves them: the contract's fields, dataset.json, broken folders."""

from __future__ import annotations

import json
import re
import uuid

import requests

from tests.server.helpers import (
    api,
    token,
)


def test_dataset_object_has_the_contract_fields(local_vl):
    answer = requests.get(api(local_vl, "ds-ready"))
    body = answer.json()
    assert answer.headers["Content-Type"] == "application/json"
    assert set(body) >= {
        "id",
        "display_name",
        "description",
        "created_at",
        "status_new",
        "status",
        "progress",
        "n_images",
        "n_videos",
        "n_objects",
        "fatal_error_msg",
    }
    assert body["id"] == "ds-ready"
    assert body["status_new"] == "READY"
    assert body["n_images"] == 8
    assert body["n_videos"] == 0
    assert body["n_objects"] == 0
    assert body["progress"] == 100
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", body["created_at"])  # no time zone
    assert requests.get(api(local_vl, "ds-indexing")).json()["status_new"] == "INDEXING"


def test_snapshot_list_holds_the_current_snapshot_with_the_image_count(local_vl, dataset_root):
    answer = requests.get(api(local_vl, "ds-ready/snapshot"))
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    (snapshot,) = answer.json()
    assert set(snapshot) == {"snapshot_id", "n_images", "is_current", "reason"}
    assert uuid.UUID(snapshot["snapshot_id"])
    assert (snapshot["n_images"], snapshot["is_current"], snapshot["reason"]) == (8, True, "creation")
    assert requests.get(api(local_vl, "ds-ready/snapshot")).json() == [snapshot]  # the same id each time
    (dataset_root / "ds-ready" / "dataset.json").write_text(json.dumps({"n_images": 5}))
    assert requests.get(api(local_vl, "ds-ready/snapshot")).json()[0]["n_images"] == 5  # as the dataset object
    assert requests.get(api(local_vl, "ds-indexing/snapshot")).json()[0]["snapshot_id"] != snapshot["snapshot_id"]


def test_snapshot_list_is_refused_as_the_other_routes_refuse(local_vl, local_vl_auth):
    unknown = requests.get(api(local_vl, "nope/snapshot"))
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["detail"]
    assert requests.post(api(local_vl, "ds-ready/snapshot")).status_code == 405
    assert requests.get(api(local_vl_auth, "ds-ready/snapshot")).status_code == 401
    signed = requests.get(api(local_vl_auth, "ds-ready/snapshot"), headers={"Authorization": f"Bearer {token()}"})
    assert signed.status_code == 200
    local_vl.faults.fail_next("snapshot", 503)
    assert requests.get(api(local_vl, "ds-ready/snapshot")).status_code == 503
    assert local_vl.count("snapshot", status=503) == 1


def test_dataset_json_fields_win_and_changes_are_seen(local_vl, dataset_root):
    (dataset_root / "ds-indexing" / "dataset.json").write_text(
        json.dumps({"display_name": "birds", "status_new": "READ ONLY"})
    )
    body = requests.get(api(local_vl, "ds-indexing")).json()
    assert body["display_name"] == "birds"
    assert body["status_new"] == "READ ONLY"
    start = api(local_vl, "ds-indexing/export_context_async")
    params = {"file_name": "export.zip", "export_format": "json"}
    assert requests.get(start, params=params).status_code == 409
    (dataset_root / "ds-indexing" / "dataset.json").write_text(json.dumps({"status_new": "ready"}))
    assert requests.get(start, params=params).status_code == 200


def test_unreadable_dataset_is_a_500_and_the_service_goes_on(local_vl, dataset_root):
    (dataset_root / "broken").mkdir()
    (dataset_root / "broken" / "metadata.json").write_text("{not json")
    broken = requests.get(api(local_vl, "broken"))
    assert broken.status_code == 500
    assert isinstance(broken.json()["detail"], str)
    assert requests.get(api(local_vl, "ds-ready")).status_code == 200
