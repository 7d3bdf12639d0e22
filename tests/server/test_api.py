"""The API origin's errors, shaped as FastAPI shapes them: JSON details, 422 lists."""

from __future__ import annotations

import pytest
import requests

from tests.server.helpers import (
    api,
    items_of,
    start_full,
    start_selective,
    token,
)


def test_404_409_405_are_json_details(local_vl):
    for answer in (
        requests.get(api(local_vl, "nope")),
        requests.get(
            api(local_vl, "nope/export_context_async"), params={"file_name": "x.zip", "export_format": "json"}
        ),
        requests.get(f"{local_vl.url}/api/v2/anything"),
        requests.get(api(local_vl, "../../etc")),
    ):
        assert answer.status_code == 404, answer.url
        assert isinstance(answer.json()["detail"], str), answer.url
        assert answer.headers["Content-Type"] == "application/json", answer.url
    busy = requests.get(
        api(local_vl, "ds-indexing/export_context_async"), params={"file_name": "x.zip", "export_format": "json"}
    )
    assert busy.status_code == 409
    assert "READY" in busy.json()["detail"]
    wrong = requests.post(api(local_vl, "ds-ready"))
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET"
    assert wrong.json()["detail"]
    assert requests.delete(api(local_vl, "ds-ready/export_entities_async")).status_code == 405
    unknown_task = requests.get(api(local_vl, "ds-ready/export_status"), params={"export_task_id": "x"})
    assert unknown_task.status_code == 404
    assert "x" in unknown_task.json()["detail"]


@pytest.mark.parametrize(
    "params,body,loc",
    [
        ({"export_format": "csv"}, {"media_ids": ["a"]}, ["query", "export_format"]),
        ({"include_images": "maybe"}, {"media_ids": ["a"]}, ["query", "include_images"]),
        ({}, None, ["body"]),
        ({}, {"media_ids": ["a"], "cluster_ids": ["b"]}, ["body"]),
        ({}, {"other": ["a"]}, ["body"]),
        ({}, ["a"], ["body"]),
        ({}, {"media_ids": "a"}, ["body", "media_ids"]),
        ({}, {"cluster_ids": ["a", 3]}, ["body", "cluster_ids", 1]),
    ],
)
def test_422_details_are_fastapi_lists(local_vl, params, body, loc):
    answer = start_selective(local_vl, body, **params)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail[0]["loc"] == loc
    assert set(detail[0]) >= {"loc", "msg", "type"}


def test_422_for_a_body_that_is_not_json_and_a_missing_task_id(local_vl):
    garbage = requests.post(
        api(local_vl, "ds-ready/export_entities_async"), data=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert garbage.status_code == 422
    assert garbage.json()["detail"][0]["type"] == "json_invalid"
    missing = requests.get(api(local_vl, "ds-ready/export_status"))
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["query", "export_task_id"]
    assert start_full(local_vl, export_format="xml").json()["detail"][0]["loc"] == ["query", "export_format"]


def test_an_encoded_slash_is_decoded_before_routing_as_in_starlette(local_vl):
    task_id = start_full(local_vl).json()["id"]
    # uvicorn decodes the path once and Starlette routes what it gets: %2F is a "/".
    status = requests.get(api(local_vl, "ds-ready%2Fexport_status"), params={"export_task_id": task_id})
    assert status.status_code == 200, status.text
    assert (status.json()["id"], status.json()["dataset_id"]) == (task_id, "ds-ready")
    assert requests.get(api(local_vl, "ds-ready/export%5Fstatus"), params={"export_task_id": task_id}).ok
    no_route = requests.get(api(local_vl, "ds-ready%2Fnope"))
    assert (no_route.status_code, no_route.json()) == (404, {"detail": "Not Found"})
    # Another dataset's route is never given this task, whatever the path's spelling.
    other = requests.get(api(local_vl, "ds-indexing%2Fexport_status"), params={"export_task_id": task_id})
    assert (other.status_code, other.json()) == (404, {"detail": f"Export task {task_id} not found"})
    # Decoded once only: %252D is the id "ds%2Dready", not ds-ready, and the message says so.
    assert requests.get(api(local_vl, "ds%2Dready")).json()["id"] == "ds-ready"
    twice = requests.get(api(local_vl, "ds%252Dready"))
    assert (twice.status_code, twice.json()) == (404, {"detail": "Dataset ds%2Dready not found"})


def test_a_trailing_slash_is_redirected_as_fastapi_does(local_vl):
    first = requests.get(api(local_vl, "ds-ready/"), allow_redirects=False)
    assert (first.status_code, first.headers["Location"], first.content) == (307, api(local_vl, "ds-ready"), b"")
    assert "Content-Type" not in first.headers
    local_vl.faults.fail_next("dataset", 503)  # a redirect is no call of the endpoint: the fault waits
    assert requests.get(api(local_vl, "ds-ready//")).status_code == 503
    followed = requests.get(api(local_vl, "ds-ready/"))
    assert followed.json()["id"] == "ds-ready"
    assert [r.status_code for r in followed.history] == [307]
    assert [(r.endpoint, r.status) for r in local_vl.requests[-2:]] == [(None, 307), ("dataset", 200)]
    # The method, query and body go along (requests resends them on a 307).
    media_id = items_of(local_vl.root)[0]["media_id"]
    selective = requests.post(
        api(local_vl, "ds-ready/export_entities_async/"),
        params={"export_format": "json"},
        json={"media_ids": [media_id]},
    )
    assert selective.status_code == 200, selective.text
    assert selective.history[0].headers["Location"].endswith("/export_entities_async?export_format=json")
    # Only to a path a route takes; and to the id asked for, which Starlette's own Location would
    # decode a second time (ds%252Dready/ -> ds%2Dready, which is ds-ready).
    for path in ("ds-ready/nope/", "ds-ready%2Fnope/", "/"):
        assert requests.get(api(local_vl, path), allow_redirects=False).status_code == 404, path
    assert requests.get(f"{local_vl.url}/api/v1/nothing/", allow_redirects=False).status_code == 404
    twice = requests.get(api(local_vl, "ds%252Dready/"))
    assert twice.history[0].headers["Location"] == api(local_vl, "ds%252Dready")
    assert (twice.status_code, twice.json()) == (404, {"detail": "Dataset ds%2Dready not found"})


def test_a_redirected_request_keeps_its_token(local_vl_auth):
    answer = requests.get(api(local_vl_auth, "ds-ready/"), headers={"Authorization": f"Bearer {token()}"})
    assert (answer.status_code, [r.status_code for r in answer.history]) == (200, [307])
