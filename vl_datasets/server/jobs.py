"""Export jobs: built in a background thread, reported INIT -> IN_PROGRESS -> COMPLETED."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .archive import build_export_zip
from .datasets import StoredDataset
from .faults import Faults


@dataclass
class ExportJob:
    """One export. ``polls`` counts status answers so progress is deterministic for tests."""

    id: str
    dataset_id: str
    items: list[dict]
    zip_path: Path
    created_at: str = field(default_factory=lambda: datetime.now().isoformat())
    started: float = field(default_factory=time.monotonic)
    status: str = "INIT"
    result_message: str | None = None
    polls: int = 0
    built: threading.Event = field(default_factory=threading.Event)
    build_error: str | None = None


class JobRunner:
    """Creates jobs, builds their ZIPs, and advances their status as they are polled."""

    def __init__(self, work_dir: Path, faults: Faults, *, export_polls: int, image_layout: str,
                 parquet_metadata_items: str) -> None:
        self.work_dir = work_dir
        self.faults = faults
        self.export_polls = export_polls
        self.image_layout = image_layout
        self.parquet_metadata_items = parquet_metadata_items
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    def start(self, dataset: StoredDataset, items: list[dict], *, export_format: str, include_images: bool) -> ExportJob:
        task_id = str(uuid.uuid4())
        job = ExportJob(task_id, dataset.id, items, self.work_dir / f"{task_id}.zip")
        with self._lock:
            self._jobs[task_id] = job
        if not items:
            job.status, job.result_message = "REJECTED", "The selection is empty: no media matched the request."
            return job
        failure = self.faults.take_job_failure()
        if failure is not None:
            job.status, job.result_message = failure
            return job
        thread = threading.Thread(target=self._build, args=(job, dataset, export_format, include_images), daemon=True)
        thread.start()
        return job

    def _build(self, job: ExportJob, dataset: StoredDataset, export_format: str, include_images: bool) -> None:
        try:
            build_export_zip(dataset, job.items, job.zip_path, export_format=export_format,
                             include_images=include_images, image_layout=self.image_layout,
                             parquet_metadata_items=self.parquet_metadata_items)
        except Exception as exc:  # the job reports it, as the platform would
            job.build_error = f"{type(exc).__name__}: {exc}"
        finally:
            job.built.set()

    def get(self, task_id: str) -> ExportJob | None:
        with self._lock:
            return self._jobs.get(task_id)

    def poll(self, job: ExportJob) -> ExportJob:
        """Advance a job by one status poll; return it."""
        with self._lock:
            if job.status in ("COMPLETED", "FAILED", "REJECTED"):
                return job
            job.polls += 1
            held = self.faults.jobs_held(time.monotonic() - job.started)
            if job.polls > self.export_polls and not held and job.built.wait(timeout=30):
                if job.build_error:
                    job.status, job.result_message = "FAILED", job.build_error
                else:
                    job.status = "COMPLETED"
            else:
                job.status = "IN_PROGRESS"
            return job

    def progress(self, job: ExportJob) -> float:
        """Progress as a fraction: 1 when done, rising with polls while running."""
        if job.status == "COMPLETED":
            return 1.0
        if job.status == "IN_PROGRESS":
            return min(job.polls / (self.export_polls + 1), 0.95)
        return 0.0
