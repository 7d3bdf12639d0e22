"""The API origin: dataset status, export start (full and selective), export status, /cdn redirect."""

from __future__ import annotations

import re
from typing import Any

import jwt

from .datasets import load_dataset
from .http import Handler

_ROUTES = [
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)$"), "dataset"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_context_async$"), "export"),
    ("POST", re.compile(r"^/api/v1/dataset/([^/]+)/export_entities_async$"), "selective_export"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_status$"), "export_status"),
    ("GET", re.compile(r"^/cdn/([^/]+)/images/([^/]+)/([^/]+)\.zip$"), "cdn"),
]


def _validation_error(field: str, msg: str, where: str = "query") -> list[dict]:
    return [{"loc": [where, field], "msg": msg, "type": "value_error"}]


class ApiHandler(Handler):
    origin = "api"

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        self.parse()
        for method, pattern, name in _ROUTES:
            match = pattern.match(self.route)
            if match is None:
                continue
            if method != self.command:
                return self.send_detail(405, "Method Not Allowed")
            self.endpoint = name
            forced = self.service.faults.take_forced(name)
            if forced is not None:
                return self.send_forced(forced)
            if name != "cdn" and (refusal := self._refuse_auth()) is not None:
                return self.send_detail(401, refusal)
            return getattr(self, f"_{name}")(*match.groups())
        self.send_detail(404, "Not Found")

    def _refuse_auth(self) -> str | None:
        """None when the request may proceed; else why it is refused (on-prem: never)."""
        key, secret = self.service.api_key, self.service.api_secret
        if key is None:
            return None
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "Not authenticated"
        token = header[len("Bearer "):]
        try:
            if jwt.get_unverified_header(token).get("kid") != key:
                return "Invalid token: unknown key id"
            claims = jwt.decode(token, secret, algorithms=["HS256"], issuer="sdk",
                                options={"require": ["exp", "iat", "sub", "iss"]})
        except jwt.ExpiredSignatureError:
            return "Token has expired"
        except jwt.InvalidTokenError:
            return "Invalid token"
        return None if claims.get("sub") == key else "Invalid token: wrong subject"

    def _dataset_or_404(self, dataset_id: str):
        dataset = load_dataset(self.service.root, dataset_id)
        if dataset is None:
            self.send_detail(404, f"Dataset {dataset_id} not found")
        return dataset

    def _dataset(self, dataset_id: str) -> None:
        if (dataset := self._dataset_or_404(dataset_id)) is not None:
            self.send_json(200, dataset.as_json())

    def _export_options(self) -> tuple[str, bool] | None:
        fmt = self.query.get("export_format", "json")
        images = self.query.get("include_images", "false")
        if fmt not in ("json", "parquet"):
            self.send_detail(422, _validation_error("export_format", "Input should be 'json' or 'parquet'"))
            return None
        if images not in ("true", "false"):
            self.send_detail(422, _validation_error("include_images", "Input should be a valid boolean"))
            return None
        return fmt, images == "true"

    def _start(self, dataset_id: str, select) -> None:
        dataset = self._dataset_or_404(dataset_id)
        if dataset is None:
            return
        options = self._export_options()
        if options is None:
            return
        if dataset.status != "READY":
            return self.send_detail(409, f"Dataset {dataset_id} is not in READY status (status: {dataset.status})")
        items = select(dataset.media_items)
        if items is None:
            return
        job = self.service.jobs.start(dataset, items, export_format=options[0], include_images=options[1])
        self.send_json(200, {"id": job.id} if self.service.minimal_start_response else self.service.task_json(job))

    def _export(self, dataset_id: str) -> None:
        self._start(dataset_id, list)

    def _selective_export(self, dataset_id: str) -> None:
        self._start(dataset_id, self._select)

    def _select(self, items: list[dict]) -> list[dict] | None:
        body = self.body_json
        keys = [k for k in ("media_ids", "cluster_ids") if isinstance(body, dict) and k in body]
        if len(keys) != 1:
            self.send_detail(422, _validation_error("media_ids", "Give exactly one of media_ids or cluster_ids",
                                                    "body"))
            return None
        wanted: Any = body[keys[0]]
        if not isinstance(wanted, list) or not all(isinstance(v, str) for v in wanted):
            self.send_detail(422, _validation_error(keys[0], "Input should be a list of strings", "body"))
            return None
        field = "media_id" if keys[0] == "media_ids" else "cluster_id"
        chosen = set(wanted)
        return [item for item in items if item.get(field) in chosen]

    def _export_status(self, dataset_id: str) -> None:
        task_id = self.query.get("export_task_id")
        if not task_id:
            return self.send_detail(422, _validation_error("export_task_id", "Field required"))
        job = self.service.jobs.get(task_id)
        if job is None or job.dataset_id != dataset_id:
            return self.send_detail(404, f"Export task {task_id} not found")
        self.send_json(200, self.service.task_json(self.service.jobs.poll(job), host=self.headers.get("Host")))

    def _cdn(self, dataset_id: str, task_id: str, file_task_id: str) -> None:
        job = self.service.jobs.get(task_id)
        if job is None or job.dataset_id != dataset_id or file_task_id != task_id or job.status != "COMPLETED":
            return self.send_detail(404, "Not Found")
        url = self.service.presign(job, host=self.headers.get("Host"))
        self.send(302, b"", "text/plain", {"Location": url})
