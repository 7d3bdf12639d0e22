"""The API origin: dataset status and snapshots, export start (full and selective), export status, /cdn redirect.

Errors follow FastAPI, which the platform runs on: ``{"detail": "..."}``, and for 422 pydantic's
list of ``{"type", "loc", "msg", "input"[, "ctx"]}`` (``validation``). Checks run in FastAPI's
order: auth, then parameter validation, then what the endpoint itself decides (404 dataset,
409 not READY). Required, as the docs show them: ``file_name`` and ``export_format`` to start a
full export, ``export_format`` to start a selective one, ``export_task_id`` to poll.

Routing is Starlette's: the path is percent-decoded once, before any route is matched, so an
encoded slash (``%2F``) separates segments like ``/`` and a path parameter is never decoded again.
A path that matches no route but would without its trailing slashes is redirected there (307),
as Starlette's ``redirect_slashes`` does, before auth, faults or the method are looked at.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .archive import EXPORT_FORMATS
from .columnar import Summary
from .datasets import StoredDataset
from .handler import Handler
from .jobs import ExportRequest
from .selection import Wanted
from .validation import (
    BodyParseError,
    Errors,
    json_body,
    model_fields,
    query_bool,
    query_enum,
    query_str,
    string_list,
    value_error,
)

_ROUTES = [
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)$"), "dataset"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/snapshot$"), "snapshot"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_context_async$"), "export"),
    ("POST", re.compile(r"^/api/v1/dataset/([^/]+)/export_entities_async$"), "selective_export"),
    ("GET", re.compile(r"^/api/v1/dataset/([^/]+)/export_status$"), "export_status"),
    ("GET", re.compile(r"^/cdn/([^/]+)/images/([^/]+)/([^/]+)\.zip$"), "cdn"),
]
# What a Location's path leaves unquoted: RFC 3986's pchar, less "%", so the path decodes back to itself.
_LOCATION_SAFE = "/:@!$&'()*+,;="
SELECTION_KEYS = ("media_ids", "cluster_ids")
# How long a dataset request waits for the service to index a new metadata.json before answering
# 503 with Retry-After: within any client's request timeout.
DATASET_WAIT_S = 15.0
RETRY_AFTER_S = 10


class ApiHandler(Handler):
    """Answers the contract's endpoints under /api/v1, and /cdn downloads (on-prem style)."""

    origin = "api"

    def refuse(
        self, status: int, message: Any, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        """Errors as FastAPI sends them: ``{"detail": message}``."""
        self.send_json(status, {"detail": message}, headers)

    def parse(self) -> None:
        """The request, with its path decoded as uvicorn hands it to Starlette."""
        super().parse()
        # Matching the raw path and decoding the parameters after it would take ``a%2Fb`` to the
        # dataset route as id "a/b", where FastAPI finds no route; and decoding a parameter a second
        # time would turn ``a%252Fb`` (the id "a%2Fb") into "a/b", a dataset nobody asked for.
        self.route = unquote(self.route)

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
            return getattr(self, f"_{name}")(*match.groups())
        if self.route.endswith("/") and _is_routed(self.route.rstrip("/")):
            return self._redirect(self.route.rstrip("/"))
        self.refuse(404, "Not Found")

    def _redirect(self, path: str) -> None:
        """307 to ``path`` with the same query, as Starlette's RedirectResponse: an absolute URL on
        the Host asked, no body. requests follows it with the method, body and bearer token."""
        host = self.headers.get("Host") or "{}:{}".format(*self.connection.getsockname()[:2])
        query = urlsplit(self.path).query
        # Starlette leaves "%" unquoted, so its Location for ``a%252Fb/`` is ``a%2Fb``, which the next
        # request decodes to "a/b": quoting it keeps the redirect on the id that was asked for.
        location = f"http://{host}{quote(path, safe=_LOCATION_SAFE)}" + (f"?{query}" if query else "")
        self.send(307, b"", None, {"Location": location})

    # -- endpoints -------------------------------------------------------------------------

    def _dataset(self, dataset_id: str) -> None:
        if (found := self._summarized(dataset_id)) is not None:
            self.send_json(200, found[0].as_json(found[1]))

    def _snapshot(self, dataset_id: str) -> None:
        if (found := self._summarized(dataset_id)) is not None:
            self.send_json(200, found[0].snapshots(found[1]))

    def _export(self, dataset_id: str) -> None:
        errors: Errors = []
        # Declared in the order the docs' URL gives them: FastAPI reports errors in declaration order.
        query_str(self.query, "file_name", errors)
        export_format = query_enum(self.query, "export_format", errors, EXPORT_FORMATS)
        include_images = query_bool(self.query, "include_images", errors, default=False)
        # entity_type and vql (an unofficial SDK sends them) pass through: nothing documents their rules.
        if errors or export_format is None:
            return self.refuse(422, errors)
        if (dataset := self._exportable(dataset_id)) is not None:
            self._start(dataset, ExportRequest(export_format, include_images))

    def _selective_export(self, dataset_id: str) -> None:
        try:
            body, errors = json_body(self.headers.get("Content-Type"), self.body)
        except BodyParseError as exc:
            return self.refuse(400, exc.detail)
        if errors:  # FastAPI stops at a body it cannot decode, before it validates any parameter
            return self.refuse(422, errors)
        export_format = query_enum(self.query, "export_format", errors, EXPORT_FORMATS)
        include_images = query_bool(self.query, "include_images", errors, default=False)
        selection = parse_selection(body, errors)  # body errors follow query errors, as in FastAPI
        if errors or export_format is None or selection is None:
            return self.refuse(422, errors)
        if (dataset := self._exportable(dataset_id)) is not None:
            self._start(dataset, ExportRequest(export_format, include_images, selection))

    def _export_status(self, dataset_id: str) -> None:
        errors: Errors = []
        task_id = query_str(self.query, "export_task_id", errors)
        if errors:
            return self.refuse(422, errors)
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

    def _summarized(self, dataset_id: str) -> tuple[StoredDataset, Summary] | None:
        """The dataset and the counts of its metadata, or None once 404 or 503 has been answered."""
        if (dataset := self._dataset_or_404(dataset_id)) is None:
            return None
        index = dataset.index.wait(DATASET_WAIT_S)  # raises if metadata.json cannot be read: a 500
        if index is None:
            self.refuse(
                503,
                f"Dataset {dataset_id} is being indexed by the local service "
                f"({dataset.index.progress:.0%} of its metadata.json read); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
            return None
        return dataset, index.summary

    def _exportable(self, dataset_id: str) -> StoredDataset | None:
        """The dataset, or None once 404 or 409 has been answered."""
        dataset = self._dataset_or_404(dataset_id)
        if dataset is not None and not dataset.ready:
            self.refuse(409, f"Dataset {dataset_id} is not in READY status (status: {dataset.status})")
            return None
        return dataset

    def _start(self, dataset: StoredDataset, request: ExportRequest) -> None:
        state = self.service.jobs.start(dataset, request)
        # The docs show start answers that hold only the id: the option serves that variant.
        self.send_json(200, {"id": state.id} if self.service.minimal_start_response else self.service.task_json(state))


def _is_routed(path: str) -> bool:
    """Whether a route takes ``path``, whatever its method."""
    return any(pattern.match(path) for _, pattern, _ in _ROUTES)


def parse_selection(body: Any, errors: Errors) -> Wanted | None:
    """The ids a selective export's body asks for, as a model ``{media_ids?: list[str], cluster_ids?:
    list[str]}`` with "exactly one" checked after the fields; None once its entries are in ``errors``."""
    fields = model_fields(body, errors)
    if fields is None:
        return None
    before = len(errors)
    given = {}
    for key in SELECTION_KEYS:
        if fields.get(key) is not None:  # null is an unset optional field, as in pydantic
            ids = string_list(fields[key], ["body", key], errors)
            if ids is not None:
                given[key] = ids
    if len(errors) > before:
        return None  # pydantic runs a model's own validator only once its fields are valid
    if len(given) != 1:
        errors.append(value_error(["body"], "give exactly one of media_ids or cluster_ids", body))
        return None
    ((key, ids),) = given.items()
    return Wanted(key, frozenset(ids))
