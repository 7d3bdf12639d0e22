"""Query and body parsing as FastAPI and pydantic v2 do it, and their answers byte for byte.

The expected bytes are FastAPI's: Starlette's JSONResponse (compact separators, UTF-8), pydantic's
error entries (type, loc, msg, input[, ctx]). The accepted bool strings are pydantic-core's
``str_as_bool`` (checked against pydantic 2.14): ASCII case-insensitive, nothing stripped.
"""

from __future__ import annotations

import json

import pytest
import requests

from tests.server.helpers import api, finished, items_of, open_zip, poll, start_full, start_selective
from vl_datasets.server.validation import FALSE_STRINGS, TRUE_STRINGS, parse_bool

TRUE = ["true", "True", "TRUE", "1", "yes", "YES", "on", "On", "t", "T", "y", "Y", "tRuE"]
FALSE = ["false", "False", "0", "no", "No", "off", "OFF", "f", "F", "n", "N"]
NEITHER = ["", " true", "true ", "\ttrue", "2", "10", "00", "1.0", "tru", "yess", "none", "null", "\uff54rue"]


def _start(service, **params) -> requests.Response:
    return requests.get(api(service, "ds-ready/export_context_async"), params=params)


def test_bool_strings_are_pydantics():
    assert {"1", "t", "true", "y", "yes", "on"} == TRUE_STRINGS
    assert {"0", "f", "false", "n", "no", "off"} == FALSE_STRINGS
    for value in TRUE:
        assert parse_bool(value) is True, value
    for value in FALSE:
        assert parse_bool(value) is False, value
    for value in NEITHER:
        assert parse_bool(value) is None, repr(value)


@pytest.mark.parametrize("value,images", [(True, True), ("1", True), ("yes", True), ("on", True), (False, False)])
def test_include_images_as_pythons_requests_sends_it(quick_vl, value, images):
    # requests writes a Python bool as "True"/"False": the platform takes it, so must we.
    start = _start(quick_vl, file_name="export.zip", export_format="json", include_images=value)
    assert start.status_code == 200, start.text
    with open_zip(quick_vl, finished(quick_vl, start)) as zf:
        n_images = sum(name.startswith("images/") for name in zf.namelist())
    assert n_images == (8 if images else 0), f"include_images={value!r} gave {n_images} images"


def test_missing_file_name_is_fastapis_422_byte_for_byte(local_vl):
    answer = _start(local_vl, export_format="parquet", include_images="true")
    assert answer.status_code == 422
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.content == (
        b'{"detail":[{"type":"missing","loc":["query","file_name"],"msg":"Field required","input":null}]}'
    )
    assert local_vl.count("export", status=422) == 1


def test_every_parameter_error_is_listed_in_declaration_order(local_vl):
    answer = _start(local_vl, export_format="csv", include_images="maybe")
    assert answer.status_code == 422
    assert answer.content == (
        b'{"detail":['
        b'{"type":"missing","loc":["query","file_name"],"msg":"Field required","input":null},'
        b'{"type":"enum","loc":["query","export_format"],"msg":"Input should be \'json\' or \'parquet\'",'
        b'"input":"csv","ctx":{"expected":"\'json\' or \'parquet\'"}},'
        b'{"type":"bool_parsing","loc":["query","include_images"],'
        b'"msg":"Input should be a valid boolean, unable to interpret input","input":"maybe"}'
        b"]}"
    )
    no_format = _start(local_vl, file_name="export.zip").json()["detail"]
    assert no_format == [{"type": "missing", "loc": ["query", "export_format"], "msg": "Field required", "input": None}]


@pytest.mark.parametrize("value", NEITHER[:5])
def test_unparsable_bools_are_refused(local_vl, value):
    answer = _start(local_vl, file_name="export.zip", export_format="json", include_images=value)
    assert answer.status_code == 422
    assert answer.json()["detail"] == [
        {
            "type": "bool_parsing",
            "loc": ["query", "include_images"],
            "msg": "Input should be a valid boolean, unable to interpret input",
            "input": value,
        }
    ]


def test_enum_values_are_exact_and_the_last_repeated_value_wins(local_vl):
    upper = _start(local_vl, file_name="export.zip", export_format="JSON")
    assert upper.status_code == 422
    assert upper.json()["detail"][0]["input"] == "JSON"
    # Starlette's QueryParams keep the last value of a repeated name.
    repeated = requests.get(
        api(local_vl, "ds-ready/export_context_async") + "?file_name=a.zip&export_format=csv&export_format=parquet"
    )
    assert repeated.status_code == 200, repeated.text
    # An empty value is a value: a str takes it, an enum does not.
    empty = _start(local_vl, file_name="", export_format="")
    assert [e["loc"][-1] for e in empty.json()["detail"]] == ["export_format"]


def test_unofficial_sdk_options_pass_through(local_vl):
    vql = json.dumps([{"id": "label_filter", "labels": {"op": "one_of", "value": ["cat"]}}])
    answer = _start(
        local_vl, file_name="e.zip", export_format="json", include_images=False, entity_type="IMAGES", vql=vql
    )
    assert answer.status_code == 200, answer.text


