"""What the API tests share: a clock that never waits, a client on it, and one export downloaded end to end."""

from __future__ import annotations

from vl_datasets import Client
from vl_datasets.records import ExportTask


class FakeTime:
    """Sleep and clocks that advance instantly, so no test waits for real."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.wall = 1_700_000_000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


def make_client(service, fake_time, **kwargs) -> Client:
    return Client(service.url, sleep=fake_time.sleep, clock=fake_time.clock, progress=False, env={}, **kwargs)


def export_and_download(client: Client, tmp_path, dataset_id="ds-ready", **kwargs) -> tuple[ExportTask, bytes]:
    task = client.start_export(dataset_id, **kwargs)
    task = client.wait_for_export(dataset_id, task.id)
    path = client.download_export(task, tmp_path / "export.zip")
    return task, path.read_bytes()
