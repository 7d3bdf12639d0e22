"""The API origin: dataset status, export start (full and selective), export status, /cdn redirect.

Errors follow FastAPI, which the platform runs on: ``{"detail": "..."}``, and for 422 a list of
``{"type", "loc", "msg", "input"}``. Checks run in FastAPI's order: auth, then parameter
validation, then what the endpoint itself decides (404 dataset, 409 not READY).
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

from .archive import EXPORT_FORMATS
from .datasets import StoredDataset
from .handler import Handler

_ROUTES = [
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)$"), "dataset"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_context_async$"), "export"),
    ("POST", re.compile(r"^/api/v1/dataset/([^/]+)/export_entities_async$"), "selective_export"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_status$"), "export_status"),
    ("GET", re.compile(r"^/cdn/([^/]+)/images/([^/]+)/([^/]+)\.zip$"), "cdn"),
]
SELECTION_KEYS = ("media_ids", "cluster_ids")


def invalid(loc: list[Any], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    """One entry of a FastAPI 422 ``detail`` list."""
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


class ApiHandler(Handler):
    """Answers the contract's endpoints under /api/v1, and /cdn downloads (on-prem style)."""

    origin = "api"

    def refuse(
        self, status: int, message: Any, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Errors as FastAPI sends them: ``{"detail": message}``."""
        self.send_json(status, {"detail": message}, headers)

    def route_request(self) -> None:
        for method, pattern, name in _ROUTES:
            match = pattern.match(self.route)
            if match is None:
                continue
            if self.command != method:
                return self.refuse(405, "Method Not Allowed", headers={"Allow": method})
            self.endpoint = name
            forced = self.service.faults.take_forced(name)
            if forced is not None:
                return self.send_forced(forced)
            # /cdn is reached by following a redirect without the bearer: it needs none.
            if name != "cdn" and (refusal := self.service.auth_refusal(self.headers.get("Authorization"))):
                return self.refuse(401, refusal, headers={"WWW-Authenticate": "Bearer"})
            return getattr(self, f"_{name}")(*(unquote(group) for group in match.groups()))
        self.refuse(404, "Not Found")

    # -- endpoints -------------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> None:
        if (dataset := self._dataset_or_404(dataset_id)) is not None:
            self.send_json(200, dataset.as_json())

    def _export(self, dataset_id: str) -> None:
        export_format, include_images, errors = self._export_options()
        if errors:
            return self.refuse(422, errors)
        if (dataset := self._exportable(dataset_id)) is not None:
            self._start(dataset, dataset.media_items, export_format, include_images)

    def _selective_export(self, dataset_id: str) -> None:
        export_format, include_images, errors = self._export_options()
        selection, body_errors = self._selection()
        if errors or body_errors:
            return self.refuse(422, errors + body_errors)
        if (dataset := self._exportable(dataset_id)) is not None:
            key, wanted = selection
            field = "media_id" if key == "media_ids" else "cluster_id"
            self._start(
                dataset,
                [item for item in dataset.media_items if item.get(field) in wanted],
                export_format,
                include_images,
            )

    def _export_status(self, dataset_id: str) -> None:
        task_id = self.query.get("export_task_id")
        if not task_id:
            return self.refuse(422, [invalid(["query", "export_task_id"], "Field required", "missing")])
        job = self.service.jobs.get(task_id)
        if job is None or job.dataset_id != dataset_id:
            return self.refuse(404, f"Export task {task_id} not found")
        self.send_json(200, self.service.task_json(self.service.jobs.poll(job), host=self.headers.get("Host")))

    def _cdn(self, dataset_id: str, task_id: str, file_task_id: str) -> None:
        job = self.service.jobs.get(task_id)
        if job is None or job.dataset_id != dataset_id or file_task_id != task_id or job.status != "COMPLETED":
            return self.refuse(404, "Not Found")
        # Signed at each request: a client whose URL expired comes back here for a fresh one.
        self.send(302, b"", "text/plain", {"Location": self.service.presign(job, host=self.headers.get("Host"))})

    # -- shared steps ----------------------------------------------------------------------

    def _dataset_or_404(self, dataset_id: str) -> StoredDataset | None:
        dataset = self.service.datasets.get(dataset_id)
        if dataset is None:
            self.refuse(404, f"Dataset {dataset_id} not found")
        return dataset

    def _exportable(self, dataset_id: str) -> StoredDataset | None:
        """The dataset, or None once 404 or 409 has been answered."""
        dataset = self._dataset_or_404(dataset_id)
        if dataset is not None and not dataset.ready:
            self.refuse(409, f"Dataset {dataset_id} is not in READY status (status: {dataset.status})")
            return None
        return dataset

    def _start(
        self, dataset: StoredDataset, items: list[dict[str, Any]], export_format: str, include_images: bool
    ) -> None:
        state = self.service.jobs.start(dataset, items, export_format=export_format, include_images=include_images)
        # The docs show start answers that hold only the id: the option serves that variant.
        self.send_json(200, {"id": state.id} if self.service.minimal_start_response else self.service.task_json(state))

    def _export_options(self) -> tuple[str, bool, list[dict[str, Any]]]:
        """``export_format`` and ``include_images`` from the query, and the 422 entries if invalid."""
        errors = []
        export_format = self.query.get("export_format", "json")
        if export_format not in EXPORT_FORMATS:
            errors.append(
                invalid(["query", "export_format"], "Input should be 'json' or 'parquet'", "enum", export_format)
            )
        # Strictly lowercase true/false, as the contract says the client sends them.
        include_images = self.query.get("include_images", "false")
        if include_images not in ("true", "false"):
            errors.append(
                invalid(
                    ["query", "include_images"],
                    "Input should be a valid boolean, unable to interpret input",
                    "bool_parsing",
                    include_images,
                )
            )
        return export_format, include_images == "true", errors

    def _selection(self) -> tuple[tuple[str, set[str]], list[dict[str, Any]]]:
        """``(key, ids)`` of the selective export body, and the 422 entries if it is invalid."""
        if not self.body:
            return ("", set()), [invalid(["body"], "Field required", "missing")]
        try:
            body = json.loads(self.body)
        except ValueError as exc:
            return ("", set()), [invalid(["body", getattr(exc, "pos", 0)], "JSON decode error", "json_invalid")]
        if not isinstance(body, dict):
            return ("", set()), [
                invalid(
                    ["body"],
                    "Input should be a valid dictionary or object to extract fields from",
                    "model_attributes_type",
                    body,
                )
            ]
        keys = [key for key in SELECTION_KEYS if key in body]
        if len(keys) != 1:
            return ("", set()), [
                invalid(["body"], "Value error, give exactly one of media_ids or cluster_ids", "value_error", body)
            ]
        key, wanted = keys[0], body[keys[0]]
        if not isinstance(wanted, list):
            return ("", set()), [invalid(["body", key], "Input should be a valid list", "list_type", wanted)]
        errors = [
            invalid(["body", key, i], "Input should be a valid string", "string_type", value)
            for i, value in enumerate(wanted)
            if not isinstance(value, str)
        ]
        return (key, set(wanted) if not errors else set()), errors