def test_answers_are_compact_json_in_model_field_order(local_vl):
    start = start_full(local_vl)
    assert start.headers["Content-Type"] == "application/json"
    assert start.content.startswith(b'{"id":"'), start.content
    assert b": " not in start.content
    assert b", " not in start.content
    assert list(start.json()) == [
        "id",
        "dataset_id",
        "created_at",
        "download_uri",
        "progress",
        "status",
        "entities_count",
        "result_message",
    ]
    assert b'"download_uri":null,"progress":0.0,"status":"INIT"' in start.content
    dataset = requests.get(api(local_vl, "ds-ready"))
    assert dataset.content.startswith(b'{"id":"ds-ready","display_name":'), dataset.content
    assert b": " not in dataset.content
    missing_task = requests.get(api(local_vl, "ds-ready/export_status"))
    assert missing_task.content == (
        b'{"detail":[{"type":"missing","loc":["query","export_task_id"],"msg":"Field required","input":null}]}'
    )
    not_found = requests.get(f"{local_vl.url}/nowhere")
    assert not_found.content == b'{"detail":"Not Found"}'


def test_non_ascii_is_written_as_utf8_not_escaped(tmp_path):
    from vl_datasets.testing import LocalVisualLayer, write_dataset

    write_dataset(tmp_path, "ds-ready", n_items=1)
    (tmp_path / "ds-ready" / "dataset.json").write_text(json.dumps({"display_name": "chats \u00e9t\u00e9"}))
    with LocalVisualLayer(tmp_path) as service:
        answer = requests.get(api(service, "ds-ready"))
    assert '"display_name":"chats \u00e9t\u00e9"'.encode() in answer.content


@pytest.mark.parametrize(
    "data,content_type,expected",
    [
        (
            b"{nope",
            "application/json",
            {
                "type": "json_invalid",
                "loc": ["body", 1],
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": "Expecting property name enclosed in double quotes"},
            },
        ),
        (b"", "application/json", {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}),
        (b"null", "application/json", {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}),
        (
            b'{"media_ids": ["a"]}',
            "application/x-www-form-urlencoded",  # curl -d without -H: FastAPI does not read it as JSON
            {
                "type": "model_attributes_type",
                "loc": ["body"],
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": '{"media_ids": ["a"]}',
            },
        ),
        (
            b'{"media_ids": ["a"], "cluster_ids": ["b"]}',
            "application/vnd.api+json",
            {
                "type": "value_error",
                "loc": ["body"],
                "msg": "Value error, give exactly one of media_ids or cluster_ids",
                "input": {"media_ids": ["a"], "cluster_ids": ["b"]},
                "ctx": {"error": {}},
            },
        ),
    ],
)
def test_body_errors_are_fastapis(local_vl, data, content_type, expected):
    answer = requests.post(
        api(local_vl, "ds-ready/export_entities_async"),
        params={"export_format": "json"},
        data=data,
        headers={"Content-Type": content_type},
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == [expected]


def test_body_that_is_not_text_is_a_400_and_json_errors_stop_first(local_vl):
    garbled = requests.post(
        api(local_vl, "ds-ready/export_entities_async"),
        params={"export_format": "json"},
        data=b"\xff\xfe\xfa",
        headers={"Content-Type": "application/json"},
    )
    assert garbled.status_code == 400
    assert garbled.content == b'{"detail":"There was an error parsing the body"}'
    # FastAPI decodes the body before it validates the query: a bad body hides a bad query.
    both = requests.post(
        api(local_vl, "ds-ready/export_entities_async"),
        params={"export_format": "csv"},
        data=b"[",
        headers={"Content-Type": "application/json"},
    )
    assert [e["type"] for e in both.json()["detail"]] == ["json_invalid"]
    # Otherwise query errors come first, then the body's.
    later = start_selective(local_vl, {"media_ids": [1]}, export_format="csv")
    assert [e["loc"] for e in later.json()["detail"]] == [["query", "export_format"], ["body", "media_ids", 0]]


def test_selective_export_takes_a_null_field_as_unset(local_vl, dataset_root):
    wanted = items_of(dataset_root)[2]["media_id"]
    start = start_selective(local_vl, {"media_ids": [wanted], "cluster_ids": None}, include_images="yes")
    assert start.status_code == 200, start.text
    task = finished(local_vl, start)
    assert task["entities_count"] == 1
    with open_zip(local_vl, task) as zf:
        assert sum(name.startswith("images/") for name in zf.namelist()) == 1


def test_poll_of_an_empty_task_id_is_a_404_not_a_422(local_vl):
    # "" is a value for a str parameter: FastAPI passes it on, and no task has that id.
    answer = requests.get(api(local_vl, "ds-ready/export_status"), params={"export_task_id": ""})
    assert answer.status_code == 404
    task = poll(local_vl, start_full(local_vl).json()["id"])
    assert task["status"] == "IN_PROGRESS"


def test_a_body_nested_past_what_json_reads_is_answered_not_dropped(local_vl):
    """50,000 brackets (100 KB, under the body limit) made json.loads recurse out: the connection
    was closed without an answer, on every route, a GET's ignored body included."""
    body = b"[" * 50_000 + b"]" * 50_000
    headers = {"Content-Type": "application/json"}
    start = requests.post(
        api(local_vl, "ds-ready/export_entities_async"), params={"export_format": "json"}, data=body, headers=headers
    )
    assert start.status_code == 400 and start.json() == {"detail": "There was an error parsing the body"}
    assert requests.get(api(local_vl, "ds-ready"), data=body, headers=headers).status_code == 200
