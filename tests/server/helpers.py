"""Plain-HTTP calls on the local service, as any client of the contract makes them, and tokens signed by hand."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import jwt
import requests

KEY, SECRET = "key-123", "secret-456-0123456789abcdef0123456789"
# The columns of a Parquet export of the service, as the docs' pandas snippets read them.
PARQUET_COLUMNS = {
    "media_id",
    "media_type",
    "file_name",
    "file_path",
    "file_size",
    "height",
    "width",
    "uniqueness_score",
    "url",
    "cluster_id",
    "image_filename",
    "metadata_items",
}


def api(service, path: str) -> str:
    return f"{service.url}/api/v1/dataset/{path}"


def items_of(root: Path, dataset_id: str = "ds-ready") -> list[dict]:
    return json.loads((root / dataset_id / "metadata.json").read_text())["media_items"]


def poll(service, task_id: str, dataset_id: str = "ds-ready", **kwargs) -> dict:
    answer = requests.get(api(service, f"{dataset_id}/export_status"), params={"export_task_id": task_id}, **kwargs)
    assert answer.status_code == 200, answer.text
    return answer.json()


def finished(service, start: requests.Response, **kwargs) -> dict:
    """Poll a started export until it ends: a bounded loop, no sleeping."""
    assert start.status_code == 200, start.text
    for _ in range(50):
        task = poll(service, start.json()["id"], **kwargs)
        if task["status"] not in ("INIT", "IN_PROGRESS"):
            return task
    raise AssertionError("the export never finished")


def start_full(service, **params) -> requests.Response:
    """Start a full export with the parameters the docs show as required (overridable)."""
    return requests.get(
        api(service, "ds-ready/export_context_async"),
        params={"file_name": "export.zip", "export_format": "json", **params},
    )


def start_selective(service, body, **params) -> requests.Response:
    return requests.post(
        api(service, "ds-ready/export_entities_async"), params={"export_format": "json", **params}, json=body
    )


def download(service, task: dict, **kwargs) -> requests.Response:
    url = task["download_uri"]
    return requests.get(url if url.startswith("http") else service.url + url, **kwargs)


def open_zip(service, task: dict) -> zipfile.ZipFile:
    answer = download(service, task)
    assert answer.status_code == 200, answer.text
    return zipfile.ZipFile(io.BytesIO(answer.content))


def token(now: float | None = None, *, kid=KEY, sub=KEY, secret=SECRET, iss="sdk", life=600, drop=()) -> str:
    now = int(time.time() if now is None else now)
    claims = {k: v for k, v in {"sub": sub, "iat": now, "exp": now + life, "iss": iss}.items() if k not in drop}
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid})
