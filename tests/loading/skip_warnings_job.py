"""Three epochs of a persistent two-worker loader over an export with unreadable images, skipped
(``on_error="skip"``), for test_skip_warnings: in a process of its own, so the log lines its workers
write reach its stderr, which the test reads.

When the epochs are done, it waits until the workers have loaded the batches the loader had already
handed them for a fourth epoch, so that whatever loading them logs is in the output every time.

    python skip_warnings_job.py EXPORT CACHE LOADS
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from vl_datasets.loading.dataset import VisualLayerDataset

EPOCHS, BATCH_SIZE, WORKERS = 3, 2, 2
# How long the workers may go without loading one more item before the job gives up waiting.
STALL_S = 60.0


class RecordingDataset(VisualLayerDataset):
    """Appends each index it has loaded (or skipped) to ``loads``, across worker processes."""

    loads: Path

    def load_image(self, index: int):
        image = super().load_image(index)  # logs a skip first, if it skips
        with self.loads.open("a") as record:  # one short append: whole lines, whichever worker writes
            record.write(f"{index}\n")
        return image


def loaded(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_loads(path: Path, expected: int) -> None:
    """Until ``expected`` loads are recorded, or no new one comes for STALL_S."""
    count, last_progress = loaded(path), time.monotonic()
    while count < expected:
        if time.monotonic() - last_progress > STALL_S:
            raise SystemExit(f"the workers stalled after {count} of {expected} loads (3 epochs and the prefetch)")
        time.sleep(0.05)
        now = loaded(path)
        if now > count:
            count, last_progress = now, time.monotonic()


def main(export: str, cache: str, loads: str) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    RecordingDataset.loads = Path(loads)
    dataset = RecordingDataset.from_export(export, cache_dir=cache, task=None, image_size=8, on_error="skip")
    loader = dataset.dataloader(BATCH_SIZE, num_workers=WORKERS, shuffle=False, multiprocessing_context="fork")
    assert loader.persistent_workers
    for epoch in range(1, EPOCHS + 1):
        for _ in loader:
            pass
        print(f"END OF EPOCH {epoch}", file=sys.stderr, flush=True)
    handed_ahead = min(len(dataset), loader.prefetch_factor * WORKERS * BATCH_SIZE)
    wait_for_loads(Path(loads), EPOCHS * len(dataset) + handed_ahead)
    del loader


if __name__ == "__main__":
    main(*sys.argv[1:])
