"""A skipped image is warned about once per epoch at most, and never by the loading that persistent
workers do ahead of time for the next epoch (which may never run)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import child_env
from tests.waits import run_child

JOB = Path(__file__).with_name("skip_warnings_job.py")
BAD = ("m004", "m007")


def test_each_skipped_image_is_warned_once_per_epoch_and_not_by_the_next_epochs_prefetch(folder, tmp_path):
    for media in BAD:
        path = folder / "images" / "folder" / f"img_{int(media[1:])}.jpg"
        path.write_bytes(path.read_bytes()[:100])
    done = run_child(
        [sys.executable, str(JOB), str(folder), str(tmp_path / "cache"), str(tmp_path / "loads")], env=child_env()
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    summaries = [line for line in lines if " skipped 2 unreadable images" in line]
    assert [line.split(" skipped")[0] for line in summaries] == [f"WARNING Epoch {n}" for n in (1, 2, 3)], lines
    last_epoch_end = lines.index("END OF EPOCH 3")
    for media in BAD:
        warned = [n for n, line in enumerate(lines) if f"media_id {media}" in line and "Skipping" in line]
        assert len(warned) <= 3, f"{media} was warned about {len(warned)} times in 3 epochs: {lines}"
        assert all(n < last_epoch_end for n in warned), f"the prefetch of a 4th epoch warned about {media}: {lines}"
