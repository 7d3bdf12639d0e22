"""Scratch files in the cache: a dead writer's is removed by the next writer, a live one's never."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.helpers import REPO, child_env
from tests.waits import Child
from vl_datasets.loading.scratch_files import scratch_file, sweep, this_host

# Holds a scratch file, prints its path, then sleeps until killed.
HOLDER = """
import sys, time
from pathlib import Path
from vl_datasets.loading.scratch_files import scratch_file
with scratch_file(Path(sys.argv[1]), ".pixels") as path:
    path.write_bytes(b"pixels")
    print(path, flush=True)
    while True:
        time.sleep(1)
"""


def held_by_a_child(folder):
    """(a child holding a scratch file in ``folder``, its path), once it holds it."""
    child = Child([sys.executable, "-c", HOLDER, str(folder)], env=child_env(), cwd=REPO)
    child.until(lambda: child.text().endswith("\n"), "the child holding a scratch file")
    return child, Path(child.text().strip())


def test_a_live_writers_file_stays_and_a_dead_ones_goes_at_the_next_write(tmp_path):
    folder = tmp_path / "packing"
    child, held = held_by_a_child(folder)
    try:
        with scratch_file(folder, ".pixels") as mine:
            assert held.exists(), "a live writer's scratch file was swept"
            assert mine.exists() and mine != held
    finally:
        child.close()  # killed, as a lost job would be
    assert not mine.exists(), "a finished writer left its scratch file"
    assert held.exists()  # killed: nothing removed it yet
    with scratch_file(folder, ".pixels"):
        assert not held.exists(), "a dead writer's scratch file outlived the next writer"
    assert list(folder.iterdir()) == []


def test_the_sweep_leaves_other_hosts_and_other_kinds_of_file(tmp_path):
    folder = tmp_path / "packing"
    folder.mkdir()
    others = [
        folder / "another-host-123-abcd1234.pixels",
        folder / f"{this_host()}-2-123-abcd1234.pixels",  # host "<this host>-2", whose name begins as ours does
        folder / f"{this_host()}-123-abcd1234.txt",
        folder / "notes.txt",
    ]
    for other in others:
        other.write_bytes(b"x")
    dead = folder / f"{this_host()}-123-abcd1234.pixels"
    dead.write_bytes(b"x")
    assert sweep(folder, ".pixels") == [dead]
    assert all(other.exists() for other in others)
