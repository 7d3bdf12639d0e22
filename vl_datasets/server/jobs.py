"""Export jobs: built in a background thread, reported INIT -> IN_PROGRESS -> COMPLETED.

A start is answered at once: what the export holds is decided in the request only when the
dataset's columnar form is ready within ``START_WAIT_S`` (always, for a small dataset), else in the
job's thread once it is. Progress is driven by status polls, not by the clock, so tests see the
same sequence every run: a job answers COMPLETED only once its ZIP is built AND it has answered
``export_polls`` polls as IN_PROGRESS; while it builds, its progress follows the rows written.
A job that must fail or be rejected follows the same path and ends that way.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .archive import build_export_zip
from .datasets import StoredDataset
from .faults import Faults, JobFailure
from .indexes import IndexBuild
from .selection import Rows, Wanted, select

TERMINAL = ("COMPLETED", "FAILED", "REJECTED")
EMPTY_SELECTION = "The selection is empty: no media item matched the given ids."
# The platform's limits (contract §5): images travel in an export only up to a number, and
# metadata-only exports have a limit of their own. Its REJECTED message says "exceeds threshold",
# the words clients of the real platform look for.
DEFAULT_MAX_IMAGES_PER_EXPORT = 5_000
DEFAULT_MAX_ENTITIES_PER_EXPORT = 10_000_000
# A poll that finds the ZIP not built yet waits this long before answering IN_PROGRESS: long enough
# that small test exports never depend on thread timing, short of any client's request timeout.
BUILD_WAIT_S = 5.0
# How long a start waits for a dataset's columnar form before answering without entities_count.
START_WAIT_S = 2.0


@dataclass(frozen=True)
class TaskState:
    """A consistent view of a job at one instant, for one answer."""

    id: str
    dataset_id: str
    created_at: str
    status: str
    progress: float
    """A fraction, 0 to 1; the service scales it."""
    entities_count: int | None
    result_message: str | None


@dataclass(frozen=True)
class ExportRequest:
    """What was asked: the format, images or not, and the selection (None: the whole dataset)."""

    export_format: str
    include_images: bool
    wanted: Wanted | None = None


@dataclass
class ExportJob:
    """One export task and its ZIP."""

    id: str
    dataset_id: str
    request: ExportRequest
    zip_path: Path
    fault: JobFailure | None = None
    """An injected end, taken when the job started."""
    outcome: JobFailure | None = None
    """How it must end instead of COMPLETED (empty selection, too large, injected failure)."""
    entities_count: int | None = None
    created_at: str = field(default_factory=lambda: datetime.now().isoformat(timespec="microseconds"))
    started: float = field(default_factory=time.monotonic)
    status: str = "INIT"
    result_message: str | None = None
    polls: int = 0
    fraction: float = 0.0
    """Rows of the ZIP written so far, 0 to 1."""
    indexing: IndexBuild | None = None
    """The dataset's index, when the job started before it was built: the first half of its progress."""
    shown: float = 0.0
    built: threading.Event = field(default_factory=threading.Event)
    built_at: float | None = None
    """time.monotonic() when the ZIP was done (or the job knew it had nothing to build)."""
    build_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class JobRunner:
    """Creates jobs, builds their ZIPs, and advances their status as they are polled."""

    def __init__(
        self,
        work_dir: Path,
        faults: Faults,
        *,
        export_polls: int,
        image_layout: str,
        parquet_metadata_items: str,
        max_images_per_export: int = DEFAULT_MAX_IMAGES_PER_EXPORT,
        max_entities_per_export: int = DEFAULT_MAX_ENTITIES_PER_EXPORT,
    ) -> None:
        self.max_images_per_export = max_images_per_export
        self.max_entities_per_export = max_entities_per_export
        self.work_dir = work_dir
        self.faults = faults
        self.export_polls = export_polls
        self.image_layout = image_layout
        self.parquet_metadata_items = parquet_metadata_items
        self._jobs: dict[str, ExportJob] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self, dataset: StoredDataset, request: ExportRequest) -> TaskState:
        """Register a job and start building its ZIP in a thread; return its first state (INIT)."""
        task_id = str(uuid.uuid4())
        job = ExportJob(task_id, dataset.id, request, self.work_dir / f"{task_id}.zip")
        index = dataset.index.wait(START_WAIT_S)  # raises if metadata.json cannot be read: a 500
        rows = None
        if index is not None:
            rows = select(index, request.wanted)
            self._decide(job, rows)
        else:
            job.fault = self.faults.take_job_failure()  # which job a fault hits is decided by start order
            job.indexing = dataset.index
        with self._lock:
            self._jobs[task_id] = job
        if job.outcome is not None:
            self._built(job)  # nothing to build: the job only has to reach its end
            return self._state(job)
        thread = threading.Thread(
            target=self._run, args=(job, dataset, rows), name=f"vl-export-{task_id[:8]}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return self._state(job)

    def _decide(self, job: ExportJob, rows: Rows) -> None:
        job.entities_count = rows.count + self.faults.take_entities_miscount()
        refusal = self._refusal(rows.count, job.request.include_images)
        job.outcome = refusal or job.fault or (self.faults.take_job_failure() if job.fault is None else None)

    def _refusal(self, count: int, include_images: bool) -> JobFailure | None:
        """Why the platform would reject this export outright: nothing selected, or too much."""
        if not count:
            return JobFailure("REJECTED", EMPTY_SELECTION)
        limit, what = (
            (self.max_images_per_export, "images") if include_images else (self.max_entities_per_export, "entities")
        )
        if count > limit and not self.faults.limits_named():
            return JobFailure("REJECTED", "Export rejected: too many entities")
        if count > limit:
            return JobFailure(
                "REJECTED", f"Export rejected: {count:,} {what} exceeds threshold of {limit} {what} per export."
            )
        return None

    def _run(self, job: ExportJob, dataset: StoredDataset, rows: Rows | None) -> None:
        try:
            if rows is None:
                index = dataset.index.wait(None)
                assert index is not None  # a wait without a timeout ends with the index or raises
                rows = select(index, job.request.wanted)
                self._decide(job, rows)
                if job.outcome is not None:
                    return
            build_export_zip(
                dataset,
                rows,
                job.zip_path,
                export_format=job.request.export_format,
                include_images=job.request.include_images,
                image_layout=self.image_layout,
                parquet_metadata_items=self.parquet_metadata_items,
                on_progress=lambda fraction: self._report(job, fraction),
                drop_first_image=job.request.include_images and self.faults.take_dropped_image(),
            )
        except Exception as exc:  # reported as a FAILED task, as the platform would
            job.build_error = f"Export failed: {exc}"
        finally:
            self._built(job)

    def _report(self, job: ExportJob, fraction: float) -> None:
        if self._stopping.is_set():  # its folder is being removed: writing on would be wasted
            raise RuntimeError("the local service stopped")
        job.fraction = fraction

    @staticmethod
    def _built(job: ExportJob) -> None:
        job.built_at = time.monotonic()
        job.fraction = 1.0
        job.built.set()

    def get(self, task_id: str) -> ExportJob | None:
        """The job ``task_id``, or None."""
        with self._lock:
            return self._jobs.get(task_id)

    def poll(self, job: ExportJob) -> TaskState:
        """Advance a job by one status poll and return its state."""
        with job.lock:  # per job: a slow build never blocks polls of other jobs
            if job.status in TERMINAL:
                return self._state(job)
            job.polls += 1
            rejected = job.outcome is not None and job.outcome.status == "REJECTED"
            due = job.polls > self.export_polls and not self.faults.jobs_held(job.started)
            if (rejected or due) and job.built.wait(BUILD_WAIT_S):
                self._finish(job)
            else:
                job.status = "IN_PROGRESS"
            return self._state(job)

    def _finish(self, job: ExportJob) -> None:
        if job.outcome is not None:
            job.status, job.result_message = job.outcome.status, job.outcome.result_message
        elif job.build_error is not None:
            job.status, job.result_message = "FAILED", job.build_error
        else:
            job.status = "COMPLETED"

    def _state(self, job: ExportJob) -> TaskState:
        return TaskState(
            job.id,
            job.dataset_id,
            job.created_at,
            job.status,
            self._progress(job),
            job.entities_count,
            job.result_message,
        )

    def _progress(self, job: ExportJob) -> float:
        # Rising with each poll and with the rows written, never 1 before the end: a client's
        # progress bar sees it move.
        if job.status == "COMPLETED":
            return 1.0
        if job.status == "IN_PROGRESS":
            by_polls = min(job.polls / (self.export_polls + 1), 0.95)
            done = job.fraction if job.indexing is None else (job.indexing.progress + job.fraction) / 2
            job.shown = max(job.shown, by_polls * (0.5 + 0.5 * done))
            return job.shown
        return 0.0

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop builds still running (at their next batch) and wait for them, bounded, so the work
        folder can be removed under no writer."""
        self._stopping.set()
        with self._lock:
            threads, self._threads = self._threads, []
        deadline = time.monotonic() + timeout_s
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0))
